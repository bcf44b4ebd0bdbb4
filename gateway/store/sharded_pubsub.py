"""Sharded Pub/Sub on Redis Cluster: one SSUBSCRIBE connection per shard, shared by every
channel whose slot that shard serves, re-subscribing after MOVED, a failover or a lost
connection (readers then catch up from the log). redis-py 6.x has no asyncio sharded Pub/Sub
that survives topology changes; findings in ``docs/design/redis-cluster.md``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


class _NodeConn:
    """One SSUBSCRIBE connection to a node, with the channels routed to it."""

    __slots__ = ("channels", "conn", "host", "name", "pending_unsub", "ping_outstanding", "port")

    def __init__(self, host: str, port: int, conn: Connection) -> None:
        self.name = f"{host}:{port}"
        self.host, self.port, self.conn = host, port, conn
        self.channels: set[str] = set()
        self.pending_unsub: dict[str, int] = defaultdict(int)
        self.ping_outstanding = False


Slots = list[tuple[int, int, tuple[str, int], list[tuple[str, int]]]]


class ShardedPubSub:
    """Sharded Pub/Sub (SSUBSCRIBE) over one connection per shard that has a subscription.

    redis-py 6.x's asyncio cluster client has no Pub/Sub. This speaks it on plain
    connections, with the interface the hub uses of redis-py's ``PubSub``: ``subscribe``,
    ``unsubscribe``, ``get_message(timeout)``, ``subscribed``, ``aclose``. Messages are dicts
    ``{"type": "smessage"|"ssubscribe"|"sresubscribe", "channel", "data"}``.

    A channel's owner comes from its own ``CLUSTER SLOTS`` map. After MOVED, a server-sent
    ``sunsubscribe`` (the slot moved or the node was demoted) or a lost connection, a
    supervisor re-reads the topology and re-subscribes with backoff, then emits
    ``sresubscribe`` for each channel: messages published meanwhile are lost (Pub/Sub is
    at-most-once), so the hub sends those viewers back to the log.
    """

    def __init__(self, cluster: RedisCluster, *, health_interval: float = 5.0) -> None:
        self._rc = cluster
        kw = dict(cluster.get_connection_kwargs())
        for k in (
            "max_connections",
            "connection_class",
            "response_callbacks",
            "redis_connect_func",
            "host",
            "port",
        ):
            kw.pop(k, None)
        kw["client_name"] = f"{kw.get('client_name') or 'gw'}:ssub"
        self._conn_kw: dict[str, Any] = kw
        self._health = health_interval
        self._wanted: set[str] = set()
        self._route: dict[str, str] = {}  # channel -> node name subscribed on
        self._nodes: dict[str, _NodeConn] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._slots: Slots = []
        self._bad: dict[str, float] = {}
        self._hint: tuple[str, int] | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    # --- the PubSub interface the hub uses -------------------------------------------------
    @property
    def subscribed(self) -> bool:
        """Whether any channel is wanted (the hub reads only then)."""
        return bool(self._wanted)

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE ``channels``; confirmations arrive as ``ssubscribe`` messages."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="ssub-supervisor")
        async with self._lock:
            if not self._slots:
                await self._refresh_topology()
            new = [c for c in channels if c not in self._wanted]
            self._wanted.update(new)
            await self._route_channels([c for c in new if c not in self._route])

    async def unsubscribe(self, *channels: str) -> None:
        """SUNSUBSCRIBE ``channels``; a node connection closes with its last channel."""
        async with self._lock:
            for ch in channels:
                self._wanted.discard(ch)
                name = self._route.pop(ch, None)
                nc = self._nodes.get(name) if name else None
                if nc is None:
                    continue
                nc.channels.discard(ch)
                nc.pending_unsub[ch] += 1
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    await nc.conn.send_command("SUNSUBSCRIBE", ch)

    async def get_message(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        """Close every node connection and stop re-subscribing."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for nc in list(self._nodes.values()):
            await self._drop(nc, None)

    def connection_count(self) -> int:
        """Open node connections (one per shard with a subscribed channel)."""
        return len(self._nodes)

    # --- topology ----------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[str, int]]:
        seen: set[tuple[str, int]] = set()
        out: list[tuple[str, int]] = []
        known = [(n.host, int(n.port)) for n in self._rc.get_nodes()]
        known += [(n.host, int(n.port)) for n in self._rc.nodes_manager.startup_nodes.values()]
        for _, _, prim, reps in self._slots:
            known += [prim, *reps]
        for hp in known:
            if hp not in seen:
                seen.add(hp)
                out.append(hp)
        random.shuffle(out)
        if self._hint in seen:
            assert self._hint is not None
            out.remove(self._hint)
            out.insert(0, self._hint)
        return out

    async def _refresh_topology(self) -> None:
        """``CLUSTER SLOTS`` from the first node that answers with full coverage."""
        last: Exception | None = None
        for host, port in self._candidates():
            kw: dict[str, Any] = {
                **self._conn_kw,
                "client_name": f"{self._conn_kw['client_name']}:topology",
                "socket_connect_timeout": 1.0,
                "socket_timeout": 2.0,
            }
            conn = Connection(host=host, port=port, **kw)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("CLUSTER", "SLOTS")
                raw = await conn.read_response()
                slots: Slots = []
                for item in raw:
                    prim = (str(item[2][0]) or host, int(item[2][1]))
                    reps = [(str(r[0]) or host, int(r[1])) for r in item[3:]]
                    slots.append((int(item[0]), int(item[1]), prim, reps))
                covered = sum(e - s + 1 for s, e, _, _ in slots)
                if covered < 16384:
                    raise ClusterDownError(  # type: ignore[no-untyped-call]
                        f"{host}:{port} covers only {covered} slots"
                    )
                self._slots = sorted(slots)
                self._hint = None
                return
            except Exception as exc:
                last = exc
            finally:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
        raise RedisConnectionError(f"no cluster node gave its slot map: {last!r}")

    def _owner(self, slot: int) -> tuple[str, int]:
        """The slot's master, unless it failed recently; then a replica (which a promotion
        turns into the master, keeping the subscription)."""
        now = time.monotonic()
        for start, end, prim, reps in self._slots:
            if start <= slot <= end:
                for hp in (prim, *reps):
                    if now - self._bad.get(f"{hp[0]}:{hp[1]}", -1e9) > 10.0:
                        return hp
                return prim
        raise LookupError(f"slot {slot} is not covered")

    # --- routing -----------------------------------------------------------------------------
    async def _route_channels(self, channels: list[str]) -> None:
        by_node: dict[tuple[str, int], dict[int, list[str]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for ch in channels:
            slot = key_slot(ch.encode())
            try:
                by_node[self._owner(slot)][slot].append(ch)
            except LookupError:
                self._dirty.set()
        for (host, port), per_slot in by_node.items():
            try:
                nc = await self._node(host, port)
                for chs in per_slot.values():  # one SSUBSCRIBE may not span slots
                    await nc.conn.send_command("SSUBSCRIBE", *chs)
                    for ch in chs:
                        self._route[ch] = nc.name
                        nc.channels.add(ch)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("ssubscribe on %s:%s failed: %r", host, port, exc)
                self._bad[f"{host}:{port}"] = time.monotonic()
                self._slots = []
                stale = self._nodes.get(f"{host}:{port}")
                if stale is not None:
                    await self._drop(stale, exc)
                self._dirty.set()

    async def _node(self, host: str, port: int) -> _NodeConn:
        name = f"{host}:{port}"
        nc = self._nodes.get(name)
        if nc is not None:
            return nc
        conn = Connection(host=host, port=port, **self._conn_kw)
        await conn.connect()  # type: ignore[no-untyped-call]
        nc = _NodeConn(host, port, conn)
        self._nodes[name] = nc
        self._readers[name] = asyncio.create_task(self._reader(nc), name=f"ssub-{name}")
        return nc

    async def _drop(self, nc: _NodeConn, reason: BaseException | None) -> None:
        if self._nodes.get(nc.name) is nc:
            del self._nodes[nc.name]
        reader = self._readers.pop(nc.name, None)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        with contextlib.suppress(Exception):
            await nc.conn.disconnect()
        lost = [ch for ch, n in self._route.items() if n == nc.name]
        for ch in lost:
            del self._route[ch]
        if lost and reason is not None:
            log.warning("lost %d channel(s) on %s: %r", len(lost), nc.name, reason)
            self._dirty.set()

    def _unroute(self, nc: _NodeConn, channels: list[str]) -> None:
        for ch in channels:
            nc.channels.discard(ch)
            if self._route.get(ch) == nc.name:
                del self._route[ch]
        self._slots = []
        self._dirty.set()

    # --- reading -----------------------------------------------------------------------------
    async def _reader(self, nc: _NodeConn) -> None:
        try:
            while True:
                try:
                    resp = await nc.conn.read_response(
                        timeout=self._health, disconnect_on_error=False, push_request=True
                    )
                except MovedError as exc:  # the answer to one of our SSUBSCRIBEs
                    async with self._lock:
                        slot = exc.slot_id
                        self._unroute(nc, [c for c in nc.channels if key_slot(c.encode()) == slot])
                    continue
                except ResponseError as exc:  # CLUSTERDOWN and the like: re-route all
                    log.warning("%s: %r", nc.name, exc)
                    async with self._lock:
                        self._unroute(nc, list(nc.channels))
                    continue
                if resp is None:  # idle for a health interval: ping, or give up on it
                    if nc.ping_outstanding:
                        raise RedisTimeoutError(f"no PONG from {nc.name}")
                    nc.ping_outstanding = True
                    await nc.conn.send_command("PING")
                    continue
                kind = str(resp[0] if isinstance(resp, list) else resp).lower()
                if kind == "smessage":
                    self._queue.put_nowait(
                        {"type": "smessage", "channel": str(resp[1]), "data": resp[2]}
                    )
                elif kind == "pong":
                    nc.ping_outstanding = False
                elif kind == "ssubscribe":
                    self._queue.put_nowait(
                        {"type": "ssubscribe", "channel": str(resp[1]), "data": resp[2]}
                    )
                elif kind == "sunsubscribe":
                    await self._on_sunsubscribe(nc, str(resp[1]))
                    if nc.name not in self._nodes:
                        return
        except asyncio.CancelledError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError, EOFError) as exc:
            self._bad[nc.name] = time.monotonic()
            async with self._lock:
                self._slots = []
                await self._drop(nc, exc)

    async def _on_sunsubscribe(self, nc: _NodeConn, ch: str) -> None:
        if nc.pending_unsub.get(ch):  # the answer to our own SUNSUBSCRIBE
            nc.pending_unsub[ch] -= 1
            if not nc.pending_unsub[ch]:
                del nc.pending_unsub[ch]
            async with self._lock:
                if not nc.channels and not nc.pending_unsub:
                    await self._drop(nc, None)  # last channel gone: free the connection
            return
        # Sent by the server: this node lost the slot (failover, resharding). It already
        # knows the new owner, so ask it first; never re-subscribe on it (as a fresh replica
        # it may not get the shard's messages yet).
        self._bad[nc.name] = time.monotonic()
        self._hint = (nc.host, nc.port)
        async with self._lock:
            self._unroute(nc, [ch])

    async def _supervise(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            pause = 0.05
            while not self._closed:
                self._dirty.clear()
                try:
                    async with self._lock:
                        if not self._slots:
                            await self._refresh_topology()
                        missing = [c for c in self._wanted if c not in self._route]
                        await self._route_channels(missing)
                        for nc in [n for n in self._nodes.values() if not n.channels]:
                            if not nc.pending_unsub:
                                await self._drop(nc, None)
                        done = [c for c in missing if c in self._route]
                    for ch in done:
                        self._queue.put_nowait({"type": "sresubscribe", "channel": ch})
                    if all(c in self._route for c in self._wanted) and not self._dirty.is_set():
                        break
                except Exception as exc:
                    log.warning("re-subscribe failed: %r", exc)
                    self._slots = []
                await asyncio.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.5)
