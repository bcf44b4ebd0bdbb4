"""The hub and the snapshot store against a real redis-server, where a race was found by
reading the code (issue 11): one regression test each."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.agent.publisher import Publisher
from gateway.core.aio import cancel_and_wait
from gateway.live.hub import Hub, Subscriber
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import Store, snapshots
from gateway.store.client import connect


@pytest.fixture
async def hub_store(redis_server) -> AsyncIterator[tuple[Hub, Store]]:  # type: ignore[no-untyped-def]
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    hub = Hub(redis, Metrics())
    await hub.start()
    yield hub, Store(redis, prefix="hub" + uuid.uuid4().hex[:8])
    await hub.stop()
    await redis.aclose()


async def until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_failed_subscribe_is_retried_and_later_viewers_do_not_wait(hub_store) -> None:  # type: ignore[no-untyped-def]
    """A SUBSCRIBE that failed (Redis unreachable) left its channel registered and never
    confirmed: it was never sent again, and every later viewer of the channel waited the
    whole confirmation timeout for nothing. Now it is retried in the background; viewers
    catch up from the log meanwhile and get live frames once Redis confirms."""
    hub, store = hub_store
    assert hub._pubsub is not None
    real = hub._pubsub.subscribe
    calls = 0

    async def flaky(*channels: str) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("connection refused")
        return await real(*channels)

    hub._pubsub.subscribe = flaky  # type: ignore[method-assign]
    channel = store.sessions.live_channel("s1")
    first, second = Subscriber(64), Subscriber(64)
    await hub.subscribe(channel, first)
    assert first.overflowed  # told to read the log instead
    await hub.subscribe(channel, second)
    await until(lambda: hub.confirmed(channel))
    assert calls == 2
    first.overflowed = second.overflowed = False
    first.events.clear()
    second.events.clear()
    pub = Publisher(store)
    await pub.publish("s1", "vendor.tick", {"n": 1})
    await until(lambda: bool(first.events) and bool(second.events))
    hub.unsubscribe(channel, first)
    hub.unsubscribe(channel, second)


async def test_stopping_the_hub_does_not_swallow_the_callers_cancellation(
    hub_store,  # type: ignore[no-untyped-def]
) -> None:
    """``with suppress(BaseException): await task`` after ``task.cancel()`` also swallowed a
    cancellation aimed at the caller (hub.py, http.py, leases.py): a cancelled shutdown went
    on as if nothing happened. The caller's cancellation now propagates."""
    hub, _ = hub_store
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while
            raise

    assert hub._task is not None
    hub._task.cancel()
    hub._task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(hub.stop())
    await asyncio.sleep(0.05)
    stopper.cancel()  # the caller gives up while the reader cleans up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled()


async def test_cancel_and_wait_stops_a_task_and_keeps_cleanup_running() -> None:
    """A task cancelled for its own sake ends quietly; cleanup that runs *because* the caller
    was already cancelled (an ``__aexit__``) can still stop its helpers."""
    helper = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(helper)
    assert helper.cancelled()

    stopped: list[bool] = []

    async def owner() -> None:
        inner = asyncio.create_task(asyncio.sleep(3600))
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait(inner)  # runs during this task's own cancellation
            stopped.append(inner.cancelled())

    task = asyncio.create_task(owner())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped == [True]


async def test_a_slow_snapshot_reader_never_overwrites_a_newer_snapshot(hub_store) -> None:  # type: ignore[no-untyped-def]
    """``snapshot.load`` stored its fold with an unconditional HSET: a slow reader could
    overwrite a newer snapshot after compaction trimmed the log it summarises."""
    _, store = hub_store
    pub = Publisher(store)
    run = await pub.start_run("s2", "hi", run_id="r1")
    for i in range(5):
        await run.text_delta(f"{i} ")
    await run.complete()
    offset, state = await snapshots.load(store.sessions, "s2")  # type: ignore[misc]
    meta = await store.sessions.meta("s2")
    assert meta is not None
    stale = f"{meta.epoch}_{2:012d}"
    assert not await store.sessions.save_snapshot("s2", stale, json.dumps({"stale": True}))
    assert not await store.sessions.save_snapshot("s2", "00000000_000000000099", "{}")  # old epoch
    stored = await store.sessions.load_snapshot("s2")
    assert stored is not None and stored[0] == offset
    assert json.loads(stored[1])["runs"][0]["text"] == state["runs"][0]["text"] == "0 1 2 3 4 "
