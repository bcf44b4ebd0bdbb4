"""Fast unit tests on pure code and the embedded fakeredis (the ``gateway demo`` default).
Redis behaviour itself is proven against a real redis-server in the other test modules."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from gateway.core import events, fold, frames, offsets
from gateway.core.events import StoredEvent
from gateway.live.hub import Subscriber
from gateway.settings import Settings
from gateway.store.sessions import envelope_json


def test_offsets_round_trip_and_order() -> None:
    off = offsets.parse("0a1b2c3d_000000000042")
    assert (off.epoch, off.seq) == ("0a1b2c3d", 42)
    assert str(off) == "0a1b2c3d_000000000042" and str(off.next()).endswith("43")
    assert offsets.format_offset("0a1b2c3d", 9) < offsets.format_offset("0a1b2c3d", 10)
    for bad in ["", "0a1b2c3d_42", "0A1B2C3D_000000000042", "0a1b2c3d-000000000042", "x" * 21]:
        with pytest.raises(offsets.InvalidOffset):
            offsets.parse(bad)
    assert len({offsets.new_epoch() for _ in range(100)}) == 100


def test_event_validation() -> None:
    typ, run, data, aux1, aux2 = events.encode(
        "approval.resolved", {"approval_id": "a1", "decision": "deny"}, "r1"
    )
    assert (typ, run, json.loads(data), aux1, aux2) == (
        "approval.resolved",
        "r1",
        {"approval_id": "a1", "decision": "deny"},
        "a1",
        "deny",
    )
    assert events.encode("vendor.custom", {"x": [1]}, None)[1] == ""
    with pytest.raises(events.InvalidEvent) as err:
        events.encode(
            "tool.completed",
            {"tool_call_id": "c", "output": "o", "is_error": False, "duration_ms": True},
            "r1",
        )
    assert err.value.code == "invalid_event_data"
    with pytest.raises(events.InvalidEvent):
        events.encode("run.failed", {"error": float("nan")}, "r1")
    with pytest.raises(events.InvalidEvent) as err:
        events.encode("message.delta", {"text": "x"}, "r\t1")
    assert err.value.code == "invalid_id"
    # Control characters never reach the live frame raw: JSON escapes them.
    assert "\n" not in events.encode("message.delta", {"text": "a\nb\tc"}, "r1")[2]


def test_live_frame_and_envelope() -> None:
    frame = frames.decode(
        'E\tdeadbeef\n7\t1000\tmessage.delta\tr1\t{"text":"a\\tb"}\n8\t1001\tsession.title\t\t{"title":"t"}'
    )
    assert isinstance(frame, frames.LiveEvents)
    epoch, evs = frame.epoch, frame.events
    assert epoch == "deadbeef" and [e.seq for e in evs] == [7, 8]
    env = json.loads(envelope_json('"s1"', epoch, evs[1]))
    assert env == {
        "offset": "deadbeef_000000000008",
        "session_id": "s1",
        "run_id": None,
        "type": "session.title",
        "data": {"title": "t"},
        "ts": 1001,
    }


def test_fold_matches_documented_shape() -> None:
    state = fold.empty_state("s")
    for typ, data in [
        ("run.started", {"input": "q"}),
        ("reasoning.delta", {"text": "hm"}),
        ("tool.started", {"tool_call_id": "c", "name": "n", "args": {}}),
        (
            "tool.completed",
            {"tool_call_id": "c", "output": "o", "is_error": True, "duration_ms": 3},
        ),
        ("approval.requested", {"approval_id": "a", "prompt": "p"}),
        ("message.delta", {"text": "he"}),
        ("message.delta", {"text": "llo"}),
    ]:
        fold.apply(state, typ, "r1", data)
    assert state["status"] == "running" and state["pending_approvals"][0]["approval_id"] == "a"
    fold.apply(state, "run.failed", "r1", {"error": "boom"})
    run = state["runs"][0]
    assert (run["text"], run["reasoning"], run["status"], run["error"]) == (
        "hello",
        "hm",
        "failed",
        "boom",
    )
    assert (
        run["tools"][0]["is_error"]
        and state["pending_approvals"] == []
        and state["status"] == "idle"
    )


async def test_subscriber_overflow_falls_back_instead_of_growing() -> None:
    sub = Subscriber(maxsize=10)
    sub.epoch = "e"
    ev = [StoredEvent(i, 0, "message.delta", "r", "{}") for i in range(1, 9)]
    assert sub.push("e", ev) and len(sub.events) == 8
    assert not sub.push("e", ev)  # would exceed 10: dropped, flagged
    assert sub.overflowed and len(sub.events) == 0
    assert sub.push("e", ev) and len(sub.events) == 0  # stays on catch-up until reset
    other = Subscriber(maxsize=10)
    other.epoch = "e"
    assert not other.push("f", ev[:1]) and other.overflowed  # another epoch: re-read the log


async def test_embedded_demo_runs_a_turn_on_fakeredis() -> None:
    app = create_app(
        Settings(redis_url=None, tokens_per_second=2000, key_prefix="unit", insecure=True),
        run_worker=True,
    )
    async with AsyncTestClient(app=app) as client:
        r = await client.post(
            "/v1/sessions/u1/runs", json={"input": "what is an epoch? approval please"}
        )
        assert r.status_code == 202
        run_id = r.json()["run_id"]
        for _ in range(200):
            snap = (await client.get("/v1/sessions/u1/snapshot")).json()
            if snap["state"]["pending_approvals"]:
                break
            await asyncio.sleep(0.02)
        aid = snap["state"]["pending_approvals"][0]["approval_id"]
        assert (
            await client.post(f"/v1/sessions/u1/approvals/{aid}", json={"decision": "approve"})
        ).status_code == 200
        for _ in range(300):
            snap = (await client.get("/v1/sessions/u1/snapshot")).json()
            if snap["state"]["status"] == "idle":
                break
            await asyncio.sleep(0.02)
        run = snap["state"]["runs"][0]
        assert run["run_id"] == run_id and run["status"] == "completed"
        assert run["tools"][0]["name"] == "search_docs" and run["text"]
        assert run["approvals"][0]["decision"] == "approve"
        assert (await client.get("/")).status_code == 200  # the viewer UI is served


def test_redactor_masks_known_secret_shapes_and_keeps_prose() -> None:
    from gateway.agent.redaction import MASK, Redactor

    r = Redactor(["acct-[0-9]{6}"])
    cases = {
        "key sk-ant-" + "x" * 30: "key " + MASK,
        "AKIAABCDEFGHIJKLMNOP": MASK,
        "Authorization: Bearer " + "t" * 24: "Authorization: Bearer " + MASK,
        "PASSWORD = 'hunter2hunter2'": "PASSWORD = '" + MASK + "'",
        "id acct-123456 ok": "id " + MASK + " ok",
        "talking about tokens, passwords and keys": "talking about tokens, passwords and keys",
    }
    for raw, want in cases.items():
        assert r.text(raw) == want, raw
    nested = r.value({"out": ["fine", {"ghp_" + "a" * 36: 1}], "n": 3})
    assert nested == {"out": ["fine", {MASK: 1}], "n": 3}


_SECRET_PARTS = [
    "sk-ant-" + "x" * 30, "AKIAABCDEFGHIJKLMNOP", "ghp_" + "a" * 36, "xoxb-1234567890ab",
    "AIza" + "b" * 35, "eyJabcdefghi.eyJabcdefghi.abcdefghij", "Bearer " + "t" * 20,
    "api_key='abcdefghij'", "-----BEGIN RSA PRIVATE KEY-----\nzz\n-----END RSA PRIVATE KEY-----",
    "acct-123456", "hello ", "sk-", " = ", "'", "\n", "token", "SECRET: abcdefghij",
    "Auth-Token=xyzxyzxyzxyz", "passwd=hunter2hunter2", "BEARER " + "Q" * 18, "ghs_" + "c" * 40,
    "sk-proj-" + "y" * 24, "Access_Token: 'abcdefghijk'", "xoxp-abcdefghijkl",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_SECRET_PARTS) | st.text(max_size=12), max_size=8))
def test_redactor_literal_shortcut_equals_every_rule_in_turn(parts: list[str]) -> None:
    """The shortcut (the built-in patterns run only on strings holding one of their
    literals) must mask exactly what applying every rule in turn masks; a literal missing
    from BUILTIN_LITERALS fails this."""
    from gateway.agent.redaction import Redactor

    r = Redactor(["acct-[0-9]{6}"])
    raw = "".join(parts)
    want = raw
    for pattern, repl in r.rules:
        want = pattern.sub(repl, want)
    assert r.text(raw) == want


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["SET", "CLIENT LIST", b"EVALSHA", b"XADD", "HSET"]),
    st.lists(
        st.text(max_size=20) | st.binary(max_size=20) | st.integers() | st.floats(allow_nan=False),
        max_size=12,
    ),
)
def test_hiredis_packing_writes_the_bytes_redis_py_writes(name: str | bytes, args: list) -> None:
    """The store's connections pack commands with hiredis: the same bytes as redis-py's own
    asyncio packer for every argument type a command takes."""
    from redis.asyncio.connection import Connection

    from gateway.store.packing import PackedConnection

    ours = b"".join(PackedConnection().pack_command(name, *args))
    theirs = b"".join(Connection().pack_command(name, *args))
    assert ours == theirs


def test_gc_pauses_are_timed_while_watched() -> None:
    import gc

    from gateway.metrics import Metrics

    m = Metrics()

    def collections() -> float:
        return (
            m.registry.get_sample_value("gateway_gc_pause_seconds_count", {"generation": "2"})
            or 0.0
        )

    m.watch_gc()
    try:
        gc.collect()
        assert collections() == 1
    finally:
        m.unwatch_gc()
    gc.collect()
    assert collections() == 1  # not watched any more


async def test_the_collector_keeps_long_lived_objects_frozen_and_frees_cycles_at_full() -> None:
    """collector.keep_frozen: survivors are frozen every interval (full collections skip
    them); at the full interval a cycle that became garbage among frozen objects is freed."""
    import gc
    import weakref

    from gateway.api import collector

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle, alive for now
    gone = weakref.ref(a)
    frozen_before = gc.get_freeze_count()
    task = asyncio.create_task(collector.keep_frozen(0.01, 0.0))
    try:
        while gc.get_freeze_count() <= frozen_before:  # frozen with the rest of what is alive
            await asyncio.sleep(0.01)
        del a, b
        gc.collect()
        assert gone() is not None  # a frozen cycle waits for a full collection
        task.cancel()
        task = asyncio.create_task(collector.keep_frozen(0.01, 0.01))
        while gone() is not None:  # the full collection unfreezes and frees it
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        gc.unfreeze()
