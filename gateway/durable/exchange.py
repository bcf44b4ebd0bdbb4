"""The plumbing of one Durable Streams request: the raw-ASGI exchange, the per-process
context, the live inbox of a reader, and authorization.

Why raw ASGI: the protocol needs exact control of every response, which the framework's
response classes do not give: headers sent exactly as listed (no added or rewritten
ones), ``HEAD`` answered with the ``GET`` headers and no body, and streaming bodies (SSE,
long-polls) whose client disconnect is noticed while they wait. That is the one reason
:class:`Exchange` exists; its surface is kept to what the operations use: the stream path,
query parameters, headers, the body, a disconnect watch, and ``start`` / ``write`` /
``respond`` / ``error`` for the response. The endpoint is mounted with Litestar's
``@asgi`` handler (``gateway.durable.endpoint``).

:class:`Context` is what a process's requests share (runtime, Redis operations, settings,
a metric); :class:`Inbox` is a reader's subscription to a stream's live frames, received
already parsed as :class:`~gateway.core.frames.DurableChange`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Any, cast
from urllib.parse import parse_qs, unquote

from litestar.types import Receive, Scope, Send
from prometheus_client import Counter

from gateway.core import frames
from gateway.core.errors import GatewayError
from gateway.core.frames import DurableChange
from gateway.durable.protocol import (
    CORS_HEADERS,
    MAX_PATH_BYTES,
    PREFIX,
    DurableSettings,
    missing_error,
)
from gateway.live.hub import Subscriber
from gateway.store.durable import DsMessage, DurableStore, ds_offset


# --- the per-process context ----------------------------------------------------------------------
class Context:
    """What the endpoint shares in a process: the runtime ``rt`` (hub, draining flag,
    metrics, auth; ``gateway.api.runtime.Runtime``), the Redis operations ``ds`` and the
    settings ``cfg``. Built on the first request (:func:`get_context`)."""

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

    async def missing(self, status: str, path: str) -> GatewayError:
        """The error for a stream the store reported ``notfound`` or ``gone`` (404 / 410);
        a soft-deleted one whose forks all expired meanwhile is collected first, and then
        reported as not found."""
        if status == "gone":
            await self.ds.collect(path)
            st, _, _ = await self.ds.read(path, "head")
            if st == "notfound":
                return missing_error("notfound", path)
        return missing_error(status, path)


def get_context(scope: Scope) -> Context:
    """The process's :class:`Context`, kept in the app's state (rebuilt if the runtime
    changed)."""
    state = scope["app"].state
    ctx = state.get("durable")
    if ctx is None or ctx.rt is not state.runtime:
        ctx = Context(state.runtime)
        state["durable"] = ctx
    return cast(Context, ctx)


# --- one request ----------------------------------------------------------------------------------
class Exchange:
    """One HTTP request/response on the raw ASGI interface (exact headers, HEAD, streaming).

    ``method``, ``raw_path`` (without the query), ``headers`` (lower-case names, repeated
    headers joined by ``", "``) and ``query`` (every value of each parameter) describe the
    request. ``started`` / ``ended`` tell whether the response began / finished,
    ``body_read`` whether the request body was consumed, and ``disconnected`` is set when
    the client left (once a watch or a body read saw it).
    """

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
            GatewayError: 404 ``not_found`` for the bare prefix, 400 ``invalid_path`` for a
                path that is not UTF-8, holds a NUL or is over 1,024 bytes.
        """
        rest = self.raw_path[len(PREFIX) :]
        if not rest.startswith("/") or rest == "/":
            raise GatewayError(404, "not_found", "a stream URL is /ds/<path>")
        try:
            path = unquote(rest, errors="strict")
        except UnicodeDecodeError as exc:
            raise GatewayError(400, "invalid_path", "the path is not UTF-8") from exc
        if len(path.encode()) > MAX_PATH_BYTES or "\x00" in path:
            raise GatewayError(400, "invalid_path", f"paths are at most {MAX_PATH_BYTES} bytes")
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
        """The whole request body (at most ``limit`` bytes).

        Raises:
            GatewayError: 413 ``too_large`` beyond ``limit`` bytes. The rest of the body (up
                to 4 times the limit) is read and dropped first, so the client sees the 413
                rather than a connection reset in the middle of its upload.
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
                    raise GatewayError(413, "too_large", f"bodies are at most {limit} bytes")
                continue
            chunks.append(chunk)
            if not more:
                break
        self.body_read = True
        return b"".join(chunks)

    def watch_disconnect(self, wake: asyncio.Event | None = None) -> None:
        """Set :attr:`disconnected` (and ``wake``) when the client goes away, from a task
        that drains any unread body first; :meth:`stop_watching` cancels it."""

        async def watch() -> None:
            if not self.body_read:
                with contextlib.suppress(GatewayError):
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
        """Send the status line and ``headers`` exactly as given (names lower-cased, values
        latin-1), plus the CORS and browser-security headers."""
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await self._send(
            {"type": "http.response.start", "status": status, "headers": raw + CORS_HEADERS}
        )
        self.started = True

    async def write(self, chunk: bytes, more: bool = True) -> None:
        """Send part of the body (``more=False`` ends it)."""
        self.ended = not more
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def respond(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """A complete response with ``Content-Length`` (no body for HEAD, 204 and 304)."""
        if self.method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" not in {k.lower() for k in headers}:
            headers = {**headers, "content-length": str(len(body))}
        await self.start(status, headers)
        await self.write(body, more=False)

    async def error(self, exc: GatewayError) -> None:
        """An error response: ``{"code", "message"}`` JSON with the error's status and
        headers (headers only for HEAD)."""
        body = json.dumps({"code": exc.code, "message": exc.message}).encode()
        await self.respond(exc.status, {"content-type": "application/json", **exc.headers}, body)


def authorize(ctx: Context, ex: Exchange, action: str, path: str) -> None:
    """With a token key configured (``gateway.api.auth``), the bearer token (the
    ``Authorization`` header, else ``?access_token=``) must grant ``action`` on ``path``:
    its ``sessions`` patterns are matched against stream paths (``/v1/stream/*``), ``view``
    reads, ``publish`` creates, appends, closes and deletes. Without a key (``--insecure``)
    everyone may do everything.

    Raises:
        GatewayError: 401 without a valid token, 403 when it does not grant ``action``.
    """
    auth = getattr(ctx.rt, "auth", None)
    if auth is None or not auth.configured:
        return
    header = ex.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ex.param("access_token")
    auth.authenticate(token or None).require(action, path)


# --- live frames ----------------------------------------------------------------------------------
def frame_offset(frame: DurableChange) -> str:
    """The stream's offset after the change a frame announces."""
    return ds_offset(frame.n, frame.b)


def frame_message(frame: DurableChange) -> DsMessage:
    """The message a ``t`` or ``b`` frame carries."""
    return DsMessage(frame.n, frame.b, frame.data())


class Inbox:
    """A reader's live frames for one stream, fed by the process hub (one Pub/Sub
    connection shared by every reader). Use as ``async with``: entering subscribes (and
    waits for Redis to confirm), so a read done after entering cannot miss a frame.

    ``frames`` holds at most ``cfg.queue_size`` frames; ``sub.wakeup`` is set on every
    frame, and ``sub.draining`` when the process drains.
    """

    def __init__(self, ctx: Context, path: str) -> None:
        self.ctx = ctx
        self.channel = ctx.ds.channel(path)
        self.frames: deque[DurableChange] = deque()
        self.sub = Subscriber(ctx.cfg.queue_size, on_frame=self._on_frame)

    def _on_frame(self, frame: frames.Frame) -> None:
        if not isinstance(frame, DurableChange):
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
