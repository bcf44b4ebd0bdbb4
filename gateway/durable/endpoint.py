"""The Durable Streams ASGI endpoint mounted under ``/ds``: dispatch and the error boundary.

Owns the one route (:data:`ROUTE_HANDLERS`, Litestar's raw ``@asgi`` mount, see
``gateway.durable.exchange`` for why raw), dispatch by method (and of a ``GET`` by its
``live`` mode) after the path and the token are checked, the request metric, and the
translation of whatever escapes an operation into an error response: a
:class:`~gateway.core.errors.GatewayError` as itself, a Redis error as 503
``redis_unavailable``, anything else as 500 (only while the response has not started).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from redis.exceptions import RedisError

from gateway.core.errors import GatewayError
from gateway.durable import reads, sse, writes
from gateway.durable.exchange import Context, Exchange, authorize, get_context
from gateway.durable.protocol import PREFIX, PREFLIGHT_HEADERS, read_offset

log = logging.getLogger(__name__)


@asgi(PREFIX, is_mount=True, copy_scope=False)
async def durable_streams(scope: Scope, receive: Receive, send: Send) -> None:
    """The Durable Streams endpoint: every request under ``/ds``."""
    ex = Exchange(scope, receive, send)
    try:
        ctx = get_context(scope)
        ctx.requests.labels(method=ex.method if ex.method in _METHODS else "OTHER").inc()
        await _dispatch(ctx, ex)
    except GatewayError as exc:
        if not ex.started:
            await ex.error(exc)
    except RedisError as exc:
        log.warning("durable streams: redis error %r", exc)
        with contextlib.suppress(Exception):
            get_context(scope).rt.metrics.redis_errors.inc()
        if not ex.started:
            await ex.error(
                GatewayError(
                    503,
                    "redis_unavailable",
                    "the store is unavailable, retry",
                    {"Retry-After": "1"},
                )
            )
    except Exception:
        log.exception("durable streams: unhandled error")
        if not ex.started:
            await ex.error(GatewayError(500, "internal_error", "internal error"))
    finally:
        ex.stop_watching()
        if ex.started and not ex.ended:
            with contextlib.suppress(Exception):
                await ex.write(b"", more=False)


ROUTE_HANDLERS: list[Any] = [durable_streams]


async def _dispatch(ctx: Context, ex: Exchange) -> None:
    if ex.method == "OPTIONS":
        await ex.respond(204, PREFLIGHT_HEADERS)
        return
    handler = _HANDLERS.get(ex.method)
    if handler is None:
        raise GatewayError(
            405,
            "method_not_allowed",
            f"{ex.method} is not a Durable Streams operation",
            {"Allow": "GET, HEAD, POST, PUT, DELETE, OPTIONS"},
        )
    path = ex.stream_path()
    authorize(ctx, ex, "view" if ex.method in ("GET", "HEAD") else "publish", path)
    await handler(ctx, ex, path)


async def _get(ctx: Context, ex: Exchange, path: str) -> None:
    """``GET`` by its ``live`` mode: ``sse``, ``long-poll``, else a catch-up page."""
    offset = read_offset(ex.query)
    live = ex.param("live")
    if live in ("long-poll", "sse") and offset is None:
        raise GatewayError(400, "offset_required", f"live={live} needs an offset")
    if live == "sse":
        await sse.serve_sse(ctx, ex, path, offset or "-1")
    elif live == "long-poll":
        await reads.long_poll(ctx, ex, path, offset or "-1")
    else:
        await reads.catch_up(ctx, ex, path, offset)


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"})
_Handler = Callable[[Context, Exchange, str], Awaitable[None]]
_HANDLERS: dict[str, _Handler] = {
    "GET": _get,
    "HEAD": reads.head_stream,
    "PUT": writes.create_stream,
    "POST": writes.append_stream,
    "DELETE": writes.delete_stream,
}
