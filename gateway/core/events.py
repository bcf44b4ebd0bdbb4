"""Events: the vocabulary of a session's log and validation of what workers publish.

The set of types is open: any namespaced lowercase type (``vendor.thing``) passes through;
the known types below have their ``data`` fields checked so viewers can rely on them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.core.errors import GatewayError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")

# The terminal event types and the run status each leaves. The one definition: the publish
# script gets this table from here (``store.base.lua_source``), the browser fold mirrors it and
# tests/test_fold.py checks the two agree.
TERMINAL_STATUS = {
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}
TERMINAL = frozenset(TERMINAL_STATUS)

MAX_EVENT_BYTES = 1_048_576  # default limit on one event's encoded data
MAX_DEPTH = 32  # default limit on the nesting of an event's data

# Required data fields and their JSON types for the known event types.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "run.started": {"input": str},
    "message.delta": {"text": str},
    "reasoning.delta": {"text": str},
    "tool.started": {"tool_call_id": str, "name": str, "args": dict},
    "tool.completed": {
        "tool_call_id": str,
        "output": str,
        "is_error": bool,
        "duration_ms": (int, float),
    },
    "approval.requested": {"approval_id": str, "prompt": str},
    "approval.resolved": {"approval_id": str, "decision": str},
    "session.title": {"title": str},
    "run.completed": {},
    "run.failed": {"error": str},
    "run.cancelled": {},
}

# Events that must belong to a run.
_RUN_SCOPED = frozenset(_REQUIRED) - {"session.title"}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One log entry as stored: its sequence number ``seq``, server time ``ts`` (ms),
    ``type``, ``run_id`` ('' when none) and ``data`` (JSON text, never re-encoded)."""

    seq: int
    ts: int
    type: str
    run_id: str
    data: str


class InvalidEvent(GatewayError, ValueError):
    """An event failed validation; ``code`` is machine readable, ``str()`` explains.

    Status 413 for ``event_too_large``, else 400.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(413 if code == "event_too_large" else 400, code, message)


def valid_id(value: object) -> bool:
    """Whether ``value`` is a usable session/run/connection/approval id."""
    return isinstance(value, str) and ID_RE.match(value) is not None


class _NotPlain(Exception):
    """Raised by :func:`_plain_depth` for data the fast encoder must not see."""


_PLAIN_LEAVES = frozenset({str, int, float, bool, type(None)})


def _plain_depth(value: dict[str, Any] | list[Any], limit: int, level: int = 1) -> int:
    """Nesting depth of plain JSON data (dicts with str keys, lists, str, int, float, bool,
    None, finite floats), stopping early once past ``limit``.

    Raises:
        _NotPlain: anything else (a tuple, a non-str key, NaN, another type): the standard
            library's encoder decides about those, as it always did.
    """
    if level > limit:
        return level
    deepest = level
    if isinstance(value, dict):
        for key in value:
            if type(key) is not str:
                raise _NotPlain
        children: Any = value.values()
    else:
        children = value
    for child in children:
        kind = type(child)
        if kind is dict or kind is list:
            depth = _plain_depth(child, limit, level + 1)
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif kind not in _PLAIN_LEAVES or (kind is float and not math.isfinite(child)):
            raise _NotPlain
    return deepest


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of any JSON-like value, stopping early once past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


# msgspec writes plain data as json.dumps(separators=(",", ":"), ensure_ascii=False) does,
# about 20x faster. Anything else (see _plain_depth) takes the standard library's path, which
# accepts and refuses exactly what it did before (tests/test_properties.py compares the two).
_FAST_JSON = msgspec.json.Encoder()
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(
    type_: str,
    data: dict[str, Any] | None,
    run_id: str | None,
    *,
    max_bytes: int = MAX_EVENT_BYTES,
    max_depth: int = MAX_DEPTH,
) -> tuple[str, ...]:
    """Validate one event and encode it for the publish script.

    Returns ``(type, run_id or "", data JSON, aux1, aux2)``; aux fields carry what the
    script needs without parsing JSON (approval id and decision, session title).

    Raises:
        InvalidEvent: unknown shape, bad type name, bad id, missing/ill-typed data field,
            data nested deeper than ``max_depth`` (``too_deep``) or encoded larger than
            ``max_bytes`` bytes (``event_too_large``).
    """
    if not isinstance(type_, str) or not TYPE_RE.match(type_):
        raise InvalidEvent("invalid_event_type", f"event type {type_!r} is not namespaced")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEvent("invalid_event_data", "event data must be a JSON object")
    try:
        depth, plain = _plain_depth(data, max_depth), True
    except _NotPlain:
        depth, plain = _depth(data, max_depth), False
    if depth > max_depth:
        raise InvalidEvent("too_deep", f"event data is nested deeper than {max_depth} levels")
    if run_id is not None and not valid_id(run_id):
        raise InvalidEvent("invalid_id", f"run_id {run_id!r} is not a valid id")
    if type_ in _RUN_SCOPED and not run_id:
        raise InvalidEvent("missing_run_id", f"{type_} needs a run_id")
    for field, kind in _REQUIRED.get(type_, {}).items():
        value = data.get(field)
        # bool is an int subclass; a duration must not be True.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise InvalidEvent(
                "invalid_event_data", f"{type_} needs data.{field} of type {_name(kind)}"
            )
    aux1 = aux2 = ""
    if type_ in ("approval.requested", "approval.resolved"):
        aux1 = data["approval_id"]
        if not valid_id(aux1):
            raise InvalidEvent("invalid_id", "approval_id is not a valid id")
        if type_ == "approval.resolved":
            aux2 = data["decision"]
            if aux2 not in ("approve", "deny"):
                raise InvalidEvent("invalid_event_data", "decision must be approve or deny")
    elif type_ == "session.title":
        aux1 = data["title"]
    try:
        text = _FAST_JSON.encode(data).decode() if plain else _JSON.encode(data)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent("invalid_event_data", f"data is not JSON-encodable: {exc}") from exc
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidEvent(
            "event_too_large", f"event data is {size} bytes; the limit is {max_bytes}"
        )
    return (type_, run_id or "", text, aux1, aux2)


def _name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return "number"
    return {str: "string", bool: "boolean", dict: "object"}.get(kind, kind.__name__)
