"""Durable Streams: the Durable Streams HTTP protocol, served under ``/ds`` and stored in Redis.

Durable Streams (ElectricSQL, Apache-2.0; https://github.com/durable-streams/durable-streams,
``PROTOCOL.md``) is an open protocol for append-only, offset-addressed streams read over plain
HTTP: ``PUT`` creates a stream, ``POST`` appends (and closes), ``GET`` reads from an offset
(catch-up, ``live=long-poll`` or ``live=sse``), ``HEAD`` returns metadata, ``DELETE`` removes.
This module follows the behaviour pinned down by the conformance suite
``@durable-streams/server-conformance-tests`` 0.3.6 (``tests/durable/`` runs it against the
gateway) and the reference server ``@durable-streams/server``; docs/durable-streams.md
documents the endpoint. Everything lives in Redis (``streams.DurableStreams``), so any replica
serves any stream, and live readers are woken through the process's one Pub/Sub connection
(``hub``) by the frames the append script publishes.

A stream's URL is ``/ds<path>``; ``<path>`` (for example ``/v1/stream/chat-1``) names it,
also in ``Stream-Forked-From``. Offsets are ``<message number>_<byte position>``, 16 digits
each, so they sort as strings; ``-1`` is the beginning and ``now`` the tail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, cast
from urllib.parse import parse_qs, unquote, urlsplit

from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from gateway.core import frames
from gateway.core.errors import GatewayError
from gateway.live.hub import Subscriber, wait_event
from gateway.store.durable import (
    DS_ZERO_OFFSET,
    DsAppendResult,
    DsMessage,
    DsMeta,
    DurableStore,
    ds_offset,
)

log = logging.getLogger(__name__)

PREFIX = "/ds"
MAX_PATH_BYTES = 1024
MAX_TOKEN_BYTES = 1024  # Producer-Id, Stream-Seq
MAX_TTL_S = 10 * 365 * 86_400
CURSOR_EPOCH_MS = 1_728_432_000_000  # 2024-10-09T00:00:00Z, as the reference server
CURSOR_INTERVAL_S = 20

_OFFSET_RE = re.compile(r"-1|now|[0-9]+_[0-9]+")
_FORK_OFFSET_RE = re.compile(r"[0-9]+_[0-9]+")
_UINT_RE = re.compile(r"0|[1-9][0-9]*")
_DIGITS_RE = re.compile(r"[0-9]+")
_CONTENT_TYPE_RE = re.compile(r"[\w-]+/[\w-]+", re.ASCII)
_LINES_RE = re.compile(r"\r\n|\r|\n")
_MAX_SAFE_INT = 2**53 - 1
_DEFAULT_TYPE = "application/octet-stream"

_CORS = [
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-expose-headers",
        b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, "
        b"Stream-Closed, Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, "
        b"Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, "
        b"Content-Type",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
]
_PREFLIGHT = {
    "access-control-allow-methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "access-control-allow-headers": "Content-Type, Authorization, If-None-Match, Stream-Seq, "
    "Stream-TTL, Stream-Expires-At, Stream-Closed, Stream-Forked-From, Stream-Fork-Offset, "
    "Stream-Fork-Sub-Offset, Producer-Id, Producer-Epoch, Producer-Seq",
    "access-control-max-age": "86400",
}


class DurableSettings(BaseSettings):
    """Tunables of the Durable Streams endpoint (environment: ``GATEWAY_DS_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_DS_", extra="ignore")

    long_poll_timeout: float = Field(
        default=20.0, gt=0, description="Seconds a long-poll at the tail waits (then 204)."
    )
    sse_max_duration: float = Field(
        default=60.0, gt=0, description="Seconds an SSE response stays open (clients resume)."
    )
    sse_keepalive: float = Field(
        default=15.0, gt=0, description="Idle seconds before an SSE keep-alive control event."
    )
    max_append_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond)."
    )
    read_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Bytes per read response (one message more)."
    )
    read_max_messages: int = Field(default=1000, ge=1, description="Messages per read response.")
    live_payload_max: int = Field(
        default=64 * 1024, ge=0, description="Largest message carried in a live frame."
    )
    queue_size: int = Field(default=256, ge=8, description="Live frames queued per reader.")


# --- protocol helpers ---------------------------------------------------------------------------
DsError = GatewayError  # the one error type, under the name this module grew up with


def normalize_type(content_type: str | None) -> str:
    """The media type of a Content-Type, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(normalized: str) -> bool:
    """Whether a stream of this media type is in JSON mode (messages are JSON values)."""
    return normalized == "application/json"


def is_text(normalized: str) -> bool:
    """Whether SSE carries the data as text (else base64, ``Stream-SSE-Data-Encoding``)."""
    return normalized.startswith("text/") or is_json(normalized)


def parse_offset(value: str) -> tuple[int, int]:
    """``<n>_<b>`` as numbers (the format is checked by the caller)."""
    n, _, b = value.partition("_")
    return int(n), int(b)


def response_cursor(client: str | None, now_ms: int | None = None) -> str:
    """The ``Stream-Cursor`` for a live response (CDN request collapsing).

    The current 20 s interval since 2024-10-09, or, when the client already sent that
    interval or a later one, the client's cursor plus a random 1-3600 s jitter: cursors
    only ever move forward, so a cached response cannot be served to the same client again.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    current = (now_ms - CURSOR_EPOCH_MS) // (CURSOR_INTERVAL_S * 1000)
    theirs = int(client) if client and _DIGITS_RE.fullmatch(client) else None
    if theirs is None or theirs < current:
        return str(current)
    jitter_s = random.randint(1, 3600)
    return str(theirs + max(1, math.ceil(jitter_s / CURSOR_INTERVAL_S)))


def sse_data(text: str) -> str:
    """One ``data:`` line per line of ``text`` (CR, LF and CRLF all split: a payload cannot
    end the event or inject another), then the blank line ending the event."""
    if "\n" not in text and "\r" not in text:
        return f"data:{text}\n\n"
    return "".join(f"data:{line}\n" for line in _LINES_RE.split(text)) + "\n"


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def json_messages(body: bytes, *, create: bool) -> bytes | None:
    """A JSON-mode body as the stored message: its values, compact, joined by commas.

    A top-level array contributes its elements (one level is flattened), anything else is
    one value. Returns None for ``[]`` at creation (an empty stream).

    Raises:
        DsError: 400 ``invalid_json`` or ``empty_array`` (an empty array appended).
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DsError(400, "invalid_json", f"body is not JSON: {exc}") from exc
    items = value if isinstance(value, list) else [value]
    if not items:
        if create:
            return None
        raise DsError(400, "empty_array", "an empty JSON array appends nothing")
    try:
        return _json_join(items)
    except RecursionError as exc:
        raise DsError(400, "invalid_json", "body is nested too deeply") from exc


def _json_join(values: list[Any]) -> bytes:
    """Compact JSON of ``values`` joined by commas, always valid UTF-8 (a string holding a
    lone surrogate, from a ``\\ud800``-style escape, is kept escaped)."""
    text = ",".join(json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in values)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return ",".join(json.dumps(v, separators=(",", ":")) for v in values).encode()


def parse_expires_at(value: str) -> int:
    """An RFC 3339 / ISO 8601 timestamp (or an HTTP date) as epoch milliseconds.

    Raises:
        DsError: 400 ``invalid_expires_at``.
    """
    text = value.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError) as exc:
            raise DsError(400, "invalid_expires_at", f"bad Stream-Expires-At {value!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError) as exc:
        raise DsError(400, "invalid_expires_at", f"bad Stream-Expires-At {value!r}") from exc


def _producer_number(value: str, name: str) -> str:
    if not _DIGITS_RE.fullmatch(value) or int(value) > _MAX_SAFE_INT:
        raise DsError(400, "invalid_producer", f"{name} must be a non-negative integer")
    return str(int(value))


# --- live frames ----------------------------------------------------------------------------------
Frame = frames.DurableChange


def _offset(frame: Frame) -> str:
    """The stream's offset after the change a frame announces."""
    return ds_offset(frame.n, frame.b)


class Inbox:
    """A reader's live frames for one stream, fed by the process hub (one Pub/Sub
    connection shared by every reader). Use as ``async with``: entering subscribes (and
    waits for Redis to confirm), so a read done after entering cannot miss a frame."""

    def __init__(self, ctx: Context, path: str) -> None:
        self.ctx = ctx
        self.channel = ctx.ds.channel(path)
        self.frames: deque[Frame] = deque()
        self.sub = Subscriber(ctx.cfg.queue_size, on_frame=self._on_frame)

    def _on_frame(self, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.DurableChange):
            return
        if len(self.frames) >= self.ctx.cfg.queue_size:
            self.frames.clear()
            self.sub.overflowed = True  # too slow: re-read from Redis instead
        else:
            self.frames.append(frame)
        self.sub.wakeup.set()

    def lost(self) -> bool:
        """Whether frames may have been lost (reconnect, overflow): clears the flag."""
        lost = self.sub.overflowed
        self.sub.overflowed = False
        if lost:
            self.frames.clear()
        return lost

    async def __aenter__(self) -> Inbox:
        """Subscribe (returns once Redis confirmed)."""
        await self.ctx.rt.hub.subscribe(self.channel, self.sub)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Unsubscribe."""
        self.ctx.rt.hub.unsubscribe(self.channel, self.sub)


# --- the per-process context and one request ----------------------------------------------------
class Context:
    """What the endpoint shares in a process: the runtime (hub, draining flag, metrics), the
    Redis operations and the settings. Built on the first request."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.ds: DurableStore = rt.store.durable
        self.cfg = DurableSettings()
        self.requests = Counter(
            "gateway_ds_requests",
            "Durable Streams requests served, by method.",
            ["method"],
            registry=rt.metrics.registry,
        )


def _context(scope: Scope) -> Context:
    state = scope["app"].state
    ctx = state.get("durable")
    if ctx is None or ctx.rt is not state.runtime:
        ctx = Context(state.runtime)
        state["durable"] = ctx
    return ctx


class Exchange:
    """One HTTP request/response on the raw ASGI interface (exact headers, HEAD, streaming)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self._send = scope, receive, send
        self.method: str = str(scope.get("method", "GET"))
        raw = scope.get("raw_path") or (scope.get("root_path", "") + scope["path"]).encode()
        self.raw_path = raw.decode("latin-1").split("?", 1)[0]
        self.headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name, value = k.decode("latin-1").lower(), v.decode("latin-1")
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self.query = parse_qs(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        )
        self.started = False
        self.ended = False
        self.body_read = False
        self.disconnected = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    def stream_path(self) -> str:
        """The stream's path (the URL path after the prefix, percent-decoded).

        Raises:
            DsError: 404 for the bare prefix, 400 for a bad or too long path.
        """
        rest = self.raw_path[len(PREFIX) :]
        if not rest.startswith("/") or rest == "/":
            raise DsError(404, "not_found", "a stream URL is /ds/<path>")
        try:
            path = unquote(rest, errors="strict")
        except UnicodeDecodeError as exc:
            raise DsError(400, "invalid_path", "the path is not UTF-8") from exc
        if len(path.encode()) > MAX_PATH_BYTES or "\x00" in path:
            raise DsError(400, "invalid_path", f"paths are at most {MAX_PATH_BYTES} bytes")
        return path

    def location(self) -> str:
        """The absolute URL of this request's stream (``Location`` of a 201)."""
        scheme = self.headers.get("x-forwarded-proto") or self.scope.get("scheme", "http")
        host = self.headers.get("host") or "localhost"
        return f"{scheme}://{host}{self.raw_path}"

    def param(self, name: str) -> str | None:
        """A query parameter (the first, when repeated)."""
        values = self.query.get(name)
        return values[0] if values else None

    async def body(self, limit: int) -> bytes:
        """The whole request body.

        Raises:
            DsError: 413 beyond ``limit`` bytes. The rest of the body (up to 4 times the
                limit) is read and dropped first, so the client sees the 413 rather than a
                connection reset in the middle of its upload.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                break
            chunk = cast(bytes, message.get("body", b""))
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > limit:
                chunks.clear()
                if not more or size > 4 * limit:
                    self.body_read = not more
                    raise DsError(413, "too_large", f"bodies are at most {limit} bytes")
                continue
            chunks.append(chunk)
            if not more:
                break
        self.body_read = True
        return b"".join(chunks)

    def watch_disconnect(self, wake: asyncio.Event | None = None) -> None:
        """Set :attr:`disconnected` (and ``wake``) when the client goes away."""

        async def watch() -> None:
            if not self.body_read:
                with contextlib.suppress(DsError):
                    await self.body(1 << 20)
            while not self.disconnected.is_set():
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.disconnected.set()
            if wake is not None:
                wake.set()

        self._watch = asyncio.create_task(watch())

    def stop_watching(self) -> None:
        """Cancel the disconnect watcher."""
        if self._watch is not None:
            self._watch.cancel()

    async def start(self, status: int, headers: dict[str, str]) -> None:
        """Send the status line and headers (plus CORS and browser-security headers)."""
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await self._send({"type": "http.response.start", "status": status, "headers": raw + _CORS})
        self.started = True

    async def write(self, chunk: bytes, more: bool = True) -> None:
        """Send part of the body (``more=False`` ends it)."""
        self.ended = not more
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def respond(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """A complete response (no body for HEAD, 204 and 304)."""
        if self.method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" not in {k.lower() for k in headers}:
            headers = {**headers, "content-length": str(len(body))}
        await self.start(status, headers)
        await self.write(body, more=False)

    async def error(self, exc: DsError) -> None:
        """An error response: ``{"code", "message"}`` JSON (headers only for HEAD)."""
        body = json.dumps({"code": exc.code, "message": exc.message}).encode()
        await self.respond(exc.status, {"content-type": "application/json", **exc.headers}, body)


# --- the endpoint ---------------------------------------------------------------------------------
@asgi(PREFIX, is_mount=True, copy_scope=False)
async def durable_streams(scope: Scope, receive: Receive, send: Send) -> None:
    """The Durable Streams endpoint: every request under ``/ds``."""
    ex = Exchange(scope, receive, send)
    try:
        ctx = _context(scope)
        ctx.requests.labels(method=ex.method if ex.method in _METHODS else "OTHER").inc()
        await _dispatch(ctx, ex)
    except DsError as exc:
        if not ex.started:
            await ex.error(exc)
    except RedisError as exc:
        log.warning("durable streams: redis error %r", exc)
        with contextlib.suppress(Exception):
            _context(scope).rt.metrics.redis_errors.inc()
        if not ex.started:
            await ex.error(
                DsError(
                    503,
                    "redis_unavailable",
                    "the store is unavailable, retry",
                    {"Retry-After": "1"},
                )
            )
    except Exception:
        log.exception("durable streams: unhandled error")
        if not ex.started:
            await ex.error(DsError(500, "internal_error", "internal error"))
    finally:
        ex.stop_watching()
        if ex.started and not ex.ended:
            with contextlib.suppress(Exception):
                await ex.write(b"", more=False)


ROUTE_HANDLERS: list[Any] = [durable_streams]


async def _dispatch(ctx: Context, ex: Exchange) -> None:
    if ex.method == "OPTIONS":
        await ex.respond(204, _PREFLIGHT)
        return
    handler = _HANDLERS.get(ex.method)
    if handler is None:
        raise DsError(
            405,
            "method_not_allowed",
            f"{ex.method} is not a Durable Streams operation",
            {"Allow": "GET, HEAD, POST, PUT, DELETE, OPTIONS"},
        )
    path = ex.stream_path()
    authorize(ctx, ex, "view" if ex.method in ("GET", "HEAD") else "publish", path)
    await handler(ctx, ex, path)


def authorize(ctx: Context, ex: Exchange, action: str, path: str) -> None:
    """With a token key configured (``gateway.auth``), the bearer token must grant
    ``action`` on ``path``: its ``sessions`` patterns are matched against stream paths
    (``/v1/stream/*``), ``view`` reads, ``publish`` creates, appends, closes and deletes.
    Without a key (``--insecure``) everyone may do everything.

    Raises:
        DsError: 401 without a valid token, 403 when it does not grant ``action``.
    """
    auth = getattr(ctx.rt, "auth", None)
    if auth is None or not auth.configured:
        return
    header = ex.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ex.param("access_token")
    auth.authenticate(token or None).require(action, path)


def _missing(status: str, path: str) -> DsError:
    if status == "gone":
        return DsError(410, "stream_gone", f"stream {path!r} was deleted; forks still read it")
    return DsError(404, "stream_not_found", f"no stream {path!r}")


async def _missing_after_collect(ctx: Context, status: str, path: str) -> DsError:
    """The error for a missing or soft-deleted stream; a soft-deleted one whose forks all
    expired meanwhile is collected (and then reported as not found)."""
    if status == "gone":
        await ctx.ds.collect(path)
        st, _, _ = await ctx.ds.read(path, "head")
        if st == "notfound":
            return _missing("notfound", path)
    return _missing(status, path)


def _etag(meta: DsMeta, start: str, end: str, closed: bool) -> str:
    return f'"{meta.gen}:{start}:{end}{":c" if closed else ""}"'


def _not_modified(ex: Exchange, etag: str) -> bool:
    given = ex.headers.get("if-none-match")
    return bool(given) and etag in [t.strip() for t in (given or "").split(",")]


# --- HEAD -----------------------------------------------------------------------------------------
async def _head(ctx: Context, ex: Exchange, path: str) -> None:
    status, meta, _ = await ctx.ds.read(path, "head")
    if meta is None:
        raise await _missing_after_collect(ctx, status, path)
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


# --- GET: reads -----------------------------------------------------------------------------------
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
    """Messages after message number ``after`` (None: none, the tail), renewing a TTL.

    A fork's inherited messages are read from its ancestors' logs; the numbering is
    continuous along the chain, so the page is stitched by message number.

    Raises:
        DsError: 404 / 410.
    """
    cfg = ctx.cfg
    mode = "tail" if after is None else "read"
    status, meta, own = await ctx.ds.read(
        path, mode, after or 0, cfg.read_max_messages, cfg.read_max_bytes
    )
    if meta is None:
        raise await _missing_after_collect(ctx, status, path)
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


async def _get(ctx: Context, ex: Exchange, path: str) -> None:
    offsets = ex.query.get("offset")
    offset = None
    if offsets is not None:
        if len(offsets) > 1:
            raise DsError(400, "invalid_offset", "give one offset")
        offset = offsets[0]
        if not _OFFSET_RE.fullmatch(offset):
            raise DsError(400, "invalid_offset", f"bad offset {offset!r} (-1, now or <n>_<b>)")
    live = ex.param("live")
    if live in ("long-poll", "sse") and offset is None:
        raise DsError(400, "offset_required", f"live={live} needs an offset")
    if live == "sse":
        await _sse(ctx, ex, path, offset or "-1")
        return
    if offset == "now" and live != "long-poll":
        page = await read_page(ctx, path, None)
        headers = _read_headers(page.meta, page.meta.tail, True, page.meta.closed)
        headers["cache-control"] = "no-store"
        body = b"[]" if is_json(page.meta.normalized_type) else b""
        await ex.respond(200, headers, body)
        return
    after = (
        None if offset == "now" else (parse_offset(offset)[0] if offset not in (None, "-1") else 0)
    )
    page = await read_page(ctx, path, after)
    if live == "long-poll":
        await _long_poll(ctx, ex, path, page, after)
        return
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
async def _long_poll(ctx: Context, ex: Exchange, path: str, page: Page, after: int | None) -> None:
    start = ex.param("offset") or "-1"
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
        raise _draining()
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
                            headers = _read_headers(meta, _offset(frame), True, frame.closed)
                            headers["stream-cursor"] = cursor
                            headers["etag"] = _etag(meta, start, _offset(frame), frame.closed)
                            await ex.respond(200, headers, _body(meta, [_as_message(frame)]))
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


def _as_message(frame: Frame) -> DsMessage:
    return DsMessage(frame.n, frame.b, frame.data())


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


def _draining() -> DsError:
    return DsError(
        503,
        "draining",
        "this replica is shutting down; retry (another replica will answer)",
        {"Retry-After": "1"},
    )


# --- GET live=sse ---------------------------------------------------------------------------------
class SseWriter:
    """Renders data and control events for one SSE reader."""

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

    def frame_data(self, frame: Frame) -> str:
        """The ``data`` event of a live frame (base64 frames are already encoded)."""
        if self.base64 and frame.kind == "b":
            return "event: data\n" + sse_data(frame.payload)
        if self.json and frame.kind == "t":
            return "event: data\n" + sse_data("[" + frame.payload + "]")
        if frame.kind == "t" and not self.base64:
            return "event: data\n" + sse_data(frame.payload)
        return self.data([_as_message(frame)])

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


async def _sse(ctx: Context, ex: Exchange, path: str, offset: str) -> None:
    page = await read_page(ctx, path, None)  # 404 / 410 before the response starts
    meta = page.meta
    if ctx.rt.draining:
        raise _draining()
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
        """Read pages until the tail; every page is one data event and one control."""
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
        """Stream until the stream closes or goes, the client leaves, the replica drains or
        the response reaches its maximum duration."""
        cfg = self.ctx.cfg
        inbox, sub = self.inbox, self.inbox.sub
        self.cur = start
        end = time.monotonic() + cfg.sse_max_duration
        try:
            await self.catch_up()
        except DsError:
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
                    self.cur, self.cur_offset = frame.n, _offset(frame)
                    out.append(self.writer.frame_data(frame))
                    out.append(
                        self.writer.control(
                            _offset(frame), up_to_date=not inbox.frames, closed=frame.closed
                        )
                    )
                    self.done = frame.closed
                elif frame.closed and frame.n == self.cur:
                    out.append(self.writer.control(_offset(frame), up_to_date=True, closed=True))
                    self.done = True
            if out:
                await self.ex.write("".join(out).encode())
                idle_since = time.monotonic()
            if reread and not self.done:
                try:
                    await self.catch_up()
                except DsError:
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
            with contextlib.suppress(DsError):
                await read_page(self.ctx, self.path, None)


# --- PUT: create ----------------------------------------------------------------------------------
@dataclass(slots=True)
class CreateRequest:
    """A validated PUT."""

    content_type: str | None  # as given and valid; None = default (or inherit, for forks)
    ttl: int | None
    expires_at: str | None
    expires_ms: int | None
    closed: bool
    fork_from: str | None
    fork_offset: str | None
    sub_offset: int


def _create_request(ex: Exchange) -> CreateRequest:
    given = ex.headers.get("content-type", "").strip()
    content_type = given if _CONTENT_TYPE_RE.match(given) else None
    ttl_raw = ex.headers.get("stream-ttl")
    expires_raw = ex.headers.get("stream-expires-at")
    if ttl_raw is not None and expires_raw is not None:
        raise DsError(400, "ttl_and_expires", "give Stream-TTL or Stream-Expires-At, not both")
    ttl = None
    if ttl_raw is not None:
        if not _UINT_RE.fullmatch(ttl_raw) or int(ttl_raw) > MAX_TTL_S:
            raise DsError(400, "invalid_ttl", "Stream-TTL must be whole seconds (no sign, no 0x)")
        ttl = int(ttl_raw)
    expires_ms = parse_expires_at(expires_raw) if expires_raw is not None else None
    fork_from = ex.headers.get("stream-forked-from")
    fork_offset = ex.headers.get("stream-fork-offset")
    sub_raw = ex.headers.get("stream-fork-sub-offset")
    sub_offset = 0
    if sub_raw is not None:
        if not fork_from:
            raise DsError(400, "invalid_fork", "Stream-Fork-Sub-Offset needs Stream-Forked-From")
        if not _UINT_RE.fullmatch(sub_raw.strip()):
            raise DsError(400, "invalid_fork", "Stream-Fork-Sub-Offset must be an integer >= 0")
        sub_offset = int(sub_raw.strip())
    if fork_offset is not None and not _FORK_OFFSET_RE.fullmatch(fork_offset):
        raise DsError(400, "invalid_fork", f"bad Stream-Fork-Offset {fork_offset!r}")
    if fork_from is not None:
        fork_from = _source_path(fork_from)
    return CreateRequest(
        content_type=content_type,
        ttl=ttl,
        expires_at=expires_raw,
        expires_ms=expires_ms,
        closed=ex.headers.get("stream-closed", "").strip().lower() == "true",
        fork_from=fork_from,
        fork_offset=fork_offset,
        sub_offset=sub_offset,
    )


def _source_path(value: str) -> str:
    """A ``Stream-Forked-From`` value as a stream path: a path as in the URL after ``/ds``,
    or an absolute URL of this endpoint."""
    value = value.strip()
    with contextlib.suppress(UnicodeError):  # header bytes arrive as latin-1 text
        value = value.encode("latin-1").decode("utf-8")
    if value.startswith(("http://", "https://")):
        value = urlsplit(value).path
        if value.startswith(PREFIX + "/"):
            value = value[len(PREFIX) :]
    path = unquote(value)
    if not path.startswith("/") or len(path.encode()) > MAX_PATH_BYTES:
        raise DsError(400, "invalid_fork", f"bad Stream-Forked-From {value!r}")
    return path


def _create_args(
    req: CreateRequest,
    *,
    mode: str,
    content_type: str,
    compare_type: str,
    ttl: int | None,
    expires_ms: int | None,
    expires_at: str | None,
    base: tuple[int, int] = (0, 0),
    fork_offset: str = DS_ZERO_OFFSET,
    ancestry: str = "",
    prefix: bytes = b"",
    initial: bytes = b"",
) -> list[str | bytes]:
    return [
        mode,
        secrets.token_hex(6),
        content_type,
        compare_type,
        "" if req.ttl is None else str(req.ttl),
        req.expires_at or "",
        "" if ttl is None else str(ttl),
        "" if expires_ms is None else str(expires_ms),
        expires_at or "",
        "1" if req.closed else "0",
        req.fork_from or "",
        req.fork_offset or "",
        str(req.sub_offset),
        str(base[0]),
        str(base[1]),
        fork_offset,
        ancestry,
        prefix,
        initial,
    ]


async def _put(ctx: Context, ex: Exchange, path: str) -> None:
    req = _create_request(ex)
    body = await ex.body(ctx.cfg.max_append_bytes)
    if req.fork_from is not None:
        await _fork(ctx, ex, path, req, body)
        return
    content_type = req.content_type or _DEFAULT_TYPE
    nct = normalize_type(content_type)
    initial = (json_messages(body, create=True) or b"") if is_json(nct) and body else body
    status, n, b, closed, ct = await ctx.ds.create(
        path,
        _create_args(
            req,
            mode="create",
            content_type=content_type,
            compare_type=nct,
            ttl=req.ttl,
            expires_ms=req.expires_ms,
            expires_at=req.expires_at,
            initial=initial,
        ),
    )
    await _created(ex, path, status, n, b, closed, ct)


async def _created(
    ex: Exchange, path: str, status: str, n: int, b: int, closed: bool, content_type: str
) -> None:
    if status == "gone":
        raise DsError(409, "stream_gone", f"{path!r} was deleted but forks still read it")
    if status == "conflict":
        raise DsError(409, "stream_exists", f"{path!r} exists with another configuration")
    headers = {"content-type": content_type, "stream-next-offset": ds_offset(n, b)}
    if closed:
        headers["stream-closed"] = "true"
    if status == "created":
        headers["location"] = ex.location()
    await ex.respond(201 if status == "created" else 200, headers)


async def _fork(ctx: Context, ex: Exchange, path: str, req: CreateRequest, body: bytes) -> None:
    source = req.fork_from
    assert source is not None
    authorize(ctx, ex, "view", source)
    nct = normalize_type(req.content_type) if req.content_type else ""
    probe = _create_args(
        req,
        mode="probe",
        content_type="",
        compare_type=nct,
        ttl=None,
        expires_ms=None,
        expires_at=None,
    )
    status, n, b, closed, ct = await ctx.ds.create(path, probe)
    if status != "absent":
        await _created(ex, path, status, n, b, closed, ct)
        return
    fork_n, fork_b = parse_offset(req.fork_offset) if req.fork_offset else (None, 0)
    if fork_n is not None and fork_n >= 10**18:
        raise DsError(400, "invalid_fork_offset", "Stream-Fork-Offset is beyond the source")
    status, src, n_at, b_at = await ctx.ds.ref(source, path, nct, fork_n, fork_b)
    if src is None:
        if status == "notfound":
            raise DsError(404, "source_not_found", f"no stream {source!r} to fork")
        if status == "gone":
            raise DsError(409, "source_gone", f"{source!r} was deleted (forks still read it)")
        if status == "ct_mismatch":
            raise DsError(409, "content_type_mismatch", f"{source!r} has another content type")
        raise DsError(400, "invalid_fork_offset", "Stream-Fork-Offset is beyond the source")
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await ctx.ds.release(source, path)

    try:
        # The chain of logs the fork reads below its base, then the base offset itself.
        ancestry = [[p, lo, min(hi, n_at)] for p, lo, hi in src.ancestry if lo < n_at]
        if n_at > src.fork_n:
            ancestry.append([source, src.fork_n, n_at])
        if b_at < 0:
            b_at = (await _message_at(ctx, ancestry, n_at)).b
        prefix = b""
        if req.sub_offset:
            prefix = await _sub_offset_prefix(ctx, source, src, n_at, req.sub_offset)
        content_type = req.content_type or src.content_type
        fork_nct = normalize_type(content_type)
        initial = body
        if is_json(fork_nct) and body:
            initial = json_messages(body, create=True) or b""
        ttl, expires_ms, expires_at = req.ttl, req.expires_ms, req.expires_at
        if ttl is None and expires_ms is None:  # inherit the source's expiry
            ttl = src.ttl
            if ttl is None and src.expires_at:
                expires_at, expires_ms = src.expires_at, parse_expires_at(src.expires_at)
        args = _create_args(
            req,
            mode="create",
            content_type=content_type,
            compare_type=fork_nct,
            ttl=ttl,
            expires_ms=expires_ms,
            expires_at=expires_at,
            base=(n_at, b_at),
            fork_offset=ds_offset(n_at, b_at),
            ancestry=json.dumps(ancestry, separators=(",", ":")),
            prefix=prefix,
            initial=initial,
        )
        status, n, b, closed, ct = await ctx.ds.create(path, args)
        if status != "created":
            await release()  # lost a race with another PUT of the same path
        await _created(ex, path, status, n, b, closed, ct)
    except BaseException:
        await release()
        raise


async def _message_at(ctx: Context, ancestry: list[list[Any]], n: int) -> DsMessage:
    for p, lo, hi in ancestry:
        if lo < n <= hi:
            got = await ctx.ds.range(p, n - 1, n, 1, 1)
            if got:
                return got[0]
    raise DsError(400, "invalid_fork_offset", "no message at Stream-Fork-Offset")


async def _sub_offset_prefix(
    ctx: Context, source: str, src: DsMeta, n_at: int, sub_offset: int
) -> bytes:
    """The first ``sub_offset`` bytes (JSON: values) of the source message after the fork
    point, materialized as the fork's first own message."""
    if n_at >= src.n:
        raise DsError(400, "invalid_sub_offset", "no message after the fork point")
    if n_at >= src.fork_n:
        got = await ctx.ds.range(source, n_at, n_at + 1, 1, 1)
        if not got:
            raise DsError(400, "invalid_sub_offset", "no message after the fork point")
        message = got[0]
    else:
        chain = [[p, lo, min(hi, src.fork_n)] for p, lo, hi in src.ancestry]
        message = await _message_at(ctx, chain, n_at + 1)
    if is_json(src.normalized_type):
        values = json.loads(b"[" + message.data + b"]")
        if sub_offset > len(values):
            raise DsError(400, "invalid_sub_offset", "Stream-Fork-Sub-Offset overshoots")
        return _json_join(values[:sub_offset])
    if sub_offset > len(message.data):
        raise DsError(400, "invalid_sub_offset", "Stream-Fork-Sub-Offset overshoots")
    return message.data[:sub_offset]


# --- POST: append and close ---------------------------------------------------------------------
async def _post(ctx: Context, ex: Exchange, path: str) -> None:
    h = ex.headers
    close = h.get("stream-closed", "").strip().lower() == "true"
    pid, epoch, pseq = h.get("producer-id"), h.get("producer-epoch"), h.get("producer-seq")
    producer = (pid, epoch, pseq)
    if any(v is not None for v in producer) and any(v is None for v in producer):
        raise DsError(
            400, "invalid_producer", "Producer-Id, Producer-Epoch and Producer-Seq go together"
        )
    if pid is not None:
        if pid == "":
            raise DsError(400, "invalid_producer", "Producer-Id must not be empty")
        assert epoch is not None and pseq is not None
        epoch = _producer_number(epoch.strip(), "Producer-Epoch")
        pseq = _producer_number(pseq.strip(), "Producer-Seq")
    if len(pid or "") > MAX_TOKEN_BYTES or len(h.get("stream-seq", "")) > MAX_TOKEN_BYTES:
        raise DsError(400, "invalid_header", f"Producer-Id and Stream-Seq: {MAX_TOKEN_BYTES} max")
    body = await ex.body(ctx.cfg.max_append_bytes)
    deferred = ""
    data = body
    request_type = ""
    live_kind, live_b64 = "-", ""
    if not body:
        if not close:
            raise DsError(400, "empty_body", "an append needs a body (or Stream-Closed: true)")
        op = "close"
    else:
        op = "append"
        given = h.get("content-type")
        if not given or not given.strip():
            raise DsError(400, "content_type_required", "an append needs a Content-Type")
        request_type = normalize_type(given)
        if is_json(request_type):
            try:
                data = json_messages(body, create=False) or b""
            except DsError as exc:
                deferred, data = exc.code, b""
        if deferred == "" and len(data) <= ctx.cfg.live_payload_max:
            if is_text(request_type):
                try:
                    data.decode("utf-8")
                    live_kind = "t"
                except UnicodeDecodeError:
                    live_kind, live_b64 = "b", base64.b64encode(data).decode()
            else:
                live_kind, live_b64 = "b", base64.b64encode(data).decode()
    res = await ctx.ds.append(
        path,
        [
            op,
            data,
            request_type,
            "1" if close else "0",
            h.get("stream-seq", ""),
            pid or "",
            epoch or "0",
            pseq or "0",
            deferred,
            live_kind,
            live_b64,
        ],
    )
    await _appended(ctx, ex, path, res, op, pid is not None, epoch, pseq)


async def _appended(
    ctx: Context,
    ex: Exchange,
    path: str,
    res: DsAppendResult,
    op: str,
    producer: bool,
    epoch: str | None,
    pseq: str | None,
) -> None:
    status = res.status
    tail = {"stream-next-offset": res.tail}
    if status in ("notfound", "gone"):
        raise await _missing_after_collect(ctx, status, path)
    if status == "ok":
        headers = dict(tail)
        if res.closed:
            headers["stream-closed"] = "true"
        if producer:
            assert epoch is not None and pseq is not None
            headers["producer-epoch"] = epoch
            headers["producer-seq"] = pseq
        await ex.respond(200 if producer and op == "append" else 204, headers)
        return
    if status in ("dup", "dup_closed"):
        assert epoch is not None
        headers = {**tail, "producer-epoch": epoch, "producer-seq": str(res.y)}
        if res.closed:
            headers["stream-closed"] = "true"
        await ex.respond(204, headers)
        return
    if status == "closed":
        raise DsError(
            409, "stream_closed", "the stream is closed", {**tail, "stream-closed": "true"}
        )
    if status == "ct_mismatch":
        raise DsError(409, "content_type_mismatch", "Content-Type differs from the stream's")
    if status == "stale_epoch":
        raise DsError(
            403, "stale_epoch", "a newer producer epoch took over", {"producer-epoch": str(res.x)}
        )
    if status == "bad_epoch_seq":
        raise DsError(400, "invalid_epoch_seq", "a new producer epoch starts at Producer-Seq 0")
    if status == "seq_gap":
        raise DsError(
            409,
            "sequence_gap",
            f"expected Producer-Seq {res.x}",
            {"producer-expected-seq": str(res.x), "producer-received-seq": str(res.y)},
        )
    if status == "seq_conflict":
        raise DsError(409, "sequence_conflict", "Stream-Seq must grow (byte-wise order)")
    if status == "invalid_json":
        raise DsError(400, "invalid_json", "the body is not JSON")
    if status == "empty_array":
        raise DsError(400, "empty_array", "an empty JSON array appends nothing")
    raise DsError(500, "internal_error", f"unexpected append status {status!r}")


# --- DELETE -------------------------------------------------------------------------------------
async def _delete(ctx: Context, ex: Exchange, path: str) -> None:
    await ctx.ds.collect(path)  # forks that expired no longer hold it
    status = await ctx.ds.delete(path)
    if status in ("notfound", "gone"):
        raise _missing(status, path)
    await ex.respond(204, {})


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"})
_Handler = Callable[[Context, Exchange, str], Awaitable[None]]
_HANDLERS: dict[str, _Handler] = {
    "GET": _get,
    "HEAD": _head,
    "PUT": _put,
    "POST": _post,
    "DELETE": _delete,
}
