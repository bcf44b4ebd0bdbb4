"""A TCP proxy between the gateways/workers and Redis that can drop or stall connections.

Runs its own event loop on a thread, so the harness's traffic never slows the Redis path by
accident. ``drop()`` aborts every open connection (both sides see a reset, as after a
network partition heals or a NAT forgets a flow); ``stall(seconds)`` stops forwarding in
both directions while keeping the sockets open (a frozen link: commands wait, nothing
fails until it resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from concurrent.futures import Future
from typing import Any

CHUNK = 65536


class RedisProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``; ``port`` is picked free."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self.drops = 0
        self.stalls = 0
        self._thread = threading.Thread(target=self._main, name="redis-proxy", daemon=True)
        ready: Future[None] = Future()
        self._ready = ready
        self._thread.start()
        ready.result(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set_result(None)
        self.loop.run_forever()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            down_w.transport.abort()  # Redis is down: refuse as it would
            return
        pair = (down_w, up_w)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(down_r, up_w), self._pump(up_r, down_w))
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        # One side closed: close the other (EOF is how each learns the flow ended).
        writer.transport.abort()

    def _call(self, fn: Any) -> None:
        asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def drop(self) -> None:
        """Abort every open connection (new ones are accepted as usual)."""

        async def go() -> None:
            self.drops += 1
            for pair in list(self._pairs):
                for w in pair:
                    w.transport.abort()

        self._call(go)

    def stall(self) -> None:
        """Stop forwarding (and accepting new flows) until :meth:`resume`."""

        async def go() -> None:
            self.stalls += 1
            self._flowing.clear()

        self._call(go)

    def resume(self) -> None:
        """Forward again after :meth:`stall`."""

        async def go() -> None:
            self._flowing.set()

        self._call(go)

    def close(self) -> None:
        async def go() -> None:
            self._flowing.set()
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                for w in pair:
                    w.transport.abort()

        with contextlib.suppress(Exception):
            self._call(go)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
