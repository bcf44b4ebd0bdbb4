"""SSE responses: the headers every event stream is sent with, and the request's
``Last-Event-ID`` (a header, or ``?last_event_id=`` where a client cannot set headers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.response import Stream

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
    "Connection": "keep-alive",
}


def sse(frames: AsyncIterator[bytes]) -> Stream:
    """A ``text/event-stream`` response of already-encoded frames."""
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def last_event_id(request: Request[Any, Any, Any]) -> str | None:
    """The cursor the client resumes from, if it sent one."""
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return value or None
