"""The Python viewer client (gateway.client) against real gateway processes and Redis.

A replica SIGKILLed or drained mid-stream: the client resumes on the other one with nothing
lost or repeated; resets (trimmed log, another epoch) are surfaced; an expiring token is
refreshed through the callable; runs are started, approved and cancelled through it. One
test uses a scripted transport to pin the de-duplication by offset and ``superseded``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.agent.publisher import EventIn, Publisher
from gateway.api.auth import mint
from gateway.client import Event, EventStream, GatewayClient, Reset, Superseded
from tests.conftest import FAST
from tests.support import Gateway, RedisServer, Worker

SECRET = "client-test-secret-" + "y" * 32


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


async def take(it: AsyncIterator[Event | Reset], n: int, timeout: float = 30.0) -> list[Any]:
    return [await asyncio.wait_for(anext(it), timeout) for _ in range(n)]


async def ticks(publisher: Publisher, sid: str, start: int, n: int) -> list[str]:
    return [await publisher.publish(sid, "vendor.tick", {"n": i}) for i in range(start, start + n)]


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas of our own: one of them is killed or drained."""
    a = Gateway(redis_server.url, **FAST)
    b = Gateway(redis_server.url, **FAST)
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.parametrize("how", ["sigkill", "drain"])
async def test_resumes_on_the_other_replica_with_nothing_lost_or_repeated(
    pair, publisher, sid, how
):
    a, b = pair
    async with GatewayClient([a.url, b.url]) as gc:
        offsets = await ticks(publisher, sid, 0, 20)
        async with gc.events(sid) as stream:
            it = aiter(stream)
            got = await take(it, 20)
            if how == "sigkill":
                a.proc.kill()
            else:
                a.proc.send_signal(signal.SIGTERM)
            offsets += await ticks(publisher, sid, 20, 10)  # while the replica goes away
            await asyncio.to_thread(a.proc.wait, 20)
            offsets += await ticks(publisher, sid, 30, 10)  # while the client reconnects
            got += await take(it, 20)
            offsets += await ticks(publisher, sid, 40, 5)  # live on the second replica
            got += await take(it, 5)
    assert [e.offset for e in got] == offsets
    assert [e.data["n"] for e in got] == list(range(45))
    assert all(isinstance(e, Event) and e.type == "vendor.tick" for e in got)
    assert stream.reasons[0] == ("dropped" if how == "sigkill" else "draining"), stream.reasons


async def test_reset_on_a_trimmed_log_then_the_stream_goes_on(gw, store, sid):
    small = Publisher(store, retention_maxlen=10)
    await small.publish(sid, "run.started", {"input": "long run"}, run_id="r1")
    async with GatewayClient(gw.url) as gc:
        cid = (await gc.create_connection(sid, "start"))["connection_id"]
        for i in range(10):
            await small.publish_batch(
                sid, [EventIn("message.delta", {"text": f"{i}.{j} "}, "r1") for j in range(100)]
            )
        async with gc.events(sid, connection_id=cid) as stream:
            it = aiter(stream)
            (reset,) = await take(it, 1)
            assert isinstance(reset, Reset) and reset.reason == "offset_trimmed"
            assert reset.snapshot == f"/v1/sessions/{sid}/snapshot"
            offset, state = await gc.snapshot(sid)
            assert offset == reset.offset and state["runs"][0]["text"].endswith("9.99 ")
            stream.skip_through(offset)
            nxt = await small.publish(sid, "run.completed", {}, run_id="r1")
            (ev,) = await take(it, 1)
            assert (ev.offset, ev.type, ev.run_id) == (nxt, "run.completed", "r1")


async def test_reset_on_an_offset_of_another_epoch(gw, publisher, sid):
    theirs = await ticks(publisher, sid + "-other", 0, 3)
    mine = await ticks(publisher, sid, 0, 3)
    async with GatewayClient(gw.url) as gc, gc.events(sid, from_=theirs[1]) as stream:
        it = aiter(stream)
        (reset,) = await take(it, 1)
        assert isinstance(reset, Reset) and reset.reason == "epoch_changed"
        assert reset.offset == mine[-1] == stream.offset
        nxt = await publisher.publish(sid, "vendor.tick", {"n": 3})
        assert (await take(it, 1))[0].offset == nxt


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(redis_server.url, jwt_secret=SECRET, heartbeat_interval=1.0)
    yield gw
    gw.stop()


async def test_an_expiring_token_is_refreshed_and_the_stream_resumes(secured, publisher, sid):
    minted: list[str] = []

    async def token() -> str:  # an async source, as a real token service would be
        minted.append(mint(SECRET, "bot", sessions=[sid], actions=["view"], ttl_s=3))
        return minted[-1]

    first = await publisher.publish(sid, "vendor.tick", {"n": 0})
    got: list[Event | Reset] = []
    async with GatewayClient(secured.url, token) as gc:
        stream = gc.events(sid)

        async def pump() -> None:
            async for ev in stream:
                got.append(ev)

        task = asyncio.create_task(pump())
        try:
            await until(lambda: len(got) == 1, what="the first event")
            await until(lambda: len(minted) >= 2, timeout=20, what="a token refresh")
            second = await publisher.publish(sid, "vendor.tick", {"n": 1})
            await until(lambda: len(got) == 2, what="the event after the refresh")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stream.aclose()
    assert [e.offset for e in got] == [first, second]
    assert "token_expired" in stream.reasons


async def test_start_approve_and_cancel_runs(gw, redis_server, sid):
    worker = Worker(redis_server.url, tokens_per_second=400)
    try:
        async with GatewayClient(gw.url) as gc, gc.events(sid) as stream:
            run1 = await gc.start_run(sid, "Please approve a search for offsets")
            types: list[str] = []
            async for ev in stream:
                assert isinstance(ev, Event)
                types.append(ev.type)
                if ev.type == "approval.requested":
                    await gc.approve(sid, ev.data["approval_id"])
                if ev.type == "run.completed":
                    break
            assert ev.run_id == run1 and types[0] == "run.started"
            assert "approval.resolved" in types and "message.delta" in types
            run2 = await gc.start_run(sid, "Please approve another search")
            async for ev in stream:
                assert isinstance(ev, Event)
                if ev.type == "approval.requested":  # the run now waits: cancel it
                    await gc.cancel(sid, run2)
                if ev.type.startswith("run.") and ev.type != "run.started":
                    break
            assert (ev.type, ev.run_id) == ("run.cancelled", run2)
    finally:
        worker.stop()


def scripted(script: list[tuple[str, str]]) -> tuple[httpx.MockTransport, list[dict[str, str]]]:
    """A transport answering each attach with the next body of ``script`` (a connection
    creation first); records the headers of every attach."""
    attaches: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                201, json={"connection_id": "c1", "offset": "x", "commit": "auto"}
            )
        attaches.append(dict(request.headers))
        body = script.pop(0)[1]
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler), attaches


def frame(seq: int, epoch: str = "0000abcd") -> str:
    off = f"{epoch}_{seq:012d}"
    return f'id: {off}\nevent: vendor.tick\ndata: {{"offset": "{off}", "type": "vendor.tick", "data": {{"n": {seq}}}}}\n\n'


@pytest.mark.parametrize("commit", ["auto", "manual"])
async def test_repeats_are_dropped_by_offset_and_superseded_ends_the_stream(commit):
    """Auto commit resumes with Last-Event-ID; manual commit resumes from the acknowledged
    (stored) offset, so the gateway replays what came after it: the repeats are dropped."""
    transport, attaches = scripted(
        [
            (
                "1st",
                "retry: 2000\n\n"
                + frame(1)
                + frame(2)
                + frame(2)
                + frame(1)
                + 'retry: 0\nevent: close\ndata: {"reason": "draining"}\n\n',
            ),
            (
                "2nd",
                frame(1)
                + frame(2)
                + frame(3)
                + frame(1)
                + frame(4)
                + 'event: close\ndata: {"reason": "superseded"}\n\n',
            ),
        ]
    )
    async with httpx.AsyncClient(transport=transport) as http:
        gc = GatewayClient("http://gw", http=http)
        stream: EventStream = gc.events("s1", commit=commit)
        seen: list[int] = []
        with pytest.raises(Superseded):
            async for ev in stream:
                assert isinstance(ev, Event)
                seen.append(ev.data["n"])
    assert seen == [1, 2, 3, 4]
    assert "last-event-id" not in attaches[0]
    resumed = attaches[1].get("last-event-id")
    assert resumed == ("0000abcd_000000000002" if commit == "auto" else None)
    assert stream.reasons == ["draining"]


async def test_reset_when_the_log_is_lost_mid_stream(gw, publisher, redis_server, sid):
    """Redis loses the session while the client reads it (its keys deleted, as a failover
    without persistence would): the next events are of a new epoch, announced by a reset."""
    before = await ticks(publisher, sid, 0, 3)
    async with GatewayClient(gw.url) as gc, gc.events(sid) as stream:
        it = aiter(stream)
        assert [e.offset for e in await take(it, 3)] == before
        keys = redis_server.cli("--scan", "--pattern", f"gw:{{{sid}}}:*").split()
        assert keys and redis_server.cli("DEL", *keys)
        batch = [EventIn("vendor.tick", {"n": n}, None) for n in (3, 4)]
        after = await publisher.publish_batch(sid, batch)  # one write: the reset follows both
        (reset,) = await take(it, 1)
        assert isinstance(reset, Reset) and reset.reason == "epoch_changed"
        assert reset.offset == after[-1] == stream.offset  # they are in the snapshot
        assert after[0].split("_")[0] != before[0].split("_")[0]
        nxt = await publisher.publish(sid, "vendor.tick", {"n": 5})
        assert (await take(it, 1))[0].offset == nxt


async def test_manual_commit_moves_only_by_ack_and_a_new_consumer_resumes_there(gw, publisher, sid):
    offs = await ticks(publisher, sid, 0, 5)
    async with GatewayClient(gw.url) as gc:
        async with gc.events(sid, commit="manual") as stream:
            it = aiter(stream)
            await take(it, 2)
            await stream.ack()  # processed two
            await take(it, 3)  # read three more, never acknowledged
        cid = stream.connection_id
        assert cid is not None
        conn = await gc.request("GET", f"/v1/sessions/{sid}/connections/{cid}")
        assert conn["offset"] == offs[1]
        async with gc.events(sid, connection_id=cid) as again:
            assert [e.offset for e in await take(aiter(again), 3)] == offs[2:]
