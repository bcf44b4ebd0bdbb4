"""The HTTP side of the Python viewer client: :class:`GatewayClient` (base URLs, tokens,
JSON requests, the run and approval helpers); streams are in :mod:`gateway.client.stream`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from gateway.client.stream import EventStream
from gateway.client.types import GatewayClientError, TokenSource, error_of


class GatewayClient:
    """An HTTP client of one gateway deployment.

    Args:
        base_url: the gateway's URL, or several replicas' URLs (tried in turn on reconnect;
            behind a load balancer give one).
        token: see :data:`TokenSource`; a callable is called once, then again whenever the
            gateway says ``token_expired``.
        http: an ``httpx.AsyncClient`` to use (closed by :meth:`aclose` only if created here).
        idle_timeout: seconds without a byte (heartbeats included) after which a stream is
            taken as dead and reopened; keep it above the gateway's heartbeat interval.
        max_backoff: the longest pause between failed reconnects, in seconds.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: TokenSource = None,
        *,
        http: httpx.AsyncClient | None = None,
        idle_timeout: float = 60.0,
        max_backoff: float = 10.0,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._turn = 0
        self._source = token
        self._token: str | None = token if isinstance(token, str) else None
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=30.0)
        self.idle_timeout = idle_timeout
        self.max_backoff = max_backoff

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (when this object created it)."""
        if self._own_http:
            await self.http.aclose()

    @property
    def url(self) -> str:
        """The base URL in use."""
        return self.urls[self._turn % len(self.urls)]

    def rotate(self) -> None:
        """Use the next base URL (called on every reconnect)."""
        self._turn += 1

    async def headers(self, refresh: bool = False) -> dict[str, str]:
        """The ``Authorization`` header; ``refresh`` asks the token callable for a new token.

        Raises:
            GatewayClientError: ``401 token_expired`` when a refresh is needed but the token
                is a fixed string.
        """
        source = self._source
        if source is None:
            return {}
        if callable(source) and (refresh or self._token is None):
            got = source()
            self._token = await got if inspect.isawaitable(got) else got
        elif refresh:
            raise GatewayClientError(401, "token_expired", "the token expired; pass a callable")
        return {"Authorization": f"Bearer {self._token}"}

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; returns the decoded body (None for 204). A ``token_expired``
        answer refreshes the token once; a transport error tries the next base URL.

        Raises:
            GatewayClientError: any 4xx/5xx answer, with its code.
        """
        refreshed, tried = False, 0
        while True:
            try:
                resp = await self.http.request(
                    method, self.url + path, json=body, headers=await self.headers()
                )
            except httpx.TransportError:
                tried += 1
                if tried >= len(self.urls):
                    raise
                self.rotate()
                continue
            if resp.status_code == 401 and not refreshed and callable(self._source):
                err = error_of(resp)
                if err.code == "token_expired":
                    await self.headers(refresh=True)
                    refreshed = True
                    continue
            if resp.status_code >= 400:
                raise error_of(resp)
            return None if resp.status_code == 204 or not resp.content else resp.json()

    async def create_connection(
        self, session_id: str, from_: str = "live", commit: Literal["auto", "manual"] = "auto"
    ) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/connections``: ``{"connection_id", "offset", "commit"}``."""
        path = f"/v1/sessions/{session_id}/connections"
        out: dict[str, Any] = await self.request("POST", path, {"from": from_, "commit": commit})
        return out

    async def snapshot(self, session_id: str) -> tuple[str, dict[str, Any]]:
        """``GET /v1/sessions/{id}/snapshot``: ``(offset, state)``."""
        body = await self.request("GET", f"/v1/sessions/{session_id}/snapshot")
        return str(body["offset"]), dict(body["state"])

    async def start_run(self, session_id: str, input: str) -> str:
        """``POST /v1/sessions/{id}/runs``: starts a run, returns its id
        (``409 run_active`` while one runs)."""
        body = await self.request("POST", f"/v1/sessions/{session_id}/runs", {"input": input})
        return str(body["run_id"])

    async def cancel(self, session_id: str, run_id: str) -> None:
        """``POST …/runs/{run_id}/cancel`` (``409 run_not_active``)."""
        await self.request("POST", f"/v1/sessions/{session_id}/runs/{run_id}/cancel", {})

    async def approve(
        self,
        session_id: str,
        approval_id: str,
        decision: Literal["approve", "deny"] = "approve",
    ) -> str:
        """``POST …/approvals/{id}``: answers once, returns the ``approval.resolved`` offset."""
        path = f"/v1/sessions/{session_id}/approvals/{approval_id}"
        body = await self.request("POST", path, {"decision": decision})
        return str(body["offset"])

    def events(
        self,
        session_id: str,
        connection_id: str | None = None,
        commit: Literal["auto", "manual"] = "auto",
        from_: str = "start",
    ) -> EventStream:
        """The session's events over a stored connection (a new one from ``from_`` unless
        ``connection_id`` names one). Use as ``async for`` (inside ``async with`` to close
        the stream early)."""
        return EventStream(self, session_id, connection_id, commit, from_)
