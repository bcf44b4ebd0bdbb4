"""Durable Streams reads: ``HEAD``, ``GET`` catch-up pages and ``GET live=long-poll``.

Owns :func:`read_page` (one atomic page from Redis, stitched across a fork's ancestors;
SSE reads through it too), the rendering of a page (body, ``Stream-*`` headers, ``ETag``
and ``If-None-Match``), metadata-only ``HEAD``, and the long-poll wait on a reader's
:class:`~gateway.durable.exchange.Inbox`. ``GET live=sse`` is ``gateway.durable.sse``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.durable.exchange import Context, Exchange, Inbox, frame_message, frame_offset
from gateway.durable.protocol import draining_error, is_json, parse_offset, response_cursor
from gateway.live.hub import wait_event
from gateway.store.durable import DsMessage, DsMeta


@dataclass(slots=True)
class Page:
    """One read: the stream's metadata and the messages after the requested position."""

    meta: DsMeta
    messages: list[DsMessage]

    @property
    def next_offset(self) -> str:
        """Where the next read starts: after the last message, or the tail."""
        return self.messages[-1].offset if self.messages else self.meta.tail

    @property
    def at_tail(self) -> bool:
        """Whether this page reaches the end of the stream."""
        return not self.messages or self.messages[-1].n >= self.meta.n

    @property
    def closed_here(self) -> bool:
        """Whether the reader is at the end of a closed stream (``Stream-Closed``)."""
        return self.meta.closed and self.at_tail


async def read_page(ctx: Context, path: str, after: int | None) -> Page:
    """Messages after message number ``after`` (None: none, the tail), renewing a TTL; at
    most ``read_max_messages`` messages and ``read_max_bytes`` bytes (one message more
    when the first alone is larger).

    A fork's inherited messages are read from its ancestors' logs; the numbering is
    continuous along the chain, so the page is stitched by message number.

    Raises:
        GatewayError: 404 ``stream_not_found`` / 410 ``stream_gone``.
    """
    cfg = ctx.cfg
    mode = "tail" if after is None else "read"
    status, meta, own = await ctx.ds.read(
        path, mode, after or 0, cfg.read_max_messages, cfg.read_max_bytes
    )
    if meta is None:
        raise await ctx.missing(status, path)
    if after is None or after >= meta.fork_n or not meta.ancestry:
        return Page(meta, own)
    messages: list[DsMessage] = []
    count, budget = cfg.read_max_messages, cfg.read_max_bytes
    for source, lo, hi in meta.ancestry:
        if hi <= after or len(messages) >= count or (messages and budget <= 0):
            continue
        got = await ctx.ds.range(source, max(after, lo), hi, count - len(messages), max(budget, 1))
        messages.extend(got)
        budget -= sum(len(m.data) for m in got)
    for m in own:
        if len(messages) >= count or (messages and budget < len(m.data)):
            break
        messages.append(m)
        budget -= len(m.data)
    return Page(meta, messages)


def _etag(meta: DsMeta, start: str, end: str, closed: bool) -> str:
    return f'"{meta.gen}:{start}:{end}{":c" if closed else ""}"'


def _not_modified(ex: Exchange, etag: str) -> bool:
    given = ex.headers.get("if-none-match")
    return bool(given) and etag in [t.strip() for t in (given or "").split(",")]


def _body(meta: DsMeta, messages: list[DsMessage]) -> bytes:
    if is_json(meta.normalized_type):
        return b"[" + b",".join(m.data for m in messages) + b"]"
    return b"".join(m.data for m in messages)


def _read_headers(meta: DsMeta, next_offset: str, up_to_date: bool, closed: bool) -> dict[str, str]:
    headers = {"content-type": meta.content_type, "stream-next-offset": next_offset}
    if up_to_date:
        headers["stream-up-to-date"] = "true"
    if closed:
        headers["stream-closed"] = "true"
    return headers


# --- HEAD -----------------------------------------------------------------------------------------
async def head_stream(ctx: Context, ex: Exchange, path: str) -> None:
    """``HEAD``: the stream's metadata (content type, tail offset, closed, TTL or
    Expires-At, ETag), ``Cache-Control: no-store``; does not renew a TTL.

    Raises:
        GatewayError: 404 / 410 (headers only).
    """
    status, meta, _ = await ctx.ds.read(path, "head")
    if meta is None:
        raise await ctx.missing(status, path)
    headers = {
        "content-type": meta.content_type,
        "stream-next-offset": meta.tail,
        "cache-control": "no-store",
        "etag": _etag(meta, "-1", meta.tail, meta.closed),
    }
    if meta.closed:
        headers["stream-closed"] = "true"
    if meta.ttl is not None:
        headers["stream-ttl"] = str(meta.ttl)
    if meta.expires_at:
        headers["stream-expires-at"] = meta.expires_at
    await ex.respond(200, headers)


# --- GET: catch-up --------------------------------------------------------------------------------
async def catch_up(ctx: Context, ex: Exchange, path: str, offset: str | None) -> None:
    """``GET`` without a live mode: one page after ``offset`` (None or ``-1``: from the
    beginning; ``now``: an empty body at the tail with ``Cache-Control: no-store``), or 304
    when ``If-None-Match`` holds the page's ETag.

    Raises:
        GatewayError: 404 / 410.
    """
    if offset == "now":
        page = await read_page(ctx, path, None)
        headers = _read_headers(page.meta, page.meta.tail, True, page.meta.closed)
        headers["cache-control"] = "no-store"
        body = b"[]" if is_json(page.meta.normalized_type) else b""
        await ex.respond(200, headers, body)
        return
    after = parse_offset(offset)[0] if offset not in (None, "-1") else 0
    page = await read_page(ctx, path, after)
    await _send_page(ex, page, offset or "-1", None)


async def _send_page(ex: Exchange, page: Page, start: str, cursor: str | None) -> None:
    closed = page.closed_here
    headers = _read_headers(page.meta, page.next_offset, page.at_tail, closed)
    if cursor is not None:
        headers["stream-cursor"] = cursor
    etag = _etag(page.meta, start, page.next_offset, closed)
    headers["etag"] = etag
    if _not_modified(ex, etag):
        await ex.respond(304, {"etag": etag})
        return
    await ex.respond(200, headers, _body(page.meta, page.messages))


# --- GET live=long-poll ---------------------------------------------------------------------------
async def long_poll(ctx: Context, ex: Exchange, path: str, offset: str) -> None:
    """``GET live=long-poll``: the page after ``offset`` at once when there is one, else
    wait up to ``long_poll_timeout`` seconds for an append (answered from its live frame,
    or from Redis after a gap or a lost frame) and then ``204`` at the tail; a closed
    stream answers ``204`` with ``Stream-Closed`` without waiting. Every answer carries a
    ``Stream-Cursor``.

    Raises:
        GatewayError: 404 / 410; 503 ``draining`` instead of waiting on a draining replica.
    """
    after = None if offset == "now" else (0 if offset == "-1" else parse_offset(offset)[0])
    page = await read_page(ctx, path, after)
    start = offset
    cursor = response_cursor(ex.param("cursor"))
    if page.messages:
        await _send_page(ex, page, start, cursor)
        return
    meta = page.meta
    cur = meta.n if after is None else after
    if cur != meta.n:  # not at the tail (an offset beyond it): nothing to wait for
        await _send_page(ex, page, start, cursor)
        return
    tail = meta.tail
    if meta.closed:
        await ex.respond(204, _timeout_headers(tail, cursor, True))
        return
    if ctx.rt.draining:
        raise draining_error()
    gauge = ctx.rt.metrics.open_streams.labels(kind="ds_long_poll")
    gauge.inc()
    try:
        async with Inbox(ctx, path) as inbox:
            ex.watch_disconnect(inbox.sub.wakeup)
            page = await read_page(ctx, path, cur)  # what landed before the subscription
            if page.messages or page.meta.closed:
                await _long_poll_answer(ex, page, start, cursor, tail)
                return
            deadline = time.monotonic() + ctx.cfg.long_poll_timeout
            while True:
                inbox.sub.wakeup.clear()
                if ex.disconnected.is_set():
                    return
                if inbox.sub.draining:
                    break
                reread = inbox.lost()
                while inbox.frames and not reread:
                    frame = inbox.frames.popleft()
                    if frame.gen != meta.gen or frame.kind == "x":
                        reread = True
                    elif frame.n > cur:
                        if frame.prev == cur and frame.kind in ("t", "b"):
                            offset_after = frame_offset(frame)
                            headers = _read_headers(meta, offset_after, True, frame.closed)
                            headers["stream-cursor"] = cursor
                            headers["etag"] = _etag(meta, start, offset_after, frame.closed)
                            await ex.respond(200, headers, _body(meta, [frame_message(frame)]))
                            return
                        reread = True
                    elif frame.closed:
                        await ex.respond(204, _timeout_headers(tail, cursor, True))
                        return
                if reread:
                    page = await read_page(ctx, path, cur)
                    if page.messages or page.meta.closed:
                        await _long_poll_answer(ex, page, start, cursor, tail)
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await wait_event(inbox.sub.wakeup, left)
    finally:
        gauge.dec()
    await ex.respond(204, _timeout_headers(tail, cursor, False))


async def _long_poll_answer(ex: Exchange, page: Page, start: str, cursor: str, tail: str) -> None:
    if page.messages:
        await _send_page(ex, page, start, cursor)
    else:
        await ex.respond(204, _timeout_headers(tail, cursor, page.meta.closed))


def _timeout_headers(offset: str, cursor: str, closed: bool) -> dict[str, str]:
    headers = {
        "stream-next-offset": offset,
        "stream-up-to-date": "true",
        "stream-cursor": cursor,
    }
    if closed:
        headers["stream-closed"] = "true"
    return headers
