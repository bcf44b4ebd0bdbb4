"""Types of the Python viewer client: the items a stream yields, its errors, token sources."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

TokenSource = str | Callable[[], str | Awaitable[str]] | None
"""A bearer token, or a callable (sync or async) returning a fresh one; None: no token."""


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event (the envelope of docs/api.md, "Event envelope")."""

    offset: str
    type: str
    run_id: str | None
    data: dict[str, Any]
    session_id: str = ""
    ts: int = 0


@dataclass(frozen=True, slots=True)
class Reset:
    """The events asked for are gone (``reason``: ``epoch_changed``, ``offset_trimmed``,
    ``offset_ahead``, ``connection_expired``). Reload ``snapshot`` (a path), replace your
    state, then keep iterating; events up to ``offset`` are already in the snapshot."""

    reason: str
    offset: str
    snapshot: str
    type: Literal["reset"] = "reset"


class GatewayClientError(Exception):
    """An error answer of the gateway: ``status`` and its machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Superseded(GatewayClientError):
    """The stream ended with ``event: close`` ``superseded``: the connection was attached
    elsewhere (or the subject's stream limit evicted it)."""

    def __init__(self) -> None:
        super().__init__(409, "superseded", "the connection was attached elsewhere")


def position(offset: str) -> tuple[str, int]:
    """``(epoch, seq)`` of an offset (``<epoch>_<seq>``, docs/api.md "Offsets")."""
    epoch, _, seq = offset.partition("_")
    return epoch, int(seq)


def error_of(resp: httpx.Response) -> GatewayClientError:
    """The :class:`GatewayClientError` of an error answer (its ``{"code", "message"}`` body)."""
    try:
        body = resp.json()
        return GatewayClientError(resp.status_code, str(body["code"]), str(body.get("message")))
    except Exception:
        return GatewayClientError(resp.status_code, "http_error", resp.text[:200])
