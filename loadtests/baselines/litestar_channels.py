"""Baseline: Litestar's own channels plugin with its Redis stream backend.

``ChannelsPlugin`` with ``RedisChannelsStreamBackend`` as Litestar's docs set it up: one
channel per session (``arbitrary_channels_allowed``), the backend's history (a capped Redis
Stream per channel) for resume. The SSE route subscribes to the session's channel and streams
what the subscriber receives; with ``Last-Event-ID`` it first replays the channel's history
and skips what the client already has. Channels carry opaque payloads without IDs, so each
message is JSON with a per-session ``seq`` the publisher assigns (an agent worker owns its
session), which is the SSE ``id``.

The backend reads every subscribed channel's stream with one ``XREAD`` loop per process
(``BLOCK`` = ``stream_sleep_no_subscriptions``, default 1 ms) and fans out in process, so it
holds few Redis connections. Publishing (:func:`publish`) is the backend's own script (XADD
capped to ``history`` + PEXPIRE of the stream).

    REDIS_URL=redis://127.0.0.1:6379/0 python -m loadtests.baselines.litestar_channels --port 8003
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import uvicorn
from litestar import Litestar, Request, get
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsStreamBackend
from litestar.response import ServerSentEvent, ServerSentEventMessage
from redis.asyncio import Redis

HISTORY = 20_000  # messages kept per channel, as the gateway's retention
STREAM_TTL = timedelta(days=1)  # the backend's default is 60 s after the last publish


def make_backend(redis: Redis) -> RedisChannelsStreamBackend:
    return RedisChannelsStreamBackend(history=HISTORY, redis=redis, stream_ttl=STREAM_TTL)


async def publish(backend: RedisChannelsStreamBackend, session_id: str, message: bytes) -> None:
    """Publish one message (JSON with ``seq``, ``type``, ``data``) to the session's channel.

    A worker outside the web process publishes through the backend directly (the plugin's
    ``publish`` queues into the web process's own publishing task)."""
    await backend.publish(message, [session_id])


@get("/sessions/{session_id:str}/events")
async def events(
    request: Request[Any, Any, Any], session_id: str, channels: ChannelsPlugin
) -> ServerSentEvent:
    raw_last = request.headers.get("last-event-id")
    last = int(raw_last) if raw_last and raw_last.isdigit() else None

    async def stream() -> AsyncGenerator[ServerSentEventMessage, None]:
        sent = last
        history = HISTORY if last is not None else None
        async with channels.start_subscription([session_id], history=history) as subscriber:
            yield ServerSentEventMessage(retry=2000)
            async for raw in subscriber.iter_events():
                message = json.loads(raw)
                seq = message["seq"]
                if sent is not None and seq <= sent:
                    continue  # already sent (history and live overlap)
                sent = seq
                yield ServerSentEventMessage(id=seq, event=message["type"], data=raw)

    return ServerSentEvent(stream())


def create_app() -> Litestar:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    plugin = ChannelsPlugin(backend=make_backend(redis), arbitrary_channels_allowed=True)
    return Litestar(route_handlers=[events], plugins=[plugin], on_shutdown=[redis.aclose])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
