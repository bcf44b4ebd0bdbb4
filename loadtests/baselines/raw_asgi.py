"""The server's own limit: a minimal ASGI app under uvicorn writing pre-built SSE frames.

- ``GET /flood``: one pre-built event frame (the size of a gateway ``message.delta`` frame)
  per ``send``, as fast as the connection takes them, yielding to the event loop between
  frames so that every viewer gets its turn (without it one viewer would hog the loop).
- ``GET /idle``: response headers and one ``retry`` frame, then nothing until the client goes
  away: uvicorn's own memory per open idle response.

    python -m loadtests.baselines.raw_asgi --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

FRAME = (
    b"id: 5f2a9c01_000000001234\nevent: message.delta\n"
    b'data: {"offset":"5f2a9c01_000000001234","session_id":"fan-0","run_id":"r1",'
    b'"type":"message.delta","data":{"text":"token ","t_ns":1763731200123456789,"i":1234},'
    b'"ts":1763731200123}\n\n'
)
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] not in ("/flood", "/idle"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        if scope["path"] == "/idle":
            await gone.wait()
            return
        body = {"type": "http.response.body", "body": FRAME, "more_body": True}
        while not gone.is_set():
            await send(body)
            await asyncio.sleep(0)
    finally:
        watcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
