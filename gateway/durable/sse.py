"""Durable Streams ``GET live=sse``: Server-Sent Events of one stream.

Owns the SSE rendering (:class:`SseWriter`: ``data`` events as JSON arrays, text or
base64, ``control`` events with the next offset and cursor) and the life of one response
(:class:`SseSession`: catch up page by page through :func:`~gateway.durable.reads.read_page`,
then follow the reader's live frames, falling back to a Redis read on any gap; keep-alives,
TTL renewal, the maximum duration).
"""

from __future__ import annotations

import base64
import contextlib
import time

from gateway.core.errors import GatewayError
from gateway.core.frames import DurableChange
from gateway.durable.exchange import Context, Exchange, Inbox, frame_message, frame_offset
from gateway.durable.protocol import (
    draining_error,
    is_json,
    is_text,
    parse_offset,
    response_cursor,
    sse_data,
)
from gateway.durable.reads import read_page
from gateway.live.hub import wait_event
from gateway.store.durable import DsMessage, DsMeta


class SseWriter:
    """Renders data and control events for one SSE reader of a stream with ``meta``'s
    content type; ``client_cursor`` is the ``cursor`` the client sent (or None)."""

    def __init__(self, meta: DsMeta, client_cursor: str | None) -> None:
        self.json = is_json(meta.normalized_type)
        self.base64 = not is_text(meta.normalized_type)
        self.client_cursor = client_cursor

    def data(self, messages: list[DsMessage]) -> str:
        """One ``data`` event carrying ``messages`` (a JSON array in JSON mode, base64 for
        binary streams, else the text)."""
        raw = b"".join(m.data for m in messages) if not self.json else b""
        if self.base64:
            text = base64.b64encode(raw).decode()
        elif self.json:
            text = "[" + ",".join(m.data.decode("utf-8", "replace") for m in messages) + "]"
        else:
            text = raw.decode("utf-8", "replace")
        return "event: data\n" + sse_data(text)

    def frame_data(self, frame: DurableChange) -> str:
        """The ``data`` event of a live frame (base64 frames are already encoded)."""
        if self.base64 and frame.kind == "b":
            return "event: data\n" + sse_data(frame.payload)
        if self.json and frame.kind == "t":
            return "event: data\n" + sse_data("[" + frame.payload + "]")
        if frame.kind == "t" and not self.base64:
            return "event: data\n" + sse_data(frame.payload)
        return self.data([frame_message(frame)])

    def control(self, offset: str, *, up_to_date: bool, closed: bool) -> str:
        """A ``control`` event: the next offset, and either the cursor (and ``upToDate``)
        or ``streamClosed`` (the final event)."""
        if closed:
            body = f'{{"streamNextOffset":"{offset}","streamClosed":true}}'
        else:
            cursor = response_cursor(self.client_cursor)
            body = f'{{"streamNextOffset":"{offset}","streamCursor":"{cursor}"'
            body += ',"upToDate":true}' if up_to_date else "}"
        return "event: control\n" + sse_data(body)


async def serve_sse(ctx: Context, ex: Exchange, path: str, offset: str) -> None:
    """``GET live=sse`` from ``offset`` (``-1``, ``now`` or ``<n>_<b>``): a
    ``text/event-stream`` response until the stream closes or goes, the client leaves,
    the replica drains or ``sse_max_duration`` seconds pass.

    Raises:
        GatewayError: 404 / 410, or 503 ``draining``, before the response starts.
    """
    page = await read_page(ctx, path, None)  # 404 / 410 before the response starts
    meta = page.meta
    if ctx.rt.draining:
        raise draining_error()
    cur = meta.n if offset == "now" else (0 if offset == "-1" else parse_offset(offset)[0])
    writer = SseWriter(meta, ex.param("cursor"))
    headers = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    if writer.base64:
        headers["stream-sse-data-encoding"] = "base64"
    gauge = ctx.rt.metrics.open_streams.labels(kind="ds_sse")
    gauge.inc()
    try:
        async with Inbox(ctx, path) as inbox:
            ex.watch_disconnect(inbox.sub.wakeup)
            await ex.start(200, headers)
            await SseSession(ctx, ex, path, meta, writer, inbox).run(cur)
    finally:
        gauge.dec()


class SseSession:
    """One SSE response: catch up from Redis, then follow the live frames; falls back to a
    Redis read on any gap, lost frame or frame without payload."""

    def __init__(
        self,
        ctx: Context,
        ex: Exchange,
        path: str,
        meta: DsMeta,
        writer: SseWriter,
        inbox: Inbox,
    ) -> None:
        self.ctx, self.ex, self.path, self.meta = ctx, ex, path, meta
        self.writer, self.inbox = writer, inbox
        self.cur = 0
        self.cur_offset = meta.tail
        self.done = False
        self.touched = time.monotonic()

    async def catch_up(self) -> None:
        """Read pages until the tail; every page is one data event and one control.

        Raises:
            GatewayError: 404 / 410 when the stream went meanwhile.
        """
        while not self.done:
            page = await read_page(self.ctx, self.path, self.cur)
            if page.meta.gen != self.meta.gen:
                self.done = True
                return
            self.meta = page.meta
            self.touched = time.monotonic()
            out = ""
            if page.messages:
                out = self.writer.data(page.messages)
                self.cur = page.messages[-1].n
            elif self.cur > page.meta.n:
                self.cur = page.meta.n
            self.cur_offset = page.next_offset
            closed = page.closed_here
            out += self.writer.control(page.next_offset, up_to_date=page.at_tail, closed=closed)
            await self.ex.write(out.encode())
            if closed:
                self.done = True
            if page.at_tail:
                return

    async def run(self, start: int) -> None:
        """Stream from message number ``start`` until the stream closes or goes, the
        client leaves, the replica drains or the response reaches its maximum duration."""
        cfg = self.ctx.cfg
        inbox, sub = self.inbox, self.inbox.sub
        self.cur = start
        end = time.monotonic() + cfg.sse_max_duration
        try:
            await self.catch_up()
        except GatewayError:
            return
        idle_since = time.monotonic()
        while not self.done:
            sub.wakeup.clear()
            if self.ex.disconnected.is_set() or sub.draining:
                return
            reread = inbox.lost()
            out: list[str] = []
            while inbox.frames and not reread and not self.done:
                frame = inbox.frames.popleft()
                if frame.gen != self.meta.gen or frame.kind == "x":
                    reread = True
                elif frame.n > self.cur:
                    if frame.prev != self.cur or frame.kind not in ("t", "b"):
                        reread = True
                        break
                    self.cur, self.cur_offset = frame.n, frame_offset(frame)
                    out.append(self.writer.frame_data(frame))
                    out.append(
                        self.writer.control(
                            frame_offset(frame), up_to_date=not inbox.frames, closed=frame.closed
                        )
                    )
                    self.done = frame.closed
                elif frame.closed and frame.n == self.cur:
                    out.append(
                        self.writer.control(frame_offset(frame), up_to_date=True, closed=True)
                    )
                    self.done = True
            if out:
                await self.ex.write("".join(out).encode())
                idle_since = time.monotonic()
            if reread and not self.done:
                try:
                    await self.catch_up()
                except GatewayError:
                    return  # deleted or expired meanwhile: end the response
                idle_since = time.monotonic()
            if self.done:
                return
            now = time.monotonic()
            if now >= end:
                return
            await self._renew_ttl(now)
            if now - idle_since >= cfg.sse_keepalive:
                await self.ex.write(
                    self.writer.control(self.cur_offset, up_to_date=True, closed=False).encode()
                )
                idle_since = now
            wait = min(end - now, cfg.sse_keepalive - (now - idle_since))
            await wait_event(sub.wakeup, max(wait, 0.001))

    async def _renew_ttl(self, now: float) -> None:
        """Keep a TTL stream alive while it is being read (a read renews the TTL)."""
        ttl = self.meta.ttl
        if ttl is not None and now - self.touched >= max(ttl / 3, 0.5):
            self.touched = now
            with contextlib.suppress(GatewayError):
                await read_page(self.ctx, self.path, None)
