"""Python viewer client: read a session over a stored connection, with reconnect.

For bots, server-side consumers and tests. ``GatewayClient.events(session_id)`` creates (or
reuses) a stored connection (``POST /v1/sessions/{id}/connections``) and reads its SSE stream
(``GET …/connections/{cid}/events``, docs/api.md), yielding :class:`Event` and
:class:`Reset` items:

- a dropped stream (a replica killed, a network cut), ``event: close`` ``draining`` (after the
  server's ``retry:`` delay), ``503``/``429``/``5xx`` answers: reconnect with backoff, to the
  next base URL when several are given, resuming with ``Last-Event-ID`` = the last offset
  delivered (``commit="auto"``) or from the acknowledged offset (``commit="manual"``, see
  :meth:`EventStream.ack`), so nothing is lost;
- repeats are dropped by offset: within one epoch an event whose ``seq`` is not newer than
  the last one delivered is skipped;
- ``event: reset`` (another epoch, trimmed, offset ahead) becomes a :class:`Reset`: reload the
  snapshot (:meth:`GatewayClient.snapshot`) and call :meth:`EventStream.skip_through` with
  its offset;
- ``event: close`` ``token_expired`` and ``401 token_expired``: the token callable is called
  again and the stream resumes;
- ``event: close`` ``superseded`` (the connection was attached elsewhere, or the subject's
  stream limit evicted it) raises :class:`Superseded`: reconnecting would fight the newer
  stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import httpx

from gateway.core.frames import SseDecoder

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


def _position(offset: str) -> tuple[str, int]:
    epoch, _, seq = offset.partition("_")
    return epoch, int(seq)


def _error(resp: httpx.Response) -> GatewayClientError:
    try:
        body = resp.json()
        return GatewayClientError(resp.status_code, str(body["code"]), str(body.get("message")))
    except Exception:
        return GatewayClientError(resp.status_code, "http_error", resp.text[:200])


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
                err = _error(resp)
                if err.code == "token_expired":
                    await self.headers(refresh=True)
                    refreshed = True
                    continue
            if resp.status_code >= 400:
                raise _error(resp)
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


@dataclass
class EventStream:
    """Iterates a session's events over a stored connection; see the module docstring.

    ``offset`` is the last offset delivered (or skipped through): the resume point.
    ``reasons`` says why each reconnect happened (``dropped``, ``draining``,
    ``token_expired``, an error code, …).
    """

    client: GatewayClient
    session_id: str
    connection_id: str | None
    commit: Literal["auto", "manual"]
    from_: str
    offset: str | None = None
    reasons: list[str] = field(default_factory=list)
    _gen: AsyncGenerator[Event | Reset, None] | None = field(default=None, repr=False)
    _retry_s: float = field(default=0.25, repr=False)  # the server's latest ``retry:``

    def skip_through(self, offset: str) -> None:
        """Drop events up to ``offset`` (a snapshot's offset, after a :class:`Reset`)."""
        if self.offset is None or self._newer(offset):
            self.offset = offset

    async def ack(self, offset: str | None = None) -> None:
        """Store ``offset`` (default: the last one delivered) as the connection's offset
        (``POST …/ack``; forward only): with ``commit="manual"``, call it once an event is
        processed, so a restarted consumer resumes after it."""
        offset = offset or self.offset
        if offset is None or self.connection_id is None:
            return
        path = f"/v1/sessions/{self.session_id}/connections/{self.connection_id}/ack"
        await self.client.request("POST", path, {"offset": offset})

    def _newer(self, offset: str) -> bool:
        if self.offset is None:
            return True
        epoch, seq = _position(offset)
        last_epoch, last_seq = _position(self.offset)
        # Another epoch without a reset first cannot be ordered: take it as new.
        return epoch != last_epoch or seq > last_seq

    def __aiter__(self) -> AsyncIterator[Event | Reset]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the open stream."""
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.aclose()

    async def _run(self) -> AsyncGenerator[Event | Reset, None]:
        client, failures, refresh = self.client, 0, False
        while True:
            delay: float | None = None
            reason = None
            try:
                if self.connection_id is None:
                    # A connection that expired is re-created where this stream got to.
                    try:
                        conn = await client.create_connection(
                            self.session_id, self.offset or self.from_, self.commit
                        )
                    except GatewayClientError as exc:
                        if exc.code != "offset_ahead":
                            raise
                        yield await self._lost_ahead()
                        continue
                    self.connection_id = conn["connection_id"]
                async for item in self._attach(refresh):
                    if isinstance(item, str):
                        reason = item
                        continue
                    failures = 0
                    yield item
            except _Retry as r:
                delay, reason = r.delay, r.reason
            except httpx.TransportError:
                reason = "dropped"
            except GatewayClientError as exc:
                if exc.status < 500 and exc.status not in (408, 429):
                    raise
                reason = exc.code
            refresh = False
            if reason == "superseded":
                raise Superseded()
            if reason == "token_expired":
                refresh = True
                delay = 0.0
            elif reason == "draining":
                delay = self._retry_s
            if delay is None:
                failures += 1
                delay = min(client.max_backoff, 0.25 * 2 ** min(failures, 8))
                delay *= random.uniform(0.5, 1.0)  # spread a replica's viewers apart
            self.reasons.append(reason or "ended")
            client.rotate()
            await asyncio.sleep(delay)

    async def _attach(self, refresh: bool) -> AsyncIterator[Event | Reset | str]:
        """One attach: yields items, then a close reason (a string) if the server sent one."""
        client = self.client
        headers = await client.headers(refresh)
        if self.offset is not None and self.commit == "auto":
            # An auto-committed offset follows what the gateway wrote, which a dropped
            # stream may not have delivered: resume from what arrived. A manual one stays
            # where the consumer acknowledged (Last-Event-ID would move it): resume there
            # and drop the repeats.
            headers["Last-Event-ID"] = self.offset
        url = f"{client.url}/v1/sessions/{self.session_id}/connections/{self.connection_id}/events"
        timeout = httpx.Timeout(10.0, read=client.idle_timeout)
        async with client.http.stream("GET", url, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                err = _error(resp)
                if err.code == "token_expired" and callable(client._source):
                    raise _Retry(0.0, "token_expired")
                if err.code == "connection_not_found":
                    self.connection_id = None  # expired: a new one resumes from self.offset
                    raise _Retry(0.0, "connection_expired")
                if err.code == "offset_ahead":
                    yield await self._lost_ahead()
                    raise _Retry(0.0, "offset_ahead")
                if resp.status_code in (429, 503):
                    after = resp.headers.get("retry-after", "")
                    raise _Retry(float(after) if after.isdigit() else None, err.code)
                raise err
            decoder = SseDecoder()
            async for line in resp.aiter_lines():
                frame = decoder.line(line)
                if frame is None:
                    continue
                if frame.retry is not None:
                    self._retry_s = frame.retry / 1000
                if frame.event == "close":
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        yield str(json.loads(frame.data)["reason"])
                    return
                if frame.event == "reset":
                    body = json.loads(frame.data)
                    self.offset = str(body["offset"])
                    yield Reset(str(body["reason"]), self.offset, str(body["snapshot"]))
                elif frame.id and frame.data:
                    if not self._newer(frame.id):
                        continue
                    env = json.loads(frame.data)
                    self.offset = frame.id
                    yield Event(
                        frame.id,
                        str(env.get("type", frame.event)),
                        env.get("run_id"),
                        env.get("data") or {},
                        str(env.get("session_id", self.session_id)),
                        int(env.get("ts") or 0),
                    )

    async def _lost_ahead(self) -> Reset:
        """Our offset is beyond the log's end (Redis lost events we saw): a reset to the head."""
        info = await self.client.request("GET", f"/v1/sessions/{self.session_id}")
        self.offset = str(info["last_offset"])
        return Reset("offset_ahead", self.offset, f"/v1/sessions/{self.session_id}/snapshot")


class _Retry(Exception):
    def __init__(self, delay: float | None, reason: str) -> None:
        super().__init__(reason)
        self.delay, self.reason = delay, reason
