"""Keeping the asyncio RedisCluster connection count small in redis-py 6.4.

Facts (see q2_q5 / q4 output):
  * RedisCluster(max_connections=N) is PER NODE (ClusterNode pool), not total.
  * When a node's pool is exhausted the call fails immediately with
    redis.exceptions.MaxConnectionsError (str() == ''), it does NOT wait, and the
    cluster client re-raises it without retry.
  * Each ClusterNode pool only grows (connections are reused, not closed) until the
    client is re-initialised (which disconnects every node).

Two ways to make callers wait instead of erroring:

 A) GateCluster: a single asyncio.Semaphore(N) in front of the client. In-flight
    operations <= N  =>  connections per node <= N. No monkeypatching; serialises
    across shards when N is 1.
 B) BoundedClusterNode: subclass of ClusterNode whose execute_command /
    execute_pipeline wait on a per-node asyncio.Semaphore(max_connections).
    Installed by replacing the module global `redis.asyncio.cluster.ClusterNode`
    (NodesManager builds nodes through that name).  Parallel across shards, but
    relies on redis-py internals (pin the version).
"""
from __future__ import annotations

import asyncio
import functools

import redis.asyncio.cluster as _rc_mod
from redis.asyncio.cluster import ClusterNode, RedisCluster


# ---------------------------------------------------------------- option B
class BoundedClusterNode(ClusterNode):
    __slots__ = ("_gate",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(min(self.max_connections, 1 << 16))

    async def execute_command(self, *args, **kwargs):
        async with self._gate:
            return await super().execute_command(*args, **kwargs)

    async def execute_pipeline(self, commands):
        async with self._gate:
            return await super().execute_pipeline(commands)


def install_bounded_nodes() -> None:
    """Process-wide: every RedisCluster created afterwards uses BoundedClusterNode."""
    _rc_mod.ClusterNode = BoundedClusterNode


# ---------------------------------------------------------------- option A
class GateCluster:
    """Proxy: awaits a global semaphore around every coroutine method of RedisCluster
    and around pipeline.execute()."""

    def __init__(self, rc: RedisCluster, inflight: int):
        self._rc = rc
        self._sem = asyncio.Semaphore(inflight)

    def __getattr__(self, name):
        attr = getattr(self._rc, name)
        if name == "pipeline":
            return functools.partial(self._pipeline)
        if asyncio.iscoroutinefunction(attr):
            @functools.wraps(attr)
            async def gated(*a, **kw):
                async with self._sem:
                    return await attr(*a, **kw)
            return gated
        return attr

    def _pipeline(self, transaction=None):
        pipe = self._rc.pipeline(transaction=transaction)
        orig = pipe.execute
        sem = self._sem

        async def execute(*a, **kw):
            async with sem:
                return await orig(*a, **kw)
        pipe.execute = execute  # ClusterPipeline has __slots__? -> see fallback below
        return pipe


# ------------------------------------------------- stale connections after failover
async def prune_non_primary(rc: RedisCluster) -> int:
    """After a failover redis-py 6.4 patches its slot cache from the MOVED reply (one
    MOVED per shard, the slot lists are shared per range) and keeps the demoted
    ex-master's ClusterNode -- with its idle pooled connections -- as a 'replica'.
    Without read_from_replicas nothing uses them again, but they stay open.
    Close them (ClusterNode.disconnect() closes sockets; objects reconnect lazily)."""
    # Decide by the slot cache (what commands are actually routed to), not by
    # node.server_type, which the MOVED race (cluster_script.py) can get wrong.
    owners = {nodes[0].name for nodes in rc.nodes_manager.slots_cache.values() if nodes}
    closed = 0
    for node in rc.get_nodes():
        if node.name not in owners:
            n = sum(1 for c in node._connections if c.is_connected)
            if n:
                await node.disconnect()
                closed += n
    return closed
