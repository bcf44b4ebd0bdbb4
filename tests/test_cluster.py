"""Redis Cluster faults, on a real 6-node cluster: a master failover during live streams.

Viewers read through two gateway replicas with server-side offsets and reconnect on their
own (without Last-Event-ID) whenever a stream ends; a publisher keeps appending to sessions
spread over every shard. After the fault every viewer's sequence must equal the log: no
gap, no duplicate — or, where the cluster really lost acknowledged data, an explicit
``reset`` before the jump. Also measures the publish rate one shard sustains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio
from redis.crc import key_slot

from gateway.agent.publisher import EventIn, Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.cluster import RedisCluster
from tests.conftest import FAST
from tests.support import Gateway, Worker, sse

pytestmark = pytest.mark.asyncio

SESSIONS = 9  # three per shard


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster()
    yield c
    c.stop()


@pytest.fixture
def replicas(cluster: RedisCluster) -> Iterator[tuple[Gateway, Gateway]]:
    a, b = Gateway(cluster.url, **FAST), Gateway(cluster.url, **FAST)
    yield a, b
    a.stop()
    b.stop()


@pytest_asyncio.fixture
async def cstore(cluster: RedisCluster) -> AsyncIterator[Store]:
    redis = connect(Settings(redis_url=cluster.url), role="test")
    yield Store(redis)
    await redis.aclose()


def sessions_per_shard(cluster: RedisCluster, prefix: str) -> dict[int, list[str]]:
    """``SESSIONS`` ids, three on each master, keyed by the master's port."""
    out: dict[int, list[str]] = {m: [] for m in cluster.masters()}
    i = 0
    while any(len(v) < SESSIONS // 3 for v in out.values()):
        sid = f"{prefix}-{i}"
        owner = cluster.master_of_slot(key_slot(f"gw:{{{sid}}}:log".encode()))
        if len(out[owner]) < SESSIONS // 3:
            out[owner].append(sid)
        i += 1
    return out


@dataclass
class Viewer:
    """Reads one session through a stored connection, reconnecting whenever the stream ends."""

    sid: str
    urls: list[str]
    seqs: list[int] = field(default_factory=list)
    resets: list[tuple[int, str]] = field(default_factory=list)  # (seq before, reason)
    reconnects: int = 0

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        resp = await client.post(
            f"{self.urls[0]}/v1/sessions/{self.sid}/connections", json={"from": "start"}
        )
        cid = resp.json()["connection_id"]
        attempt = 0
        while not stop.is_set():
            base = self.urls[attempt % len(self.urls)]
            attempt += 1
            url = f"{base}/v1/sessions/{self.sid}/connections/{cid}/events"
            with contextlib.suppress(httpx.HTTPError):
                async with client.stream("GET", url) as r:
                    if r.status_code != 200:
                        await asyncio.sleep(0.2)
                        continue
                    event, fid = "", ""
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("id: "):
                            fid = line[4:]
                        elif line == "" and fid:  # a frame ends: its id line may come first
                            if event == "reset":
                                self.resets.append((self.seqs[-1] if self.seqs else 0, fid))
                            else:
                                self.seqs.append(int(fid.split("_")[1]))
                            event, fid = "", ""
                        if stop.is_set():
                            return
            self.reconnects += 1
            await asyncio.sleep(0.1)


async def read_log(store: Store, sid: str) -> list[int]:
    return [e.seq for e in await store.sessions.read(sid, 0, 100_000)]


async def publish_loop(pub: Publisher, sids: list[str], stop: asyncio.Event, rate: float) -> int:
    """Round-robin publishing at ``rate`` events/s in total; returns the count acknowledged."""
    n = 0
    while not stop.is_set():
        t0 = time.monotonic()
        for sid in sids:
            await pub.publish(sid, "session.title", {"title": f"t{n}"})
            n += 1
        await asyncio.sleep(max(0.0, len(sids) / rate - (time.monotonic() - t0)))
    return n


def check(viewers: list[Viewer], logs: dict[str, list[int]]) -> tuple[int, int, int]:
    """(deliveries, gaps, duplicates); a jump right after a reset is not a gap."""
    deliveries = gaps = dups = 0
    for v in viewers:
        deliveries += len(v.seqs)
        seen: set[int] = set()
        reset_at = {before for before, _ in v.resets}
        prev = 0
        for s in v.seqs:
            if s in seen:
                dups += 1
            elif s != prev + 1 and prev not in reset_at:
                gaps += 1
            seen.add(s)
            prev = s
        if not v.resets:
            assert v.seqs == logs[v.sid], f"{v.sid}: viewer differs from the log"
    return deliveries, gaps, dups


async def fault_during_streams(
    cluster: RedisCluster,
    cstore: Store,
    fault: str,
    victim: int,
    sids: list[str],
    viewers: list[Viewer],
    stop_pub: asyncio.Event,
    publisher: asyncio.Task[int],
) -> tuple[int, float, dict[str, list[int]]]:
    """Inject ``fault`` on ``victim`` mid-stream; wait for viewers to catch up with the log."""
    await asyncio.sleep(1.5)
    replica = cluster.replica_of(victim)
    t0 = time.monotonic()
    if fault == "manual_failover":
        cluster.failover(replica)
    else:
        cluster.kill(victim)
        cluster._wait(lambda: cluster.role(replica) == "master", 30, "promotion")
    promoted_s = time.monotonic() - t0
    await asyncio.sleep(2.0)
    stop_pub.set()
    published = await publisher
    logs = {sid: await read_log(cstore, sid) for sid in sids}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(v.seqs and v.seqs[-1] == logs[v.sid][-1] for v in viewers):
            break
        await asyncio.sleep(0.1)
    return published, promoted_s, logs


@pytest.mark.parametrize("fault", ["manual_failover", "kill_master"])
async def test_master_failover_during_streams_loses_nothing(
    cluster: RedisCluster, replicas: tuple[Gateway, Gateway], cstore: Store, fault: str
) -> None:
    a, b = replicas
    shards = sessions_per_shard(cluster, f"fo-{fault}")
    sids = [s for group in shards.values() for s in group]
    victim = next(iter(shards))  # the master whose sessions are hit
    pub = Publisher(cstore)
    stop_pub, stop_view = asyncio.Event(), asyncio.Event()
    viewers = [
        Viewer(sid, [a.url, b.url] if i % 2 else [b.url, a.url]) for i, sid in enumerate(sids * 2)
    ]
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=10), limits=limits) as client:
        tasks = [asyncio.create_task(v.run(client, stop_view)) for v in viewers]
        publisher = asyncio.create_task(publish_loop(pub, sids, stop_pub, rate=300))
        try:
            published, promoted_s, logs = await fault_during_streams(
                cluster, cstore, fault, victim, sids, viewers, stop_pub, publisher
            )
        finally:
            stop_view.set()
            stop_pub.set()
            for t in [*tasks, publisher]:
                t.cancel()
            await asyncio.gather(*tasks, publisher, return_exceptions=True)
    deliveries, gaps, dups = check(viewers, logs)
    resets = sum(len(v.resets) for v in viewers)
    in_log = sum(len(s) for s in logs.values())
    print(
        f"\n[{fault}] promoted in {promoted_s:.2f} s; {published} events acknowledged, "
        f"{in_log} in the log; {len(viewers)} viewers, {deliveries} deliveries, {gaps} gaps, "
        f"{dups} duplicates, {resets} resets, "
        f"{sum(v.reconnects for v in viewers)} reconnects"
    )
    assert published == in_log, "an acknowledged publish is missing or duplicated in the log"
    assert gaps == 0 and dups == 0
    assert all(v.seqs[-1] == logs[v.sid][-1] for v in viewers), "a viewer did not catch up"


async def test_one_shard_publish_rate(
    cluster: RedisCluster, replicas: tuple[Gateway, Gateway], cstore: Store
) -> None:
    """Events/s one shard sustains with 16 concurrent publishers of 20-event batches
    (a figure, printed; not asserted beyond "it works")."""
    shard = next(iter(sessions_per_shard(cluster, "rate").values()))
    pub = Publisher(cstore)
    batch = [EventIn("message.delta", {"text": "token "}, "r1") for _ in range(20)]
    count = 0
    deadline = time.monotonic() + 3.0

    async def producer(i: int) -> None:
        nonlocal count
        sid = shard[i % len(shard)]
        while time.monotonic() < deadline:
            await pub.publish_batch(sid, batch)
            count += len(batch)

    t0 = time.monotonic()
    await asyncio.gather(*(producer(i) for i in range(16)))
    rate = count / (time.monotonic() - t0)
    print(f"\none shard: {rate:,.0f} events/s ({count} events in 20-event batches, 16 producers)")
    assert count > 0


async def test_worker_runs_a_turn_on_the_cluster(
    cluster: RedisCluster, replicas: tuple[Gateway, Gateway]
) -> None:
    """The demo worker (consumer group on the global commands stream, run leases, activity
    index) runs unchanged on a cluster; the run is watched through the other replica."""
    a, b = replicas
    worker = Worker(cluster.url, tokens_per_second=400)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(f"{a.url}/v1/sessions/cl-run/runs", json={"input": "hello"})
            assert r.status_code == 202, r.text
            run_id = r.json()["run_id"]
            types: list[str] = []
            async with sse(client, f"{b.url}/v1/sessions/cl-run/events?from=start") as s:
                while not types or types[-1] not in ("run.completed", "run.failed"):
                    env = (await s.next(30)).json()
                    if env["run_id"] == run_id:
                        types.append(env["type"])
            assert types[0] == "run.started" and types[-1] == "run.completed"
            listed = (await client.get(f"{b.url}/v1/sessions")).json()["sessions"]
            assert any(x["session_id"] == "cl-run" and x["status"] == "idle" for x in listed)
    finally:
        worker.stop()
