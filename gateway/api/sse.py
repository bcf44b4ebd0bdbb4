"""SSE responses: the lean ASGI response every event stream is sent with (its headers, its
body loop, its disconnect watch), and the request's ``Last-Event-ID`` (a header, or
``?last_event_id=`` where a client cannot set headers).

Litestar's :class:`~litestar.response.Stream` runs the body in an anyio task group beside a
task listening for the disconnect, and keeps its own header list per response: for an
idle viewer, held for hours, that is memory per viewer. :class:`EventStreamResponse` is
still a ``Stream`` (the OpenAPI schema and the handlers' annotations are unchanged) but
sends a shared, pre-encoded header list and iterates the frames in the request's own task;
one ``receive()`` future notices the disconnect and cancels the loop (an anyio cancel
scope, so the frames' shielded cleanup still completes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Request
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from gateway.api.deps import header

if TYPE_CHECKING:
    from litestar.app import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures.cookie import Cookie
    from litestar.enums import MediaType
    from litestar.types import Message, Receive, Scope, Send, TypeEncodersMap

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
    "Connection": "keep-alive",
}

RawHeaders = tuple[tuple[bytes, bytes], ...]


def sse_headers(extra: Mapping[str, str] | None = None) -> RawHeaders:
    """The encoded header list of an event stream: :data:`SSE_HEADERS`, then ``extra``,
    then the content type (as Litestar's ``Stream`` sends them). Build it once, at import."""
    names = {**SSE_HEADERS, **(extra or {})}
    pairs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in names.items()]
    pairs.append((b"content-type", b"text/event-stream; charset=utf-8"))
    return tuple(pairs)


RAW_SSE_HEADERS = sse_headers()


class EventStreamResponse(Stream):
    """A ``text/event-stream`` response of already-encoded frames with the headers ``raw``
    (from :func:`sse_headers`). A route adding headers, cookies, a background task or
    another status, or a ``HEAD`` request, gets Litestar's own streaming response."""

    __slots__ = ("raw",)

    def __init__(self, frames: AsyncIterator[bytes], raw: RawHeaders = RAW_SSE_HEADERS) -> None:
        super().__init__(frames, media_type="text/event-stream")
        self.raw = raw

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        cookies = [c for c in cookies or () if not c.documentation_only]
        if (
            headers
            or cookies
            or encoded_headers
            or background
            or self.background
            or is_head_response
            or status_code not in (None, 200)
        ):
            self.headers.update({k.decode("latin-1"): v.decode("latin-1") for k, v in self.raw})
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        frames = self.iterator
        assert isinstance(frames, AsyncIterator)
        return _SSEBody(frames, self.raw)


class _SSEBody(ASGIResponse):
    """The ASGI app of one event stream: start, a body event per frame, the end. Only its
    own two slots are set (``ASGIResponse``'s stay empty): nothing else reads them."""

    __slots__ = ("frames", "raw")

    def __init__(self, frames: AsyncIterator[bytes | str], raw: RawHeaders) -> None:
        self.frames = frames
        self.raw = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = self.frames
        try:
            # A copy: middleware (CORS) appends to the list it is sent.
            start: Message = {"type": "http.response.start", "status": 200, "headers": [*self.raw]}
            await send(start)
            # An anyio scope, not a bare task.cancel(): the frames' cleanup shields itself
            # with anyio.CancelScope(shield=True), which a native cancel would go through.
            with anyio.CancelScope() as cancel:
                watch = _DisconnectWatch(receive, cancel)
                try:
                    async for frame in frames:
                        body = frame if isinstance(frame, bytes) else frame.encode()
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    watch.stop()
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    watch.stop()
        finally:
            # The iterator's own cleanup (unsubscribe, final commit, slot release) runs
            # here if the loop did not finish it: a cancel inside send(), an error.
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()


class _DisconnectWatch:
    """Waits for ``http.disconnect`` on a ``receive()`` future (no coroutine of its own
    around it) and then cancels ``scope``, if :meth:`stop` was not called first. A
    leftover ``http.request`` (an unread body) re-arms the wait."""

    __slots__ = ("live", "receive", "scope", "waiter")

    def __init__(self, receive: Receive, scope: anyio.CancelScope) -> None:
        self.receive = receive
        self.scope = scope
        self.live = True
        self.waiter: asyncio.Future[Any] | None = None
        self._arm()

    def _arm(self) -> None:
        waiter = asyncio.ensure_future(self.receive())
        waiter.add_done_callback(self._received)
        self.waiter = waiter

    def _received(self, waiter: asyncio.Future[Any]) -> None:
        if not self.live or waiter.cancelled():
            return
        if waiter.exception() is None and waiter.result().get("type") == "http.request":
            self._arm()
            return
        # A disconnect, or a receive that failed: either way the client is gone.
        self.live = False
        self.scope.cancel()

    def stop(self) -> None:
        """No cancel from now on; drop the pending ``receive()``."""
        self.live = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()
        self.waiter = None


def sse(frames: AsyncIterator[bytes], raw: RawHeaders = RAW_SSE_HEADERS) -> Stream:
    """A ``text/event-stream`` response of already-encoded frames."""
    return EventStreamResponse(frames, raw)


def last_event_id(request: Request[Any, Any, Any]) -> str | None:
    """The cursor the client resumes from, if it sent one."""
    value = header(request, b"last-event-id") or request.query_params.get("last_event_id")
    return value or None
