"""The run lifecycle under faults, on a real redis-server: fencing tokens, exactly one terminal
per run, atomic starts, reapers that end every orphaned run, and workers that drain.

Each test pins one bug found by the randomized chaos runs or by reading the code (issue 11);
the name says which. Scripted here so each fails without its fix; tests/test_chaos.py then
tries to break the same guarantees at random.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.agent.leases import reap_once
from gateway.agent.publisher import Publisher, Run
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from gateway.store.sessions import PublishRejected
from tests.support import Gateway, Worker, sse

TERMINALS = ("run.completed", "run.failed", "run.cancelled")


@pytest.fixture
async def iso(redis_server) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    """Store under a key prefix of its own: no other process's reaper touches its runs."""
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    yield Store(redis, prefix="iso" + uuid.uuid4().hex[:8])
    await redis.aclose()


def lease_key(store: Store, sid: str) -> str:
    return f"{store.prefix}:{{{sid}}}:lease"


async def run_events(store: Store, sid: str, run_id: str) -> list[str]:
    return [e.type for e in await store.sessions.read(sid, 0, 10_000) if e.run_id == run_id]


async def eventually(pred, timeout: float = 20.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_reaped_run_refuses_the_late_worker(iso: Store, sid: str) -> None:
    """Chaos bug 1: a worker's renewals failed while Redis was down, a reaper ended its run,
    and the worker went on publishing, terminal included (two terminals). Its token is now
    refused: ``run_ended``, and the log keeps exactly one terminal with nothing after it."""
    pub = Publisher(iso, pickup_timeout_s=30)
    await pub.start_run(sid, "question", run_id="r1")
    token = await iso.sessions.lease("acquire", sid, "r1", "w1", 30)
    worker = Run(pub, sid, "r1", fence=token)
    await worker.text_delta("partial ")
    await iso.redis.delete(lease_key(iso, sid))  # the lease expired during the outage
    assert await reap_once(iso, pub) == [sid]
    for publish in (lambda: worker.text_delta("more"), worker.complete):
        with pytest.raises(PublishRejected) as refused:
            await publish()
        assert refused.value.code == "run_ended"
    # An unfenced publisher is refused too: one terminal per run, enforced by the script.
    with pytest.raises(PublishRejected) as refused:
        await pub.publish(sid, "run.completed", {}, run_id="r1")
    assert refused.value.code == "run_ended"
    assert await run_events(iso, sid, "r1") == ["run.started", "message.delta", "run.failed"]
    assert not await reap_once(iso, pub)  # and reaping again changes nothing


async def test_superseded_token_is_lease_lost_and_renewal_revives_only_a_current_one(
    iso: Store, sid: str
) -> None:
    """A handed-back run gets a new token: the old holder's publishes are ``lease_lost``. A
    lease that expired while its token stayed current is renewed (Redis was down, nobody
    took the run)."""
    pub = Publisher(iso)
    await pub.start_run(sid, "question", run_id="r1")
    old = await iso.sessions.lease("acquire", sid, "r1", "w1", 30)
    await iso.redis.delete(lease_key(iso, sid))
    assert await iso.sessions.lease("renew", sid, "r1", "w1", 30, old) == 1
    assert await iso.sessions.lease_holder(sid) == "w1"
    new = await iso.sessions.lease("handback", sid, "r1", "w1", 30, old)
    assert new > old and await iso.sessions.lease_holder(sid) == "queued"
    with pytest.raises(PublishRejected) as refused:
        await Run(pub, sid, "r1", fence=old).text_delta("stale")
    assert refused.value.code == "lease_lost"
    assert await iso.sessions.lease("renew", sid, "r1", "w1", 30, old) == 0
    taken = await iso.sessions.lease("acquire", sid, "r1", "w2", 30)
    assert taken > new
    assert await iso.sessions.lease("acquire", sid, "r1", "w3", 30) == 0  # no stealing from w2
    await Run(pub, sid, "r1", fence=taken).complete()
    assert (await run_events(iso, sid, "r1"))[-1] == "run.completed"


async def test_stuck_running_session_is_reaped_whatever_its_holder_says(
    iso: Store, sid: str
) -> None:
    """Chaos bug 2: the worker logged "lost the lease; stopping it" and published nothing
    more; the session kept ``running``, ``run_holder`` set, ``cancel_requested`` set, no
    lease, and no reaper ever ended it. Now it ends with its one terminal: cancelled,
    since a cancel was asked."""
    pub = Publisher(iso)
    await pub.start_run(sid, "question", run_id="r1")
    assert await iso.sessions.lease("acquire", sid, "r1", "gone-worker", 30)
    await iso.sessions.request_cancel(sid, "r1")
    await iso.redis.delete(lease_key(iso, sid))
    assert sid in [s for s, _ in await iso.runs.sessions()]
    assert await reap_once(iso, pub) == [sid]
    assert (await run_events(iso, sid, "r1"))[-1] == "run.cancelled"
    meta = await iso.sessions.meta(sid)
    assert meta is not None and meta.status == "idle"
    await reap_once(iso, pub)  # the idle session leaves the reapers' index
    assert sid not in [s for s, _ in await iso.runs.sessions()]


async def test_running_index_keeps_a_run_started_after_the_reaper_looked(
    iso: Store, sid: str
) -> None:
    """The reapers' index was kept by the activity feed, written after each publish: a run's
    idle entry could land after the next run's running entry, removing a running session
    from the index for good. Now it is marked before the start and forgotten only by a
    reaper whose reading is still current."""
    await iso.runs.mark(sid)
    [(_, score)] = [p for p in await iso.runs.sessions() if p[0] == sid]
    await iso.runs.mark(sid)  # a new run starts after the reaper read the score
    assert not await iso.runs.forget(sid, score)
    assert sid in [s for s, _ in await iso.runs.sessions()]


async def test_run_start_is_atomic_and_a_lost_command_is_sent_again(
    redis_server, client: httpx.AsyncClient, sid: str
) -> None:
    """Race: ``start_run`` published ``run.started`` and then took the ``queued`` lease in a
    separate call; a gateway that died between the two left a run no reaper would end. Now
    the start, the lease and the command are one script; if the command never reached the
    workers, a reaper sends it again and the run is played."""
    settings = {"key_prefix": "atomic", "run_pickup_timeout": 6, "run_lease_ttl": 1.5}
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    store = Store(redis, prefix="atomic")
    pub = Publisher(store, pickup_timeout_s=6)
    command = {"kind": "run", "session_id": sid, "run_id": "r1", "input": "offsets please"}
    gw = Gateway(redis_server.url, **settings)
    worker = Worker(redis_server.url, tokens_per_second=400, command_claim_idle=1, **settings)
    try:
        # The pickup timeout runs from the start: on a loaded machine a worker still booting
        # would miss it and the run would end failed, which is not what this test is about.
        # Start once the worker waits for commands (its XREADGROUP is blocked in Redis).
        pid = f":{worker.proc.pid}"

        async def worker_waits() -> bool:
            clients = await redis.client_list()
            return any(c["name"].endswith(pid) and c.get("cmd") == "xreadgroup" for c in clients)

        deadline = time.monotonic() + 60
        while not await worker_waits():
            assert time.monotonic() < deadline, "the worker never waited for commands"
            await asyncio.sleep(0.05)
        # What a gateway that died right after the start script leaves behind: no XADD.
        await pub.start_run(sid, "offsets please", run_id="r1", command=command)
        assert await store.sessions.lease_holder(sid) == "queued"
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as s:
            types = []
            while not types or types[-1] not in TERMINALS:
                types.append((await s.next(30)).event)
        assert types[-1] == "run.completed" and types.count("run.started") == 1
    finally:
        worker.stop()
        gw.stop()
        await redis.aclose()


async def test_queued_run_nobody_plays_is_ended_within_the_pickup_timeout(
    iso: Store, sid: str
) -> None:
    """No worker at all: the run started with its lease, so it ends as interrupted once the
    pickup timeout passes."""
    pub = Publisher(iso, pickup_timeout_s=0.5)
    await pub.start_run(sid, "nobody home", run_id="r1")

    async def ended() -> bool:
        await reap_once(iso, pub)
        return (await run_events(iso, sid, "r1"))[-1] in TERMINALS

    await eventually(ended, 10, "the queued run was never reaped")
    events = await iso.sessions.read(sid, 0, 100)
    assert json.loads(events[-1].data)["reason"] == "interrupted"


async def test_cancel_of_a_run_no_worker_holds_publishes_its_one_terminal(
    redis_server, iso: Store, client: httpx.AsyncClient, sid: str
) -> None:
    """The browser's cancel got 202 and did nothing while the worker was gone. Now the
    gateway ends such a run itself: exactly one ``run.cancelled``; a repeat is 409."""
    gw = Gateway(redis_server.url, key_prefix=iso.prefix)
    try:
        pub = Publisher(iso)
        await pub.start_run(sid, "question", run_id="r1")
        assert await iso.sessions.lease("acquire", sid, "r1", "gone-worker", 30)
        await iso.redis.delete(lease_key(iso, sid))
        r = await client.post(f"{gw.url}/v1/sessions/{sid}/runs/r1/cancel")
        assert r.status_code == 202
        assert await run_events(iso, sid, "r1") == ["run.started", "run.cancelled"]
        r = await client.post(f"{gw.url}/v1/sessions/{sid}/runs/r1/cancel")
        assert r.status_code == 409 and r.json()["code"] == "run_not_active"
    finally:
        gw.stop()


async def test_worker_sigterm_hands_the_run_to_another_worker(
    redis_server, client: httpx.AsyncClient, sid: str
) -> None:
    """Worker drain: SIGTERM mid-run with a drain timeout shorter than the run. The worker
    stops taking commands and hands the run back; another worker continues it from what the
    log holds. No run ends as interrupted, and the answer is whole, with nothing repeated."""
    settings = {
        "key_prefix": "drain",
        "run_lease_ttl": 1.5,
        "run_pickup_timeout": 10,
        "worker_drain_timeout": 0.5,
        "command_claim_idle": 1,
    }
    gw = Gateway(redis_server.url, **settings)
    first = Worker(redis_server.url, tokens_per_second=15, **settings)
    second = None
    try:
        r = await client.post(
            f"{gw.url}/v1/sessions/{sid}/runs",
            json={"input": "How does reconnect resume from the stored offset?"},
        )
        run_id = r.json()["run_id"]
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as s:
            frames = []
            while not frames or frames[-1].event != "message.delta":
                frames.append(await s.next(30))
            first.stop(signal.SIGTERM)
            assert first.proc.wait(15) == 0, first.output()[-2000:]
            assert "handing back 1 run" in first.output()
            second = Worker(redis_server.url, tokens_per_second=400, **settings)
            while frames[-1].event not in TERMINALS:
                frames.append(await s.next(30))
        types = [f.event for f in frames]
        assert types.count("run.completed") == 1 and "run.failed" not in types
        assert types.count("tool.started") == 1 and types.count("tool.completed") == 1
        text = "".join(f.json()["data"]["text"] for f in frames if f.event == "message.delta")
        assert text.startswith("Here is what the documentation says about")
        assert text.count("Here is what") == 1
        assert text.endswith("the first is the most specific match.")
        assert {f.json()["run_id"] for f in frames} == {run_id}
    finally:
        first.stop()
        if second is not None:
            second.stop()
        gw.stop()
