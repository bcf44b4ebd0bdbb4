"""Baseline: the design most teams write first. One blocking ``XREAD`` per SSE viewer.

Every viewer's response runs its own loop of ``XREAD BLOCK`` on the session's stream, so each
open viewer holds one Redis connection from redis-py's (unbounded) pool while it waits. Resume
is by ``Last-Event-ID`` (the Redis entry ID); without one the stream starts at the current
end (``$`` resolved once to the last entry ID, so nothing published between two reads is
lost). Publishing is a plain ``XADD`` (:func:`publish`), trimmed like the gateway's log.

Idiomatic Litestar: ``ServerSentEvent`` over an async generator, one message per entry,
a heartbeat comment when a read times out. No hub, no per-process sharing, no stored offsets.

    REDIS_URL=redis://127.0.0.1:6379/0 python -m loadtests.baselines.xread_per_viewer --port 8002
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from litestar import Litestar, Request, get
from litestar.response import ServerSentEvent, ServerSentEventMessage
from redis.asyncio import Redis

BLOCK_MS = 15_000  # heartbeat interval, as the gateway's
COUNT = 500  # entries per read, as the gateway's catch-up page
MAXLEN = 20_000  # retention, as the gateway's


def stream_key(session_id: str) -> str:
    return f"xr:{session_id}"


async def publish(redis: Redis, session_id: str, type_: str, data: str) -> str:
    """Append one event (``data`` is JSON text); returns its entry ID."""
    return str(
        await redis.xadd(
            stream_key(session_id), {"type": type_, "data": data}, maxlen=MAXLEN, approximate=True
        )
    )


@get("/sessions/{session_id:str}/events")
async def events(request: Request[Any, Any, Any], session_id: str) -> ServerSentEvent:
    redis: Redis = request.app.state.redis
    key = stream_key(session_id)
    last_id = request.headers.get("last-event-id")

    async def stream() -> AsyncGenerator[ServerSentEventMessage, None]:
        cursor = last_id
        if not cursor:
            newest = await redis.xrevrange(key, count=1)
            cursor = newest[0][0] if newest else "0-0"
        yield ServerSentEventMessage(retry=2000)
        while True:
            reply = await redis.xread({key: cursor}, block=BLOCK_MS, count=COUNT)
            if not reply:
                yield ServerSentEventMessage(comment="hb")
                continue
            for _key, entries in reply:
                for entry_id, fields in entries:
                    cursor = entry_id
                    yield ServerSentEventMessage(
                        id=entry_id, event=fields["type"], data=fields["data"]
                    )

    return ServerSentEvent(stream())


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.redis = Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    try:
        yield
    finally:
        await app.state.redis.aclose()


app = Litestar(route_handlers=[events], lifespan=[lifespan])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
