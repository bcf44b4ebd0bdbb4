"""DESIGN.md scenarios 1–11, 16 and 17, black box: a real redis-server, two real uvicorn
gateway replicas (``a`` and ``b``), HTTP + SSE clients and the asyncio publisher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateway.agent.publisher import EventIn, Publisher
from gateway.core import fold
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.conftest import FAST
from tests.support import Gateway, seqs, sse

pytestmark = pytest.mark.asyncio


async def deltas(pub: Publisher, sid: str, n: int, run_id: str = "r1", tag: str = "e") -> list[str]:
    return [
        await pub.publish(sid, "message.delta", {"text": f"{tag}{i} "}, run_id=run_id)
        for i in range(n)
    ]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def connect_viewer(
    client: httpx.AsyncClient, base: str, sid: str, **body: Any
) -> dict[str, Any]:
    resp = await client.post(f"{base}/v1/sessions/{sid}/connections", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def events_url(base: str, sid: str, cid: str) -> str:
    return f"{base}/v1/sessions/{sid}/connections/{cid}/events"


async def stored_offset(client: httpx.AsyncClient, base: str, sid: str, cid: str) -> str:
    return (await client.get(f"{base}/v1/sessions/{sid}/connections/{cid}")).json()["offset"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("commit", ["auto", "manual"])
async def test_s01_reattach_with_connection_id_on_other_replica(
    gateways, publisher, client, sid, commit
):
    a, b = gateways
    offs = await deltas(publisher, sid, 50)
    conn = await connect_viewer(client, a.url, sid, **{"from": "start", "commit": commit})
    async with sse(client, events_url(a.url, sid, conn["connection_id"])) as s:
        frames = await s.take(50)
    assert seqs(frames) == list(range(1, 51))
    if commit == "manual":
        r = await client.post(
            f"{a.url}/v1/sessions/{sid}/connections/{conn['connection_id']}/ack",
            json={"offset": frames[-1].id},
        )
        assert r.status_code == 204
    else:  # auto commit is flushed within GATEWAY_AUTO_COMMIT_INTERVAL and on disconnect

        async def committed() -> bool:
            return await stored_offset(client, a.url, sid, conn["connection_id"]) == offs[-1]

        await eventually(committed)
    more = await deltas(publisher, sid, 30, tag="m")
    async with sse(client, events_url(b.url, sid, conn["connection_id"])) as s:
        frames = await s.take(30)
        assert await s.nothing_for(0.5)
    assert seqs(frames) == list(range(51, 81))
    assert [f.id for f in frames] == more
    assert [f.json()["data"]["text"] for f in frames] == [f"m{i} " for i in range(30)]


async def test_s02_last_event_id_only_on_other_replica(gateways, publisher, client, sid):
    a, b = gateways
    await deltas(publisher, sid, 50)
    async with sse(client, f"{a.url}/v1/sessions/{sid}/events?from=start") as s:
        frames = await s.take(50)
    await deltas(publisher, sid, 30)
    async with sse(
        client, f"{b.url}/v1/sessions/{sid}/events", headers={"Last-Event-ID": frames[-1].id}
    ) as s:
        got = await s.take(30)
        assert await s.nothing_for(0.5)
    assert seqs(got) == list(range(51, 81))


async def test_s03_last_event_id_wins_over_stored_offset(gateways, publisher, client, sid):
    a, b = gateways
    offs = await deltas(publisher, sid, 80)
    conn = await connect_viewer(client, a.url, sid, **{"from": "start", "commit": "manual"})
    cid = conn["connection_id"]
    # The client acked 60 but rendered only 50 before the connection dropped.
    assert (
        await client.post(
            f"{a.url}/v1/sessions/{sid}/connections/{cid}/ack", json={"offset": offs[59]}
        )
    ).status_code == 204
    async with sse(client, events_url(b.url, sid, cid), headers={"Last-Event-ID": offs[49]}) as s:
        got = await s.take(30)
    assert seqs(got) == list(range(51, 81))
    # Also as a query parameter (EventSource cannot set headers on its first request).
    async with sse(client, events_url(a.url, sid, cid) + f"?last_event_id={offs[69]}") as s:
        got = await s.take(10)
    assert seqs(got) == list(range(71, 81))


async def test_s04_cursor_at_last_event_resends_nothing(gateways, publisher, client, sid):
    a, _ = gateways
    offs = await deltas(publisher, sid, 5)
    async with sse(client, f"{a.url}/v1/sessions/{sid}/events?from={offs[-1]}") as s:
        assert await s.nothing_for(0.5)
        nxt = await publisher.publish(sid, "message.delta", {"text": "next"}, run_id="r1")
        frame = await s.next()
    assert frame.id == nxt and frame.json()["data"] == {"text": "next"}


async def test_s05_bad_cursors_get_4xx_or_reset(gateways, publisher, client, sid):
    a, _ = gateways
    offs = await deltas(publisher, sid, 3)
    other = "t-other-" + sid
    other_offs = await deltas(publisher, other, 3)
    epoch = offs[0].split("_")[0]
    # Upper-case hex is not an epoch. Not epoch.upper(): an all-digit epoch stays
    # valid upper-cased (one in 43), and its 200 stream kept this test waiting until its timeout.
    upper = epoch[:-1] + "A"
    for bad in ["garbage", "12345", f"{epoch}_12", f"{upper}_000000000001", ""]:
        r = await client.get(f"{a.url}/v1/sessions/{sid}/events", params={"from": bad or " "})
        assert r.status_code == 400 and r.json()["code"] == "invalid_offset", (bad, r.text)
        r = await client.post(f"{a.url}/v1/sessions/{sid}/connections", json={"from": bad or " "})
        assert r.status_code == 400 and r.json()["code"] == "invalid_offset"
    ahead = f"{epoch}_000000000099"
    r = await client.get(f"{a.url}/v1/sessions/{sid}/events", headers={"Last-Event-ID": ahead})
    assert r.status_code == 409 and r.json()["code"] == "offset_ahead"
    r = await client.post(f"{a.url}/v1/sessions/{sid}/connections", json={"from": ahead})
    assert r.status_code == 409 and r.json()["code"] == "offset_ahead"
    # Another session's offset (another epoch) and an old epoch: an explicit reset.
    head = offs[-1]
    for foreign in [other_offs[1], f"{'0' * 8}_000000000001"]:
        if foreign.startswith(epoch):
            continue
        async with sse(client, f"{a.url}/v1/sessions/{sid}/events?from={foreign}") as s:
            reset = await s.next()
            assert reset.event == "reset"
            body = reset.json()
            assert body["reason"] == "epoch_changed"
            assert body["snapshot"] == f"/v1/sessions/{sid}/snapshot"
            assert reset.id == head == body["offset"]
            # The stream goes on from the head.
            head = await publisher.publish(sid, "message.delta", {"text": "x"}, run_id="r1")
            assert (await s.next()).id == head
    # A connection whose stored offset is from another epoch resets on attach too.
    conn = await connect_viewer(client, a.url, sid, **{"from": other_offs[0]})
    async with sse(client, events_url(a.url, sid, conn["connection_id"])) as s:
        assert (await s.next()).event == "reset"
    r = await client.get(f"{a.url}/v1/sessions/bad%20id/events")
    assert r.status_code == 400 and r.json()["code"] == "invalid_id"


async def test_s06_cursor_older_than_retention_resets_to_snapshot(gateways, store, client, sid):
    a, _ = gateways
    small = Publisher(store, retention_maxlen=10)
    await small.publish(sid, "run.started", {"input": "long run"}, run_id="r1")
    for i in range(10):
        await small.publish_batch(
            sid, [EventIn("message.delta", {"text": f"{i}.{j} "}, "r1") for j in range(100)]
        )
    meta = (await client.get(f"{a.url}/v1/sessions/{sid}")).json()
    assert meta["first_offset"] > meta["last_offset"].split("_")[0] + "_000000000002"
    first = f"{meta['epoch']}_000000000001"
    async with sse(client, f"{a.url}/v1/sessions/{sid}/events?from={first}") as s:
        reset = await s.next()
        assert reset.event == "reset" and reset.json()["reason"] == "offset_trimmed"
        assert reset.json()["snapshot"] == f"/v1/sessions/{sid}/snapshot"
        snap = (await client.get(f"{a.url}{reset.json()['snapshot']}")).json()
        assert snap["offset"] == meta["last_offset"] == reset.id
        nxt = await small.publish(sid, "run.completed", {}, run_id="r1")
        assert (await s.next()).id == nxt


async def test_s07_attach_after_run_finished_replays_once(gateways, publisher, client, sid):
    a, _ = gateways
    run = await publisher.start_run(sid, "hello")
    for i in range(20):
        await run.text_delta(f"t{i}")
    await run.complete()
    conn = await connect_viewer(client, a.url, sid, **{"from": "start"})
    async with sse(client, events_url(a.url, sid, conn["connection_id"])) as s:
        frames = await s.take(22)
        assert await s.nothing_for(0.5)
    types = [f.event for f in frames]
    assert types[0] == "run.started" and types.count("run.completed") == 1
    assert types[-1] == "run.completed"
    assert seqs(frames) == list(range(1, 23))


async def test_s08_two_tabs_identical_and_stalled_tab_delays_no_one(
    gateways, publisher, client, sid
):
    a, _ = gateways
    fallbacks_before = a.metric("gateway_slow_consumer_fallbacks_total")
    n, blob = 3000, "x" * 8000  # ~24 MB: far more than socket buffers hold
    async with (
        httpx.AsyncClient(timeout=None) as stalled_client,
        sse(stalled_client, f"{a.url}/v1/sessions/{sid}/events?from=start", paused=True) as stalled,
        sse(client, f"{a.url}/v1/sessions/{sid}/events?from=start") as reader,
    ):
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        for i in range(0, n, 100):
            await publisher.publish_batch(
                sid,
                [EventIn("message.delta", {"text": blob, "i": i + j}, "r1") for j in range(100)],
            )
        publish_s = time.monotonic() - t0
        got = [await reader.next() for _ in range(n)]
        read_s = time.monotonic() - t0
        # The stalled tab has not read a byte; now it reads everything.
        stalled.resume()
        stalled_got = [await stalled.next(timeout=30) for _ in range(n)]
    assert seqs(got) == list(range(1, n + 1))
    assert [f.id for f in stalled_got] == [f.id for f in got]
    assert a.metric("gateway_slow_consumer_fallbacks_total") > fallbacks_before
    print(f"publish {publish_s:.2f}s, live reader done {read_s:.2f}s while one tab stalled")


async def test_s09_second_device_snapshot_plus_tail_equals_full_view(
    gateways, publisher, client, sid
):
    a, b = gateways
    run = await publisher.start_run(sid, "question")
    await run.reasoning_delta("thinking ")
    await run.tool_started("c1", "search", {"q": "x"})
    async with sse(client, f"{a.url}/v1/sessions/{sid}/events?from=start") as first:
        for i in range(30):
            await run.text_delta(f"w{i} ")
        await run.tool_completed("c1", "found", duration_ms=12.5)
        await run.request_approval("ap1", "ok?")
        # Device two joins mid-run on the other replica.
        snap = (await client.get(f"{b.url}/v1/sessions/{sid}/snapshot")).json()
        conn = await connect_viewer(client, b.url, sid, **{"from": snap["offset"]})
        async with sse(client, events_url(b.url, sid, conn["connection_id"])) as second:
            for i in range(30):
                await run.text_delta(f"v{i} ")
            last = await run.complete()
            full: list[Any] = []
            while not full or full[-1].id != last:
                full.append(await first.next())
            tail: list[Any] = []
            while not tail or tail[-1].id != last:
                tail.append(await second.next())
    folded = fold.empty_state(sid)
    for f in full:
        env = f.json()
        fold.apply(folded, env["type"], env["run_id"], env["data"])
    joined = snap["state"]
    for f in tail:
        env = f.json()
        fold.apply(joined, env["type"], env["run_id"], env["data"])
    assert joined == folded
    assert folded["runs"][0]["text"] == "".join(f"w{i} " for i in range(30)) + "".join(
        f"v{i} " for i in range(30)
    )


async def test_s10_switch_away_and_back_20_times(backend, publisher, client, sid):
    gw = Gateway(backend.url, **FAST)  # own process: its open-stream gauge is ours alone
    try:
        other = sid + "-other"
        conn = await connect_viewer(
            gw.url and client, gw.url, sid, **{"from": "start", "commit": "manual"}
        )
        other_conn = await connect_viewer(
            client, gw.url, other, **{"from": "start", "commit": "manual"}
        )
        cid = conn["connection_id"]
        total = 400
        max_open = 0.0
        stop = asyncio.Event()

        async def produce() -> None:
            for i in range(total):
                await publisher.publish(sid, "message.delta", {"text": f"{i} "}, run_id="r1")
                await asyncio.sleep(0.004)

        async def watch() -> None:
            nonlocal max_open
            while not stop.is_set():
                max_open = max(max_open, gw.metric("gateway_open_streams", kind="connection"))
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        watcher = asyncio.create_task(watch())
        seen: list[int] = []
        for _ in range(20):
            async with sse(client, events_url(gw.url, sid, cid)) as s:
                for _ in range(5):
                    try:
                        frame = await s.next(timeout=0.3)
                    except TimeoutError:
                        break
                    seen.append(int(frame.id.split("_")[1]))
            if seen:
                ack = await client.post(
                    f"{gw.url}/v1/sessions/{sid}/connections/{cid}/ack", json={"offset": frame.id}
                )
                assert ack.status_code == 204
            # Switch to the other session, then come back.
            async with sse(client, events_url(gw.url, other, other_conn["connection_id"])) as s:
                await s.nothing_for(0.02)
        await producer
        async with sse(client, events_url(gw.url, sid, cid)) as s:
            while not seen or seen[-1] < total:
                seen.append(int((await s.next()).id.split("_")[1]))
        stop.set()
        await watcher
        assert seen == list(range(1, total + 1)), "gap or duplicate"
        assert max_open <= 1, f"{max_open} streams open at once for one connection"
    finally:
        gw.stop()


async def test_s11_new_run_not_suppressed_by_old_cursor(gateways, publisher, client, sid):
    a, b = gateways
    run1 = await publisher.start_run(sid, "first")
    await run1.text_delta("one")
    end1 = await run1.complete()
    conn = await connect_viewer(client, a.url, sid, **{"from": end1, "commit": "manual"})
    # While the viewer is away, a whole second run starts and finishes.
    run2 = await publisher.start_run(sid, "second")
    await run2.text_delta("two")
    await run2.complete()
    async with sse(client, events_url(b.url, sid, conn["connection_id"])) as s:
        frames = await s.take(3)
        assert await s.nothing_for(0.3)
    assert [f.event for f in frames] == ["run.started", "message.delta", "run.completed"]
    assert {f.json()["run_id"] for f in frames} == {run2.run_id}


async def test_s16_concurrent_producers_one_total_order(gateways, backend, client, sid):
    a, b = gateways
    clients = [connect(Settings(redis_url=backend.url), role="producer") for _ in range(2)]
    pubs = [Publisher(Store(r)) for r in clients]
    n = 300

    async def produce(k: int) -> None:
        for i in range(n):
            await pubs[k].publish(sid, "message.delta", {"text": f"p{k}-{i}"}, run_id=f"r{k}")

    async with (
        sse(client, f"{a.url}/v1/sessions/{sid}/events?from=start") as va,
        sse(client, f"{b.url}/v1/sessions/{sid}/events?from=start") as vb,
    ):
        await asyncio.gather(produce(0), produce(1))
        fa = await va.take(2 * n)
        fb = await vb.take(2 * n)
    for r in clients:
        await r.aclose()
    assert [f.id for f in fa] == [f.id for f in fb]
    assert seqs(fa) == list(range(1, 2 * n + 1))
    for k in range(2):
        mine = [f.json()["data"]["text"] for f in fa if f.json()["run_id"] == f"r{k}"]
        assert mine == [f"p{k}-{i}" for i in range(n)]


async def test_s17_heartbeats_and_abandoned_connections_reclaimed(backend, client, sid):
    gw = Gateway(backend.url, heartbeat_interval=0.5, connection_ttl=2)
    try:
        conn = await connect_viewer(client, gw.url, sid, **{"from": "live"})
        cid = conn["connection_id"]
        async with sse(client, events_url(gw.url, sid, cid)) as s:
            # Six heartbeats at 0.5 s: attached for longer than the 2 s TTL of its offset.
            await eventually(lambda: asyncio.sleep(0, len(s.comments) >= 6), timeout=10)
            assert gw.metric("gateway_open_streams", kind="connection") == 1
            # While attached, heartbeats keep the stored offset alive past its TTL.
            assert (
                await client.get(f"{gw.url}/v1/sessions/{sid}/connections/{cid}")
            ).status_code == 200
        # The viewer walked away: the stream is released at once, the offset within its TTL.
        await eventually(
            lambda: asyncio.sleep(0, gw.metric("gateway_open_streams", kind="connection") == 0)
        )
        t0 = time.monotonic()

        async def gone() -> bool:
            r = await client.get(f"{gw.url}/v1/sessions/{sid}/connections/{cid}")
            return r.status_code == 404 and r.json()["code"] == "connection_not_found"

        await eventually(gone, timeout=5)
        print(
            f"abandoned connection reclaimed {time.monotonic() - t0:.2f}s after the stream closed"
        )
    finally:
        gw.stop()


async def test_second_attach_closes_first_across_replicas(gateways, publisher, client, sid):
    a, b = gateways
    await deltas(publisher, sid, 3)
    conn = await connect_viewer(client, a.url, sid, **{"from": "start", "commit": "manual"})
    cid = conn["connection_id"]
    async with sse(client, events_url(a.url, sid, cid)) as first:
        assert seqs(await first.take(3)) == [1, 2, 3]
        async with sse(client, events_url(b.url, sid, cid)) as second:
            closing = await first.next()
            assert closing.event == "close" and closing.json() == {"reason": "superseded"}
            with pytest.raises(StopAsyncIteration):
                await first.next()
            assert seqs(await second.take(3)) == [1, 2, 3]


async def test_viewer_count_uses_constant_redis_connections(gateways, backend, publisher, sid):
    """200 concurrent viewers of 20 sessions: the gateway process holds ≤ 8 Redis connections
    (on a cluster: ≤ 8 on each node, its command pool plus one sharded Pub/Sub connection)."""
    a, _ = gateways
    sessions = [f"{sid}-{i}" for i in range(20)]
    for s_id in sessions:
        await publisher.publish(s_id, "message.delta", {"text": "warm"}, run_id="r1")
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=None, limits=limits) as many:
        ready = asyncio.Barrier(201)
        done = asyncio.Event()
        received: list[int] = []

        async def viewer(i: int) -> None:
            s_id = sessions[i % 20]
            async with sse(many, f"{a.url}/v1/sessions/{s_id}/events?from=start") as s:
                await s.next()
                await ready.wait()
                frame = await s.next(timeout=20)
                received.append(int(frame.id.split("_")[1]))
                await done.wait()

        tasks = [asyncio.create_task(viewer(i)) for i in range(200)]
        await asyncio.wait_for(ready.wait(), 60)
        for s_id in sessions:
            await publisher.publish(s_id, "message.delta", {"text": "live"}, run_id="r1")
        await eventually(lambda: asyncio.sleep(0, len(received) == 200), timeout=20)
        per_node = [
            sum(
                "name=gateway:" in ln
                and ln.split("name=")[1]
                .split()[0]
                .endswith((f":{a.proc.pid}", f":{a.proc.pid}:ssub"))
                for ln in cli("CLIENT", "LIST").splitlines()
            )
            for cli in backend.nodes
        ]
        streams_open = a.metric("gateway_open_streams", kind="plain")
        done.set()
        await asyncio.gather(*tasks)
    print(
        f"[{backend.kind}] 200 viewers / 20 sessions: {sum(per_node)} Redis connections from the "
        f"gateway ({per_node} per node), {streams_open:.0f} open streams"
    )
    assert streams_open >= 200
    assert sum(per_node) >= 1 and max(per_node) <= 8
    assert received == [2] * 200
