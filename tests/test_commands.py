"""Browser → worker commands through Redis (a real worker process), and the HTTP contract:
every error is JSON with a machine-readable code."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from gateway.agent.publisher import Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.support import Gateway, Worker, sse

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def worker(redis_server):
    w = Worker(redis_server.url, tokens_per_second=400, command_claim_idle=1)
    yield w
    w.stop()


async def collect_run(client, base: str, sid: str, run_id: str, timeout: float = 30) -> list[dict]:
    """Every envelope of ``run_id``, from the start of the log to its terminal event."""
    out: list[dict] = []
    async with sse(client, f"{base}/v1/sessions/{sid}/events?from=start") as s:
        while True:
            env = (await s.next(timeout)).json()
            if env["run_id"] == run_id:
                out.append(env)
                if env["type"] in ("run.completed", "run.failed", "run.cancelled"):
                    return out


async def test_run_streams_reasoning_tool_and_answer(gw, worker, client, sid):
    r = await client.post(
        f"{gw.url}/v1/sessions/{sid}/runs", json={"input": "How do offsets carry the epoch?"}
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    again = await client.post(f"{gw.url}/v1/sessions/{sid}/runs", json={"input": "second"})
    assert again.status_code == 409 and again.json()["code"] == "run_active"
    events = await collect_run(client, gw.url, sid, run_id)
    types = [e["type"] for e in events]
    assert types[0] == "run.started" and types[-1] == "run.completed"
    assert "reasoning.delta" in types and "tool.completed" in types and "message.delta" in types
    tool = next(e for e in events if e["type"] == "tool.completed")["data"]
    assert "docs/api.md" in tool["output"]  # a real search of the project's docs
    answer = "".join(e["data"]["text"] for e in events if e["type"] == "message.delta")
    assert "epoch" in answer.lower()
    meta = (await client.get(f"{gw.url}/v1/sessions/{sid}")).json()
    assert meta["status"] == "idle" and meta["title"]
    listed = (await client.get(f"{gw.url}/v1/sessions")).json()["sessions"]
    assert any(s["session_id"] == sid and s["status"] == "idle" for s in listed)


async def test_cancel_ends_exactly_that_run_once(gw, redis_server, client, sid):
    slow = Worker(redis_server.url, tokens_per_second=5)
    try:
        run_id = (
            await client.post(
                f"{gw.url}/v1/sessions/{sid}/runs", json={"input": "a slow answer about replicas"}
            )
        ).json()["run_id"]
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as s:
            while (await s.next(20)).event != "reasoning.delta":
                pass
            r = await client.post(f"{gw.url}/v1/sessions/{sid}/runs/{run_id}/cancel")
            assert r.status_code == 202
            terminals = []
            while not terminals:
                f = await s.next(20)
                if f.event.startswith("run.") and f.event != "run.started":
                    terminals.append(f.event)
            assert await s.nothing_for(0.8)
        assert terminals == ["run.cancelled"]
        r = await client.post(f"{gw.url}/v1/sessions/{sid}/runs/{run_id}/cancel")
        assert r.status_code == 409 and r.json()["code"] == "run_not_active"
        # Reattaching after the cancel replays to the single terminal and then idles.
        events = await collect_run(client, gw.url, sid, run_id)
        assert [e["type"] for e in events].count("run.cancelled") == 1
    finally:
        slow.stop()


async def test_approval_answered_once(gw, worker, client, sid):
    run_id = (
        await client.post(
            f"{gw.url}/v1/sessions/{sid}/runs",
            json={"input": "needs approval for the replica docs"},
        )
    ).json()["run_id"]

    async def pending() -> list:
        snap = (await client.get(f"{gw.url}/v1/sessions/{sid}/snapshot")).json()
        return snap["state"]["pending_approvals"]

    deadline = time.monotonic() + 20
    while not (p := await pending()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert p and p[0]["run_id"] == run_id
    aid = p[0]["approval_id"]
    url = f"{gw.url}/v1/sessions/{sid}/approvals/{aid}"
    bad = await client.post(url, json={"decision": "maybe"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_decision"
    ok, dup = await asyncio.gather(
        client.post(url, json={"decision": "approve"}), client.post(url, json={"decision": "deny"})
    )
    codes = sorted([ok.status_code, dup.status_code])
    assert codes == [200, 409], (ok.text, dup.text)
    loser = ok if ok.status_code == 409 else dup
    assert loser.json()["code"] == "approval_already_resolved"
    missing = await client.post(
        f"{gw.url}/v1/sessions/{sid}/approvals/nope", json={"decision": "approve"}
    )
    assert missing.status_code == 404 and missing.json()["code"] == "approval_not_found"
    events = await collect_run(client, gw.url, sid, run_id)
    resolved = [e for e in events if e["type"] == "approval.resolved"]
    assert len(resolved) == 1 and events[-1]["type"] == "run.completed"


async def test_crashed_workers_pending_command_is_reclaimed(redis_server, client, sid):
    """A worker that read a command and died leaves it pending; another one reclaims it."""
    # Own key prefix: the module's live worker must not see this command first.
    gw = Gateway(redis_server.url, key_prefix="reclaim")
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    store = Store(redis, prefix="reclaim")
    try:
        await store.commands.ensure_group()
        r = await client.post(
            f"{gw.url}/v1/sessions/{sid}/runs", json={"input": "reclaimed question about offsets"}
        )
        run_id = r.json()["run_id"]
        taken = await store.commands.read("crashed-worker", 10, 100)  # read, never acked
        assert [f["run_id"] for _, f in taken] == [run_id]
        rescuer = Worker(
            redis_server.url, key_prefix="reclaim", tokens_per_second=400, command_claim_idle=1
        )
        try:
            events = await collect_run(client, gw.url, sid, run_id, timeout=30)
        finally:
            rescuer.stop()
        assert events[-1]["type"] == "run.completed"
        assert [e["type"] for e in events].count("run.started") == 1
    finally:
        gw.stop()
        await redis.aclose()


async def test_http_publish_contract(gw, client, sid):
    url = f"{gw.url}/v1/sessions/{sid}/events"
    deep: object = "leaf"
    for _ in range(40):
        deep = [deep]
    one = await client.post(
        url, json={"type": "run.started", "run_id": "r1", "data": {"input": "hi"}}
    )
    assert one.status_code == 201 and len(one.json()["offsets"]) == 1
    batch = await client.post(
        url,
        json={
            "events": [
                {"type": "message.delta", "run_id": "r1", "data": {"text": "a"}},
                {"type": "acme.custom_thing", "run_id": "r1", "data": {"anything": [1, 2]}},
                {"type": "run.completed", "run_id": "r1"},
            ]
        },
    )
    assert batch.status_code == 201
    offs = batch.json()["offsets"]
    assert [int(o.split("_")[1]) for o in offs] == [2, 3, 4]
    cases = [
        ({"type": "Bad Type", "run_id": "r1"}, 400, "invalid_event_type"),
        ({"type": "message.delta", "run_id": "r1", "data": {"text": 5}}, 400, "invalid_event_data"),
        ({"type": "message.delta", "data": {"text": "x"}}, 400, "missing_run_id"),
        ({"type": "message.delta", "run_id": "bad id", "data": {"text": "x"}}, 400, "invalid_id"),
        ({"events": []}, 400, "invalid_request"),
        (
            {"events": [{"type": "message.delta", "run_id": "r", "data": {"text": "x"}}] * 501},
            413,
            "batch_too_large",
        ),
        (
            {
                "type": "approval.resolved",
                "run_id": "r2",
                "data": {"approval_id": "zz", "decision": "approve"},
            },
            409,
            "approval_not_found",
        ),
        # r1 has its terminal: nothing more of it is accepted, and it cannot start again.
        ({"type": "message.delta", "run_id": "r1", "data": {"text": "late"}}, 409, "run_ended"),
        ({"type": "run.started", "run_id": "r1", "data": {"input": "again"}}, 409, "run_ended"),
        (
            {"type": "message.delta", "run_id": "r1", "data": {"text": "x" * (1024 * 1024 + 1)}},
            413,
            "event_too_large",
        ),
        ({"type": "vendor.deep", "run_id": "r1", "data": {"a": deep}}, 400, "too_deep"),
    ]
    for body, status, code in cases:
        r = await client.post(url, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    r = await client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    # A body nested far beyond what the JSON parser recurses into: a 400, never a 500.
    r = await client.post(url, content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and r.json()["code"] == "too_deep"
    # A rejected batch stores nothing: the log still ends at 4.
    meta = (await client.get(f"{gw.url}/v1/sessions/{sid}")).json()
    assert meta["last_offset"] == offs[-1]


async def test_connection_lifecycle_and_errors(gw, client, sid):
    base = f"{gw.url}/v1/sessions/{sid}/connections"
    r = await client.post(base, json={"commit": "sometimes"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_commit"
    cid = (await client.post(base, json={"from": "start", "commit": "manual"})).json()[
        "connection_id"
    ]
    r = await client.post(f"{base}/{cid}/ack", content=b'{"offset": "nope"}')
    assert r.status_code == 400 and r.json()["code"] == "invalid_offset"
    assert (await client.delete(f"{base}/{cid}")).status_code == 204
    for method, url in [
        ("GET", f"{base}/{cid}"),
        ("GET", f"{base}/{cid}/events"),
        ("DELETE", f"{base}/{cid}"),
    ]:
        r = await client.request(method, url)
        assert r.status_code == 404 and r.json()["code"] == "connection_not_found"
    r = await client.get(f"{gw.url}/v1/sessions/never-created-{sid}")
    assert r.status_code == 404 and r.json()["code"] == "session_not_found"
    r = await client.get(f"{gw.url}/v1/no/such/route")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    created = await client.post(f"{gw.url}/v1/sessions", json={"session_id": sid + "-new"})
    assert created.status_code == 201 and created.json()["offset"].endswith("_000000000000")


async def test_operations_endpoints(gw, client):
    assert (await client.get(f"{gw.url}/healthz")).json() == {"status": "ok"}
    assert (await client.get(f"{gw.url}/readyz")).json() == {"status": "ready"}
    text = (await client.get(f"{gw.url}/metrics")).text
    for name in [
        "gateway_open_streams",
        "gateway_events_delivered_total",
        "gateway_catchup_reads_total",
        "gateway_reattaches_total",
        "gateway_redis_errors_total",
        "gateway_connections_created_total",
    ]:
        assert name in text, name


async def test_activity_feed_reports_status_changes(gw, publisher, client, sid):
    async with sse(client, f"{gw.url}/v1/activity") as feed:
        run = await publisher.start_run(sid, "hi")
        await run.set_title("A title")
        await run.complete()
        changes = []
        while len(changes) < 3:
            body = (await feed.next()).json()
            if body["session_id"] == sid:
                changes.append(body)
    assert [c.get("status") for c in changes] == ["running", None, "idle"]
    assert changes[1]["title"] == "A title"


async def test_worker_killed_mid_run_gets_one_interrupted_terminal(redis_server, client, sid):
    """SIGKILL the worker mid-run: its lease expires, exactly one run.failed {reason:
    interrupted} is published (visible live and on replay), and the reclaimed command is
    acked without replaying the run."""
    settings = {"key_prefix": "lease", "run_lease_ttl": 1.5, "command_claim_idle": 1}
    gw = Gateway(redis_server.url, **settings)
    victim = Worker(redis_server.url, tokens_per_second=10, **settings)
    try:
        run_id = (
            await client.post(
                f"{gw.url}/v1/sessions/{sid}/runs", json={"input": "offsets and epochs"}
            )
        ).json()["run_id"]
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as live:
            while (await live.next(20)).event != "message.delta":
                pass
            victim.stop(signal.SIGKILL)
            t0 = time.monotonic()
            rescuer = Worker(redis_server.url, tokens_per_second=400, **settings)
            try:
                while (f := await live.next(20)).event != "run.failed":
                    assert f.event in ("message.delta", "reasoning.delta"), f.event
                recovered = time.monotonic() - t0
                assert f.json()["data"]["reason"] == "interrupted"
                assert await live.nothing_for(2.5)  # no second terminal, no replayed run
            finally:
                rescuer.stop()
        events = await collect_run(client, gw.url, sid, run_id)
        terminals = [
            e["type"] for e in events if e["type"].startswith("run.") and e["type"] != "run.started"
        ]
        assert terminals == ["run.failed"]
        assert (await client.get(f"{gw.url}/v1/sessions/{sid}")).json()["status"] == "idle"
        print(f"worker SIGKILL -> interrupted terminal after {recovered:.2f}s (lease 1.5 s)")
    finally:
        victim.stop()
        gw.stop()


async def test_secrets_are_redacted_before_storage(redis_server, client, sid):
    """Tool output with credentials: neither the live stream, a replay, the snapshot nor the
    Redis log itself ever holds them. Extra patterns come from GATEWAY_REDACT_PATTERNS."""
    gw = Gateway(redis_server.url, redact_patterns='["acct-[0-9]{6}"]')
    secrets_ = [
        "sk-proj-" + "A1b2C3d4" * 4,
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "Bearer abcdefghijklmnopqrstuvwxyz012345",
        "acct-424242",
    ]
    output = (
        "env dump:\n" + "\n".join(f"value {s}" for s in secrets_) + "\npassword=correcthorsebattery"
    )
    try:
        url = f"{gw.url}/v1/sessions/{sid}/events"
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as live:
            r = await client.post(
                url,
                json={
                    "events": [
                        {"type": "run.started", "run_id": "r1", "data": {"input": "show env"}},
                        {
                            "type": "tool.started",
                            "run_id": "r1",
                            "data": {"tool_call_id": "c1", "name": "sh", "args": {}},
                        },
                        {
                            "type": "tool.completed",
                            "run_id": "r1",
                            "data": {
                                "tool_call_id": "c1",
                                "output": output,
                                "is_error": False,
                                "duration_ms": 1,
                            },
                        },
                    ]
                },
            )
            assert r.status_code == 201
            live_text = "".join(f.data for f in await live.take(3))
        replay = ""
        async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as again:
            replay = "".join(f.data for f in await again.take(3))
        snap = (await client.get(f"{gw.url}/v1/sessions/{sid}/snapshot")).text
        raw = redis_server.cli("XRANGE", f"gw:{{{sid}}}:log", "-", "+")
        for text in (live_text, replay, snap, raw):
            for secret in [*secrets_, "correcthorsebattery"]:
                assert secret.split("\n")[-1][-12:] not in text.replace("\\n", "\n"), (secret, text)
            assert "[REDACTED]" in text
        assert "env dump" in snap  # the rest of the output is kept
    finally:
        gw.stop()


async def test_retried_publish_with_same_producer_sequence_is_stored_once(store, sid):
    """Idempotent producer: a batch re-sent with its (producer id, sequence) — as the Redis
    client does after a lost reply — returns the first result and appends nothing."""
    ev = [("session.title", "", '{"title":"x"}', "x", "")]
    first = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 1))
    again = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 1))
    assert again == first
    # Concurrent batches of one producer may arrive out of order: both are kept, once each.
    third = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 3))
    second = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 2))
    assert await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 2)) == second
    other = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p2", 1))
    assert [first.first_seq, third.first_seq, second.first_seq, other.first_seq] == [1, 2, 3, 4]
    assert [e.seq for e in await store.sessions.read(sid, 0, 100)] == [1, 2, 3, 4]
    # Concurrent publishes of one producer may wait for a pooled connection in any order:
    # a sequence older than the 32 batches remembered is a batch that never ran, so it is kept.
    for n in range(4, 40):
        await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", n))
    late = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 1_000_000))
    straggler = await store.sessions.publish(sid, ev, maxlen=1000, producer=("p1", 40))
    assert straggler.first_seq == late.first_seq + 1


async def test_producer_window_remembers_the_newest_32_batches_in_any_arrival_order(store, sid):
    """The publish script's idempotency window under a seeded shuffle: batches of one
    producer arrive out of order (neighbours swapped, as pooled connections reorder them);
    afterwards a retry of any of the 32 highest sequences returns its first result and
    appends nothing, and the window stays bounded."""
    import random

    rng = random.Random(14)
    ev = [("session.title", "", '{"title":"x"}', "x", "")]
    order = list(range(1, 81))
    for i in range(0, len(order) - 1, 2):
        if rng.random() < 0.4:
            order[i], order[i + 1] = order[i + 1], order[i]
    first = {}
    for q in order:
        first[q] = await store.sessions.publish(sid, ev, maxlen=1000, producer=("pw", q))
    stored = len(await store.sessions.read(sid, 0, 1000))
    assert stored == 80
    for q in range(49, 81):
        assert await store.sessions.publish(sid, ev, maxlen=1000, producer=("pw", q)) == first[q]
    assert len(await store.sessions.read(sid, 0, 1000)) == stored  # nothing appended
    window = await store.redis.hget(store.sessions.key(sid, "producers"), "pw")
    assert [int(e.split()[0]) for e in window.split(";")] == list(range(49, 81))


async def test_a_late_retry_finds_its_result_while_its_sequence_is_the_low_water_mark(store, sid):
    """The publisher sends its oldest unanswered sequence with every batch: the script keeps
    results from there on, so a call retried after the producer's other callers published
    far more than 32 batches is still answered from its first result. Without the mark
    (the window of 32) its result was forgotten and the retry appended it again."""
    ev = [("session.title", "", '{"title":"x"}', "x", "")]
    slow = await store.sessions.publish(sid, ev, maxlen=1000, producer=("lw", 1), producer_low=1)
    for q in range(2, 102):  # others publish while call 1 waits out a restart
        await store.sessions.publish(sid, ev, maxlen=1000, producer=("lw", q), producer_low=1)
    retried = await store.sessions.publish(sid, ev, maxlen=1000, producer=("lw", 1), producer_low=1)
    assert retried == slow
    assert len(await store.sessions.read(sid, 0, 1000)) == 101
    # Once call 1 is answered the mark moves on, and what lies below it is forgotten.
    await store.sessions.publish(sid, ev, maxlen=1000, producer=("lw", 102), producer_low=90)
    window = await store.redis.hget(store.sessions.key(sid, "producers"), "lw")
    assert [int(e.split()[0]) for e in window.split(";")] == list(range(90, 103))


async def test_stored_offset_beyond_the_log_resets_instead_of_409(gw, store, client, sid):
    """A consumer's stored offset past the log's end can only mean Redis lost events the
    viewer saw (a failover without persistence): the stream says so with a reset."""
    pub = Publisher(store)
    first = await pub.publish(sid, "session.title", {"title": "a"})
    r = await client.post(f"{gw.url}/v1/sessions/{sid}/connections", json={"from": "start"})
    cid = r.json()["connection_id"]
    epoch = first.split("_")[0]
    await store.consumers.commit(sid, cid, f"{epoch}_000000000009", 60, forward_only=False)
    async with sse(client, f"{gw.url}/v1/sessions/{sid}/connections/{cid}/events") as s:
        frame = await s.next()
    assert frame.event == "reset" and frame.json()["reason"] == "offset_ahead"
    assert frame.id == first


async def test_finished_run_is_compacted_into_the_snapshot(gw, store, client, sid):
    """Once a run ends its state is folded into the stored snapshot and the log keeps only
    its last events; an older offset resets to that snapshot; the session gets an idle TTL."""
    from gateway.agent.publisher import EventIn

    pub = Publisher(store, keep_after_run=50, session_ttl_s=3600)
    run = await pub.start_run(sid, "compact me")
    batch = [EventIn("message.delta", {"text": f"w{i} "}, run.run_id) for i in range(300)]
    first = await pub.publish_batch(sid, batch)
    await run.complete()
    meta = await store.sessions.meta(sid)
    assert meta is not None and meta.seq == 302
    assert meta.first_seq == meta.seq - 49  # exactly the last 50 events are kept
    snap = (await client.get(f"{gw.url}/v1/sessions/{sid}/snapshot")).json()
    assert snap["offset"].endswith(f"_{meta.seq:012d}")
    text = "".join(f"w{i} " for i in range(300))
    assert (
        snap["state"]["runs"][-1]["text"] == text
        and snap["state"]["runs"][-1]["status"] == "completed"
    )
    old = first[10]  # long trimmed: the viewer is told, and pointed at the snapshot
    async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from={old}") as s:
        frame = await s.next()
    assert frame.event == "reset" and frame.json()["reason"] == "offset_trimmed"
    ttl = int(await store.redis.pttl(f"gw:{{{sid}}}:meta"))
    assert 0 < ttl <= 3_600_000
