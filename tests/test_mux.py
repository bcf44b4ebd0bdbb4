"""The multiplexed browser stream (one SSE response per browser), black box over two
replicas: many sessions on one stream, subscription changes, exact per-session resume."""

from __future__ import annotations

import asyncio

import pytest

from gateway.agent.publisher import EventIn
from tests.support import seqs, sse

pytestmark = pytest.mark.asyncio


async def new_mux(client, base: str) -> str:
    r = await client.post(f"{base}/v1/mux")
    assert r.status_code == 201
    return r.json()["mux_id"]


async def nxt(s, timeout: float = 10.0):
    """The next frame that is not an activity-feed entry."""
    while (f := await s.next(timeout)).event == "session":
        pass
    return f


async def take(s, n: int):
    return [await nxt(s) for _ in range(n)]


async def quiet(s, seconds: float) -> bool:
    try:
        f = await nxt(s, seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame {f}")


async def test_one_stream_carries_many_sessions_and_activity(gateways, publisher, client, sid):
    a, _ = gateways
    mux = await new_mux(client, a.url)
    sessions = [f"{sid}-{i}" for i in range(3)]
    async with sse(client, f"{a.url}/v1/mux/{mux}/events") as s:
        for s_id in sessions:
            r = await client.put(f"{a.url}/v1/mux/{mux}/sessions/{s_id}", json={"from": "start"})
            assert r.status_code == 200, r.text
        subscribed = [await s.next() for _ in range(3)]
        assert {f.event for f in subscribed} == {"subscribed"}
        assert {f.json()["session_id"] for f in subscribed} == set(sessions)
        for i in range(5):
            for s_id in sessions:
                await publisher.publish(s_id, "message.delta", {"text": f"{s_id}:{i}"}, run_id="r1")
        run = await publisher.start_run(f"{sid}-unwatched", "background")
        got: dict[str, list[str]] = {x: [] for x in sessions}
        activity = []
        while sum(map(len, got.values())) < 15 or not activity:
            f = await s.next()
            if f.event == "message":
                env = f.json()
                assert f.id == env["offset"]
                got[env["session_id"]].append(env["data"]["text"])
            elif f.event == "session" and f.json()["session_id"] == f"{sid}-unwatched":
                activity.append(f.json())
        await run.complete()
    for s_id in sessions:
        assert got[s_id] == [f"{s_id}:{i}" for i in range(5)]
    assert activity[0]["status"] == "running"
    assert activity[0]["last_offset"].endswith("_000000000001")
    deadline = asyncio.get_running_loop().time() + 5
    while a.metric("gateway_open_streams", kind="mux") != 0:
        assert asyncio.get_running_loop().time() < deadline, "mux stream not released"
        await asyncio.sleep(0.05)


async def test_unsubscribe_and_resubscribe(gateways, publisher, client, sid):
    a, _ = gateways
    mux = await new_mux(client, a.url)
    url = f"{a.url}/v1/mux/{mux}/sessions/{sid}"
    async with sse(client, f"{a.url}/v1/mux/{mux}/events") as s:
        await client.put(url, json={"from": "live"})
        assert (await nxt(s)).event == "subscribed"
        first = await publisher.publish(sid, "message.delta", {"text": "1"}, run_id="r1")
        assert (await nxt(s)).id == first
        assert (await client.delete(url)).status_code == 204
        assert (await nxt(s)).event == "unsubscribed"
        await publisher.publish(sid, "message.delta", {"text": "2"}, run_id="r1")
        assert await quiet(s, 0.4)
        # Nothing was acked: resubscribing without `from` resumes at the stored offset.
        assert (await client.put(url)).json()["offset"].endswith("_000000000000")
        sub = await nxt(s)
        assert sub.event == "subscribed" and sub.json()["offset"].endswith("_000000000000")
        assert seqs(await take(s, 2)) == [1, 2]
        # `from` replaces the stored offset (the client's snapshot offset).
        await client.put(url, json={"from": first})
        assert (await nxt(s)).event == "subscribed"
        assert seqs(await take(s, 1)) == [2]


async def test_reconnect_resumes_every_session_from_its_own_offset(
    gateways, publisher, client, sid
):
    a, b = gateways
    mux = await new_mux(client, a.url)
    sessions = [f"{sid}-{i}" for i in range(4)]
    for k, s_id in enumerate(sessions):
        for i in range(10 + k):
            await publisher.publish(s_id, "message.delta", {"text": str(i)}, run_id="r1")
        await client.put(f"{a.url}/v1/mux/{mux}/sessions/{s_id}", json={"from": "start"})
    processed: dict[str, list[int]] = {x: [] for x in sessions}
    async with sse(client, f"{a.url}/v1/mux/{mux}/events") as s:
        frames = await take(s, 4 + sum(10 + k for k in range(4)))
    for f in frames:
        if f.event == "message":
            env = f.json()
            processed[env["session_id"]].append(int(f.id.split("_")[1]))
    # The browser processed (and acked) a different prefix of each session.
    acks = {
        x: f"{f.id.split('_')[0]}_{3 + k:012d}"
        for k, (x, f) in enumerate(
            (x, next(f for f in frames if f.event == "message" and f.json()["session_id"] == x))
            for x in sessions
        )
    }
    assert (
        await client.post(f"{a.url}/v1/mux/{mux}/ack", json={"offsets": acks})
    ).status_code == 204
    state = (await client.get(f"{b.url}/v1/mux/{mux}")).json()["sessions"]
    assert {x: v["offset"] for x, v in state.items()} == acks
    for s_id in sessions:
        await publisher.publish(s_id, "message.delta", {"text": "new"}, run_id="r1")
    async with sse(client, f"{b.url}/v1/mux/{mux}/events") as s:
        total = sum(10 + k + 1 - (3 + k) for k in range(4))
        frames = [f for f in await take(s, 4 + total) if f.event == "message"]
        assert await quiet(s, 0.3)
    for k, s_id in enumerate(sessions):
        mine = [int(f.id.split("_")[1]) for f in frames if f.json()["session_id"] == s_id]
        assert mine == list(range(4 + k, 10 + k + 2)), s_id


async def test_second_attach_supersedes_and_errors(gateways, client, sid):
    a, b = gateways
    mux = await new_mux(client, a.url)
    async with (  # entered in order: the second attach supersedes the first
        sse(client, f"{a.url}/v1/mux/{mux}/events") as first,
        sse(client, f"{b.url}/v1/mux/{mux}/events"),
    ):
        closing = await nxt(first)
        assert closing.event == "close" and closing.json()["reason"] == "superseded"
    r = await client.get(f"{a.url}/v1/mux/m-doesnotexist/events")
    assert r.status_code == 404 and r.json()["code"] == "mux_not_found"
    r = await client.post(
        f"{a.url}/v1/mux/{mux}/ack", json={"offsets": {"never-seen": "deadbeef_000000000001"}}
    )
    assert r.status_code == 404 and r.json()["code"] == "session_not_subscribed"
    await client.put(f"{a.url}/v1/mux/{mux}/sessions/{sid}")
    r = await client.post(
        f"{a.url}/v1/mux/{mux}/ack", content=b'{"offsets": {"%s": "bad"}}' % sid.encode()
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_offset"
    r = await client.put(f"{a.url}/v1/mux/{mux}/sessions/{sid}", json={"from": "nope"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_offset"


async def test_resubscribing_while_streaming_never_stalls_the_stream(
    gateways, publisher, client, sid
):
    """Re-PUT a subscribed session over and over while a burst streams (a reload, a client
    re-syncing): each PUT restarts delivery at its offset; the one stream must keep flowing
    to the end of the log, never block behind a replaced session stream."""
    a, _ = gateways
    mux = await new_mux(client, a.url)
    url = f"{a.url}/v1/mux/{mux}/sessions/{sid}"
    last = ""
    async with sse(client, f"{a.url}/v1/mux/{mux}/events") as s:
        await client.put(url, json={"from": "live"})

        async def burst() -> None:
            for i in range(40):
                await publisher.publish_batch(
                    sid, [EventIn("message.delta", {"text": "x" * 200}, "r1") for _ in range(50)]
                )
                await asyncio.sleep(0.01 * (i % 3))

        producer = asyncio.create_task(burst())
        for _ in range(30):
            try:
                f = await nxt(s, timeout=5)
            except TimeoutError:
                break
            if f.event == "message":
                last = max(last, f.id)
            if last:
                await client.put(url, json={"from": last})
        await producer
        head = (await client.get(f"{a.url}/v1/sessions/{sid}")).json()["last_offset"]
        while last != head:
            f = await nxt(s, timeout=5)  # a stalled stream times out here
            if f.event == "message":  # a restart may resend what a client de-duplicates
                last = max(last, f.id)
