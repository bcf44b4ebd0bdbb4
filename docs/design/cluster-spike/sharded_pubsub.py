"""Sharded Pub/Sub (SSUBSCRIBE) for redis-py 6.4 asyncio + Redis Cluster.

redis-py 6.4: `redis.asyncio.cluster.RedisCluster` has no `.pubsub()`, and
`redis.asyncio.client.PubSub` has no `ssubscribe`/`get_sharded_message` (only the sync
client has them). So this class speaks the protocol itself on plain
`redis.asyncio.connection.Connection`s:

  * ONE connection per cluster node that owns >= 1 subscribed channel
    (<= number of masters, e.g. 3), independent of the number of channels/viewers.
  * routing: slot = key_slot(channel); owner from its own CLUSTER SLOTS map
    (refreshed on MOVED / server-side sunsubscribe / connection loss).
  * one SSUBSCRIBE per slot (server answers CROSSSLOT if one SSUBSCRIBE spans slots).
  * one reader task per node connection feeding a single asyncio.Queue, so the app
    keeps its `get_message(timeout=1.0)` loop.
  * health check: PING when idle for `health_interval`; no PONG within another
    `health_interval` -> connection considered dead.
  * recovery: supervisor task re-discovers the topology with backoff and
    re-SSUBSCRIBEs; for every channel re-established it emits
    {"type": "sresubscribe", "channel": ch} so the app can catch up from its
    stream (messages published while unsubscribed are lost — pub/sub is at-most-once).
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import (ConnectionError, MovedError, ResponseError,
                              TimeoutError)
from redis.utils import str_if_bytes

log = logging.getLogger("sharded_pubsub")

_DROP_KW = ("max_connections", "connection_class", "response_callbacks",
            "redis_connect_func", "host", "port")


class _NodeConn:
    __slots__ = ("name", "host", "port", "conn", "reader", "pending_unsub",
                 "ping_outstanding", "channels", "write_lock")

    def __init__(self, name, host, port, conn):
        self.name, self.host, self.port, self.conn = name, host, port, conn
        self.reader: asyncio.Task | None = None
        self.pending_unsub: dict[str, int] = defaultdict(int)
        self.ping_outstanding = False
        self.channels: set[str] = set()
        self.write_lock = asyncio.Lock()


class ShardedPubSub:
    def __init__(self, cluster: RedisCluster, *, health_interval: float = 5.0,
                 use_replicas: bool = False, max_backoff: float = 0.5,
                 queue_maxsize: int = 0, bad_ttl: float = 10.0) -> None:
        self._rc = cluster
        kw = dict(cluster.get_connection_kwargs())
        self._conn_class = kw.get("connection_class") or Connection
        for k in _DROP_KW:
            kw.pop(k, None)
        kw["client_name"] = (kw.get("client_name") or "gw") + "-ssub"
        self._conn_kw = kw
        self._decode = bool(kw.get("decode_responses"))
        self._health = health_interval
        self._use_replicas = use_replicas
        self._max_backoff = max_backoff
        self._bad: dict[str, float] = {}
        self._topology_hint: tuple[str, int] | None = None
        self._bad_ttl = bad_ttl
        self._wanted: set[str] = set()
        self._route: dict[str, str] = {}          # channel -> node name it is subscribed on
        self._nodes: dict[str, _NodeConn] = {}
        self._slots: list[tuple[int, int, tuple, list]] = []  # (start, end, primary, replicas)
        self._queue: asyncio.Queue = asyncio.Queue(queue_maxsize)
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._supervisor: asyncio.Task | None = None
        self._closed = False
        self.stats = defaultdict(int)

    # ------------------------------------------------------------------ API
    async def ssubscribe(self, *channels: str) -> None:
        self._ensure_supervisor()
        async with self._lock:
            if not self._slots:
                await self._refresh_topology()
            new = [c for c in channels if c not in self._wanted]
            self._wanted.update(new)
            await self._route_channels([c for c in new if c not in self._route])

    async def sunsubscribe(self, *channels: str) -> None:
        async with self._lock:
            for ch in channels:
                self._wanted.discard(ch)
                node = self._route.pop(ch, None)
                nc = self._nodes.get(node) if node else None
                if nc is None:
                    continue
                nc.channels.discard(ch)
                nc.pending_unsub[ch] += 1
                try:
                    async with nc.write_lock:
                        await nc.conn.send_command("SUNSUBSCRIBE", ch)
                except (ConnectionError, OSError, TimeoutError):
                    pass  # reader will notice the dead connection
            await self._close_idle_nodes()

    async def get_message(self, timeout: float | None = 1.0) -> dict | None:
        try:
            if timeout is None:
                return await self._queue.get()
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    @property
    def channels(self) -> set[str]:
        return set(self._wanted)

    def connection_count(self) -> int:
        return sum(1 for n in self._nodes.values() if n.conn.is_connected)

    async def aclose(self) -> None:
        self._closed = True
        if self._supervisor:
            self._supervisor.cancel()
        for nc in list(self._nodes.values()):
            await self._drop_node(nc, reason=None)
        self._nodes.clear()

    # ------------------------------------------------------------ topology
    def _candidates(self) -> list[tuple[str, int]]:
        seen, out = set(), []
        for s, e, p, reps in self._slots:
            for hp in [p, *reps]:
                if hp not in seen:
                    seen.add(hp); out.append(hp)
        for n in self._rc.get_nodes() + list(self._rc.nodes_manager.startup_nodes.values()):
            hp = (n.host, int(n.port))
            if hp not in seen:
                seen.add(hp); out.append(hp)
        random.shuffle(out)
        hint = self._topology_hint
        if hint and hint in out:
            out.remove(hint)
            out.insert(0, hint)
        return out

    async def _refresh_topology(self) -> None:
        """CLUSTER SLOTS from the first reachable node, on a short-lived connection."""
        last: Exception | None = None
        for host, port in self._candidates():
            conn = self._conn_class(host=host, port=port,
                                    **{**self._conn_kw, "client_name": "gw-topology",
                                       "socket_connect_timeout": 1.0, "socket_timeout": 2.0})
            try:
                await conn.connect()
                await conn.send_command("CLUSTER", "SLOTS")
                raw = await conn.read_response()
                slots = []
                for item in raw:
                    start, end = int(item[0]), int(item[1])
                    prim = (str_if_bytes(item[2][0]) or host, int(item[2][1]))
                    reps = [(str_if_bytes(r[0]) or host, int(r[1])) for r in item[3:]]
                    slots.append((start, end, prim, reps))
                covered = sum(e - s + 1 for s, e, _, _ in slots)
                if covered < 16384:
                    raise ResponseError(f"only {covered} slots covered by {host}:{port}")
                self._slots = sorted(slots)
                self._topology_hint = None
                self.stats["topology_refresh"] += 1
                return
            except Exception as e:  # try next node
                last = e
            finally:
                await conn.disconnect()
        raise ConnectionError(f"no node could give CLUSTER SLOTS: {last!r}")

    def _owner(self, slot: int) -> tuple[str, int]:
        """Node to SSUBSCRIBE on. Replicas of the slot's shard accept SSUBSCRIBE too
        (SPUBLISH is propagated through the replication stream). Nodes that failed in
        the last `bad_ttl` seconds are skipped, so when a master dies we immediately
        fall over to its replica, which keeps the subscriptions when it is promoted."""
        now = asyncio.get_running_loop().time()
        for s, e, prim, reps in self._slots:
            if s <= slot <= e:
                reps = reps[slot % len(reps):] + reps[:slot % len(reps)] if reps else []
                order = [*reps, prim] if self._use_replicas else [prim, *reps]
                for hp in order:
                    if now - self._bad.get(f"{hp[0]}:{hp[1]}", -1e9) > self._bad_ttl:
                        return hp
                return order[0]
        raise LookupError(f"slot {slot} not covered")

    def _mark_bad(self, name: str) -> None:
        self._bad[name] = asyncio.get_running_loop().time()

    # ------------------------------------------------------------- routing
    async def _route_channels(self, channels) -> None:
        by_node: dict[tuple, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for ch in channels:
            slot = key_slot(ch.encode())
            try:
                by_node[self._owner(slot)][slot].append(ch)
            except LookupError:
                self._dirty.set()
        for (host, port), slots in by_node.items():
            try:
                nc = await self._node(host, port)
                async with nc.write_lock:
                    for slot, chs in slots.items():
                        await nc.conn.send_command("SSUBSCRIBE", *chs)
                        for ch in chs:
                            self._route[ch] = nc.name
                            nc.channels.add(ch)
            except (ConnectionError, OSError, TimeoutError) as e:
                log.warning("ssubscribe on %s:%s failed: %r", host, port, e)
                self.stats["subscribe_errors"] += 1
                self._mark_bad(f"{host}:{port}")
                self._slots = []  # owner unreachable: re-read topology before next attempt
                nc = self._nodes.get(f"{host}:{port}")
                if nc:
                    await self._drop_node(nc, reason=e)
                self._dirty.set()

    async def _node(self, host: str, port: int) -> _NodeConn:
        name = f"{host}:{port}"
        nc = self._nodes.get(name)
        if nc is not None:
            return nc
        conn = self._conn_class(host=host, port=port, **self._conn_kw)
        await conn.connect()
        nc = _NodeConn(name, host, port, conn)
        nc.reader = asyncio.create_task(self._reader(nc), name=f"ssub-reader-{name}")
        self._nodes[name] = nc
        self.stats["connects"] += 1
        return nc

    async def _close_idle_nodes(self) -> None:
        for nc in [n for n in self._nodes.values() if not n.channels and not n.pending_unsub]:
            await self._drop_node(nc, reason=None)

    async def _drop_node(self, nc: _NodeConn, reason) -> None:
        if self._nodes.get(nc.name) is nc:
            del self._nodes[nc.name]
        if nc.reader and nc.reader is not asyncio.current_task():
            nc.reader.cancel()
        try:
            await nc.conn.disconnect()
        except Exception:
            pass
        lost = [ch for ch, n in self._route.items() if n == nc.name]
        for ch in lost:
            del self._route[ch]
        if lost and reason is not None:
            log.warning("lost %d channel(s) on %s: %r", len(lost), nc.name, reason)
            self._dirty.set()

    # --------------------------------------------------------------- reader
    async def _reader(self, nc: _NodeConn) -> None:
        conn = nc.conn
        try:
            while True:
                try:
                    resp = await conn.read_response(timeout=self._health,
                                                    disconnect_on_error=False,
                                                    push_request=True)
                except MovedError as e:  # reply to one of our SSUBSCRIBEs
                    self.stats["moved"] += 1
                    await self._unroute_slot(nc, e.slot_id, f"MOVED {e.slot_id} {e.host}:{e.port}")
                    continue
                except ResponseError as e:  # e.g. CLUSTERDOWN, CROSSSLOT
                    self.stats["response_errors"] += 1
                    log.warning("%s: %r", nc.name, e)
                    await self._unroute_all(nc, repr(e))
                    continue
                if resp is None:  # idle for health_interval
                    if nc.ping_outstanding:
                        raise TimeoutError(f"no PONG from {nc.name} within {self._health}s")
                    nc.ping_outstanding = True
                    async with nc.write_lock:
                        await conn.send_command("PING")
                    continue
                kind = str_if_bytes(resp[0]) if isinstance(resp, list) else str_if_bytes(resp)
                if kind == "smessage":
                    ch = str_if_bytes(resp[1]) if self._decode else resp[1]
                    self.stats["messages"] += 1
                    await self._queue.put({"type": "smessage", "channel": ch,
                                           "data": resp[2], "node": nc.name})
                elif kind == "pong":
                    nc.ping_outstanding = False
                elif kind == "ssubscribe":
                    pass
                elif kind == "sunsubscribe":
                    ch = str_if_bytes(resp[1])
                    if nc.pending_unsub.get(ch):
                        nc.pending_unsub[ch] -= 1
                        if not nc.pending_unsub[ch]:
                            del nc.pending_unsub[ch]
                        if not nc.channels and not nc.pending_unsub:
                            async with self._lock:  # last channel gone: free the connection
                                if not nc.channels and not nc.pending_unsub:
                                    await self._drop_node(nc, reason=None)
                                    return
                    else:  # server-initiated: node lost the slot (failover / resharding)
                        self.stats["server_sunsubscribe"] += 1
                        # This node was just demoted / lost the slot, so it already knows the
                        # new owner: ask it first for CLUSTER SLOTS (other nodes may still
                        # return the old map for a few ms), and don't resubscribe on it even if
                        # a stale map says so -- as a fresh replica it does not yet receive the
                        # shard's SPUBLISH traffic (that goes over the cluster bus to the nodes
                        # the master knows as its replicas).
                        self._mark_bad(nc.name)
                        self._topology_hint = (nc.host, nc.port)
                        async with self._lock:
                            if self._route.get(ch) == nc.name:
                                del self._route[ch]
                                nc.channels.discard(ch)
                            self._slots = []  # force topology refresh
                        self._dirty.set()
                else:
                    log.debug("unexpected %r", resp)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            self.stats["conn_lost"] += 1
            self._mark_bad(nc.name)
            async with self._lock:
                self._slots = []
                await self._drop_node(nc, reason=e)

    async def _unroute_slot(self, nc, slot, why) -> None:
        async with self._lock:
            for ch in [c for c in nc.channels if key_slot(c.encode()) == slot]:
                nc.channels.discard(ch)
                if self._route.get(ch) == nc.name:
                    del self._route[ch]
            self._slots = []
        log.info("%s: %s", nc.name, why)
        self._dirty.set()

    async def _unroute_all(self, nc, why) -> None:
        async with self._lock:
            for ch in list(nc.channels):
                if self._route.get(ch) == nc.name:
                    del self._route[ch]
            nc.channels.clear()
            self._slots = []
        self._dirty.set()

    # ----------------------------------------------------------- supervisor
    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="ssub-supervisor")

    async def _supervise(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            backoff = 0.05
            while not self._closed:
                self._dirty.clear()
                try:
                    async with self._lock:
                        if not self._slots:
                            await self._refresh_topology()
                        missing = [c for c in self._wanted if c not in self._route]
                        await self._route_channels(missing)
                        await self._close_idle_nodes()
                        done = [c for c in missing if c in self._route]
                    for ch in done:
                        self.stats["resubscribed"] += 1
                        await self._queue.put({"type": "sresubscribe", "channel": ch,
                                               "data": None, "node": self._route.get(ch)})
                    if all(c in self._route for c in self._wanted) and not self._dirty.is_set():
                        break
                except Exception as e:
                    log.warning("resubscribe attempt failed: %r", e)
                    self.stats["resubscribe_failures"] += 1
                    self._slots = []
                await asyncio.sleep(backoff + random.random() * backoff)
                backoff = min(backoff * 2, self._max_backoff)
