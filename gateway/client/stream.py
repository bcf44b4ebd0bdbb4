"""The stream side of the Python viewer client: :class:`EventStream` reads a session over a
stored connection and reconnects (see the package docstring for what it does on each answer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import httpx

from gateway.client.types import (
    Event,
    GatewayClientError,
    Reset,
    Superseded,
    error_of,
    position,
)
from gateway.core.frames import SseDecoder

if TYPE_CHECKING:
    from gateway.client.api import GatewayClient


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
        try:
            epoch, seq = position(offset)
            last_epoch, last_seq = position(self.offset)
        except ValueError:
            return True  # not an offset of ours: nothing to compare it with
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
                err = error_of(resp)
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
