"""The nemesis: a seeded schedule of faults, each started every 1.5-4 s and undone after
its own duration, so faults overlap (a frozen worker while Redis restarts, say).

Fault kinds: SIGKILL and restart (gateway, worker, redis-server), SIGSTOP then SIGCONT
(gateway, worker: a GC pause or a stalled VM), SIGTERM and restart (a worker's planned
restart: drain and hand back), and on the proxy between the processes and Redis: every
connection dropped, or every connection stalled. On a cluster: a lossless manual
failover, and a replica killed and restarted (no proxy: cluster clients connect to the
addresses the nodes announce).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable

from loadtests.chaos.topology import Node, Topology

log = logging.getLogger("chaos")


class Nemesis:
    """Injects faults into ``top`` from ``rng`` until :meth:`stop`; ``counts`` by kind."""

    def __init__(self, top: Topology, rng: random.Random, say: Callable[[str], None]) -> None:
        self.top, self.rng, self.say = top, rng, say
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # what a fault holds now: node names, "redis", "proxy"
        self._stop = asyncio.Event()

    def kinds(self) -> list[tuple[str, float]]:
        """(fault kind, weight)."""
        if self.top.cluster:
            return [
                ("kill_gateway", 2),
                ("freeze_gateway", 1),
                ("kill_worker", 2),
                ("freeze_worker", 2),
                ("term_worker", 1),
                ("failover", 1),
                ("kill_replica", 1),
            ]
        return [
            ("kill_gateway", 2),
            ("freeze_gateway", 1),
            ("kill_worker", 2),
            ("freeze_worker", 2),
            ("term_worker", 1),
            ("kill_redis", 1.5),
            ("drop_connections", 1.5),
            ("stall_connections", 1.5),
        ]

    async def run(self, duration: float) -> None:
        """Start a fault every 1.5-4 s for ``duration`` seconds, then undo every fault."""
        end = time.monotonic() + duration
        kinds, weights = zip(*self.kinds(), strict=True)
        while time.monotonic() < end and not self._stop.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            task = asyncio.create_task(self._fault(kind))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(1.5, 4.0)):
                    await self._stop.wait()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.heal)

    def heal(self) -> None:
        """Every process up and unfrozen, the proxy forwarding."""
        for node in [*self.top.gateways, *self.top.workers]:
            if node.state == "frozen":
                node.thaw()
            elif node.state == "down" or node.proc.proc.poll() is not None:
                node.start()
        if self.top.proxy is not None:
            self.top.proxy.resume()
        if self.top.redis is not None and self.top.redis.proc.poll() is not None:
            self.top.redis.start_again()

    def _pick(self, nodes: list[Node]) -> Node | None:
        free = [n for n in nodes if n.name not in self._busy and n.state == "up"]
        return self.rng.choice(free) if free else None

    async def _hold(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _fault(self, kind: str) -> None:
        try:
            await self._apply(kind)
        except Exception as exc:  # a fault that could not be applied is reported, not fatal
            self.say(f"  nemesis: {kind} failed: {exc!r}")

    async def _apply(self, kind: str) -> None:
        rng, top = self.rng, self.top
        if kind.endswith(("_gateway", "_worker")):
            node = self._pick(top.gateways if kind.endswith("gateway") else top.workers)
            if node is None:
                return
            self._busy.add(node.name)
            try:
                self.counts[kind] += 1
                if kind.startswith("kill"):
                    await asyncio.to_thread(node.kill)
                    await self._hold(rng.uniform(0.3, 2.0))
                    node.start()
                elif kind.startswith("freeze"):
                    node.freeze()
                    # Longer than the 2 s lease at times: the run is reaped under the worker.
                    await self._hold(rng.uniform(0.5, 4.0))
                    node.thaw()
                else:
                    await asyncio.to_thread(node.terminate)
                    node.start()
            finally:
                self._busy.discard(node.name)
            return
        resource = "cluster" if kind in ("failover", "kill_replica") else kind
        if resource in self._busy:
            return
        self._busy.add(resource)
        try:
            self.counts[kind] += 1
            if kind == "kill_redis":
                assert top.redis is not None
                await asyncio.to_thread(top.redis.kill)
                await self._hold(rng.uniform(0.3, 1.5))
                await asyncio.to_thread(top.redis.start_again)
            elif kind == "drop_connections":
                assert top.proxy is not None
                await asyncio.to_thread(top.proxy.drop)
            elif kind == "stall_connections":
                assert top.proxy is not None
                await asyncio.to_thread(top.proxy.stall)
                await self._hold(rng.uniform(0.5, 4.0))
                await asyncio.to_thread(top.proxy.resume)
            elif kind == "failover":
                c = top.redis_cluster
                assert c is not None
                master = rng.choice(await asyncio.to_thread(c.masters))
                replica = await asyncio.to_thread(c.replica_of, master)
                await asyncio.to_thread(c.failover, replica)
            elif kind == "kill_replica":
                c = top.redis_cluster
                assert c is not None
                masters = await asyncio.to_thread(c.masters)
                replica = await asyncio.to_thread(c.replica_of, rng.choice(masters))
                await asyncio.to_thread(c.kill, replica)
                await self._hold(rng.uniform(0.5, 2.0))
                c.start_node(replica)
                await asyncio.to_thread(c.wait_healthy)
        finally:
            self._busy.discard(resource)

    def stop(self) -> None:
        """End the schedule early (the faults in progress are undone)."""
        self._stop.set()
