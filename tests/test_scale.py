"""What keeps thousands of idle viewers cheap (issue 14), against a real redis-server:
the ticker that rings every stream's idle wait, and the batching of the heartbeat's
commands into shared pipelines. Figures (memory per viewer, heartbeat lateness) belong to
``loadtests/scale_probe.py``; these tests assert the properties only."""

from __future__ import annotations

import asyncio
import random
import uuid

from gateway.live.ticker import ticker
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect


async def test_ticker_never_rings_early_and_cancelled_alarms_stay_silent() -> None:
    alarms = ticker()
    loop = asyncio.get_running_loop()
    rung: list[tuple[float, float]] = []  # (deadline, when it rang)
    cancelled_rang: list[int] = []
    done = asyncio.Event()
    count = 300
    for k in range(count):
        deadline = loop.time() + random.uniform(0.0, 0.3)

        def ring(deadline: float = deadline) -> None:
            rung.append((deadline, loop.time()))
            if len(rung) == count:
                done.set()

        alarms.call_at(deadline, ring)
        # Alarms cancelled before their time, in the same buckets as the live ones.
        alarms.call_at(deadline, lambda k=k: cancelled_rang.append(k)).cancel()
    # One more cancelled alarm due before the last live one: checked once everything rang.
    late = alarms.call_later(0.1, lambda: cancelled_rang.append(-1))
    late.cancel()
    async with asyncio.timeout(10):
        await done.wait()
    assert len(rung) == count
    assert all(at >= deadline for deadline, at in rung), "an alarm rang before its deadline"
    assert cancelled_rang == []
    assert not late.rang

    # wait(): False (and the event set by the alarm) on timeout, True when set in time.
    ev = asyncio.Event()
    assert await alarms.wait(ev, 0.05) is False
    ev.clear()
    loop.call_soon(ev.set)
    assert await alarms.wait(ev, 30.0) is True


async def test_concurrent_heads_and_touches_share_few_connections(redis_server) -> None:  # type: ignore[no-untyped-def]
    """2,000 idle streams' heartbeat round (a head read and a consumer TTL refresh each, all
    at once) goes out in a few pipelines: the pool, allowed 60 connections here, opens at
    most 10. One command per stream took a connection each, up to the pool's size."""
    role = "scale" + uuid.uuid4().hex[:6]
    redis = connect(Settings(redis_url=redis_server.url, redis_max_connections=60), role=role)
    try:
        store = Store(redis, prefix="sc" + uuid.uuid4().hex[:8])
        sids = [f"s{k}" for k in range(20)]
        heads = {sid: await store.sessions.ensure(sid) for sid in sids}
        for sid in sids:
            await store.consumers.create(sid, "c", "x", "auto", 60)

        async def heartbeat(k: int) -> tuple[str | None, int]:
            sid = sids[k % len(sids)]
            touch = store.consumers.touch(sid, "c", 3600)
            head = await store.sessions.head(sid)
            await touch
            return head

        results = await asyncio.gather(*(heartbeat(k) for k in range(2000)))
        for k, (epoch, seq) in enumerate(results):
            want_epoch, want_seq, _ = heads[sids[k % len(sids)]]
            assert (epoch, seq) == (want_epoch, want_seq)
        ttl = await redis.pttl(store.consumers.key(sids[0], "c"))
        assert ttl > 60_000  # the touch took effect
        names = [ln for ln in redis_server.cli("CLIENT", "LIST").splitlines() if role in ln]
        assert 1 <= len(names) <= 10, f"{len(names)} connections for 2,000 heartbeats"
    finally:
        await redis.aclose()
