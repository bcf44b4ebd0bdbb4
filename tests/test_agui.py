"""AG-UI egress against a real gateway, a real Redis and the real demo worker: framing and
ids, a turn over ``POST …/agui``, a mid-run resume over ``GET …/agui`` that begins with the
run's ``RUN_STARTED``, approvals as interrupts answered through ``resume``, ``agui.raw``
passthrough, auth and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from ag_ui.core import RunAgentInput

from gateway.agent.publisher import EventIn, Publisher
from gateway.api.auth import mint
from gateway.core.events import StoredEvent
from gateway.protocols.agui_out import AguiEncoder
from gateway.store import Store
from tests.support import ROOT, Gateway, RedisServer, Worker, sse

SECRET = "agui-secret-for-tests-" + "x" * 32


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    # Slow enough that a run is still streaming when a test reads its first frames.
    w = Worker(redis_server.url, tokens_per_second=60)
    yield w
    w.stop()


def run_input(text: str, **extra: Any) -> dict[str, Any]:
    """A ``RunAgentInput`` as ``@ag-ui/client`` sends it (camelCase)."""
    body: dict[str, Any] = {
        "threadId": "thread-1",
        "runId": "r-" + uuid.uuid4().hex[:12],
        "state": {},
        "messages": [{"id": "u-" + uuid.uuid4().hex[:8], "role": "user", "content": text}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    body.update(extra)
    return body


class AguiFrames:
    """The raw SSE text of one AG-UI response and its frames (``id``, AG-UI event)."""

    def __init__(self) -> None:
        self.raw = ""
        self.frames: list[tuple[str | None, dict[str, Any] | None]] = []

    def feed(self, text: str) -> None:
        self.raw += text
        while "\n\n" in self.raw[self._cut :]:
            end = self.raw.index("\n\n", self._cut)
            block, self._cut = self.raw[self._cut : end], end + 2
            fid, data = None, None
            for line in block.split("\n"):
                if line.startswith("id: "):
                    fid = line[4:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if fid is not None or data is not None:
                self.frames.append((fid, data))

    _cut = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        return [d for _, d in self.frames if d is not None]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def last_id(self) -> str | None:
        return next((f for f, _ in reversed(self.frames) if f is not None), None)


async def read_all(resp: httpx.Response) -> AguiFrames:
    out = AguiFrames()
    async for chunk in resp.aiter_text():
        out.feed(chunk)
    return out


async def read_until(resp_iter: AsyncIterator[str], out: AguiFrames, pred: Any) -> None:
    while not pred(out):
        out.feed(await anext(resp_iter))


def text_of(events: list[dict[str, Any]]) -> dict[str, str]:
    """Message id → text, from TEXT_MESSAGE_CONTENT events."""
    texts: dict[str, str] = {}
    for e in events:
        if e["type"] == "TEXT_MESSAGE_CONTENT":
            texts[e["messageId"]] = texts.get(e["messageId"], "") + e["delta"]
    return texts


def check_pairing(events: list[dict[str, Any]]) -> None:
    """What ``@ag-ui/client``'s verifier checks: a run first, messages opened before content
    and closed before the run ends, nothing between runs."""
    open_text: set[str] = set()
    in_run = False
    for e in events:
        t = e["type"]
        if t == "RUN_STARTED":
            assert not in_run, events
            in_run = True
            continue
        assert in_run, f"{t} outside a run"
        if t == "TEXT_MESSAGE_START":
            open_text.add(e["messageId"])
        elif t == "TEXT_MESSAGE_CONTENT":
            assert e["messageId"] in open_text
        elif t == "TEXT_MESSAGE_END":
            open_text.remove(e["messageId"])
        elif t in ("RUN_FINISHED", "RUN_ERROR"):
            assert not open_text, f"{t} with open messages {open_text}"
            in_run = False


async def test_post_runs_a_turn_with_exact_framing_and_ids(
    gw: Gateway, worker, client, sid, store: Store
):
    body = run_input("How does reconnect resume from the stored offset?")
    url = f"{gw.url}/v1/sessions/{sid}/agui"
    async with client.stream("POST", url, json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        got = await read_all(resp)
    assert "\r" not in got.raw
    assert got.types[0] == "RUN_STARTED" and got.types[-1] == "RUN_FINISHED"
    first = got.events[0]
    assert first["runId"] == body["runId"] and first["threadId"] == sid
    assert first["input"]["messages"][0]["id"] == body["messages"][0]["id"]
    check_pairing(got.events)
    assert {"REASONING_START", "TOOL_CALL_START", "TOOL_CALL_RESULT"} <= set(got.types)
    assert "outcome" not in got.events[-1]  # success

    # One id per stored event, on the last frame it produced: exactly the log's offsets.
    async with sse(client, f"{gw.url}/v1/sessions/{sid}/events?from=start") as plain:
        stored = []
        while not stored or stored[-1].event != "run.completed":
            stored.append(await plain.next())
    # The offset is in the event too, for subscribers: on the last event of each stored
    # event that changes a client's state (a TOOL_CALL_ARGS rather than its TOOL_CALL_END).
    group: list[dict[str, Any]] = []
    for fid, data in got.frames:
        group += [data] if data is not None else []
        if fid is not None:
            carriers = [e["rawEvent"]["offset"] for e in group if "rawEvent" in e]
            changing = [e for e in group if not e["type"].endswith("_END")]
            assert carriers == ([fid] if changing else []), group
            assert not changing or changing[-1].get("rawEvent") == {"offset": fid}
            group = []
    ids = [f for f, _ in got.frames if f is not None]
    assert ids == [f.id for f in stored]
    # The id is on the last frame an event produced: for a text delta, its content frame.
    for (_, data), stored_ev in zip([f for f in got.frames if f[0]], stored, strict=True):
        if stored_ev.event == "message.delta":
            assert data is not None and data["type"] == "TEXT_MESSAGE_CONTENT"
            assert data["delta"] == stored_ev.json()["data"]["text"]
    full = "".join(f.json()["data"]["text"] for f in stored if f.event == "message.delta")
    assert list(text_of(got.events).values()) == [full]
    # The worker command carries the whole RunAgentInput, for an AG-UI relay worker.
    commands = await store.redis.xrevrange(store.commands._key, count=200)
    (command,) = [c for _, c in commands if c.get("run_id") == body["runId"]]
    assert json.loads(command["agui"]) == json.loads(
        RunAgentInput(**body).model_dump_json(by_alias=True)
    )
    assert command["input"] == body["messages"][0]["content"]


async def test_mid_run_resume_starts_with_run_started_and_continues_the_message(
    gw: Gateway, worker, client, sid
):
    body = run_input("What does the stored offset of a connection mean?")
    url = f"{gw.url}/v1/sessions/{sid}/agui"
    before = AguiFrames()
    async with client.stream("POST", url, json=body, timeout=60) as resp:
        chunks = resp.aiter_text()
        # Leave in the middle of the answer: after its third text delta.
        await read_until(
            chunks, before, lambda f: f.types.count("TEXT_MESSAGE_CONTENT") >= 3 and f.last_id
        )
    cursor = before.last_id
    assert before.frames[-1][0] == cursor  # a stored event's last frame carries its id
    after = AguiFrames()
    headers = {"Last-Event-ID": str(cursor)}
    async with client.stream("GET", url, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        chunks = resp.aiter_text()
        await read_until(chunks, after, lambda f: "RUN_FINISHED" in f.types)
        # The stream stays open across runs: the next turn arrives on it.
        second = run_input("And what is a reset?")
        started = await client.post(url, json=second, timeout=60)
        assert started.status_code == 200
        await read_until(chunks, after, lambda f: f.types.count("RUN_FINISHED") >= 2)
    resumed = after.events
    assert resumed[0]["type"] == "RUN_STARTED" and resumed[0]["runId"] == body["runId"]
    open_id = before.events[-1]["messageId"]
    assert resumed[1] == {"type": "TEXT_MESSAGE_START", "messageId": open_id, "role": "assistant"}
    check_pairing(resumed)
    # Before + after = the whole message, as one id, as a continuous reader sees it.
    async with client.stream("GET", url + "?from=start", timeout=60) as resp:
        whole = AguiFrames()
        await read_until(resp.aiter_text(), whole, lambda f: "RUN_FINISHED" in f.types)
    joined = text_of(before.events)
    joined[open_id] += text_of(resumed)[open_id]
    first_run = {k: v for k, v in text_of(whole.events).items() if k.startswith(body["runId"])}
    assert joined == first_run
    assert resumed[-1]["type"] == "RUN_FINISHED" and resumed[-1]["runId"] == second["runId"]


async def test_approval_is_an_interrupt_answered_through_resume(gw: Gateway, worker, client, sid):
    url = f"{gw.url}/v1/sessions/{sid}/agui"
    body = run_input("Search the docs, with approval, for the stored offset")
    async with client.stream("POST", url, json=body, timeout=60) as resp:
        asked = await read_all(resp)
    check_pairing(asked.events)
    end = asked.events[-1]
    assert end["type"] == "RUN_FINISHED" and end["outcome"]["type"] == "interrupt"
    (interrupt,) = end["outcome"]["interrupts"]
    assert interrupt["reason"] == "approval" and interrupt["message"]
    assert interrupt["responseSchema"]["required"] == ["approved"]

    bad = run_input("", resume=[{"interruptId": interrupt["id"], "status": "resolved"}])
    r = await client.post(url, json=bad)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_resume")
    unknown = run_input("", resume=[{"interruptId": "nope", "status": "cancelled"}])
    r = await client.post(url, json=unknown)
    assert (r.status_code, r.json()["code"]) == (404, "approval_not_found")

    answer = {"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": True}}
    resume = run_input("", messages=[], resume=[answer])
    async with client.stream("POST", url, json=resume, timeout=60) as resp:
        assert resp.status_code == 200
        went_on = await read_all(resp)
    assert went_on.types[0] == "RUN_STARTED" and went_on.events[0]["runId"] == body["runId"]
    assert went_on.types[-1] == "RUN_FINISHED" and "outcome" not in went_on.events[-1]
    check_pairing(went_on.events)
    assert "documentation" in "".join(text_of(went_on.events).values())
    snap = (await client.get(f"{gw.url}/v1/sessions/{sid}/snapshot")).json()
    assert snap["state"]["runs"][-1]["approvals"][0]["decision"] == "approve"

    again = await client.post(url, json=resume)
    assert (again.status_code, again.json()["code"]) == (409, "approval_already_resolved")


async def test_raw_events_pass_through_and_namespaced_types_are_custom(
    gw: Gateway, publisher: Publisher, client, sid
):
    raw = {"type": "STATE_SNAPSHOT", "snapshot": {"step": 2, "items": ["a"]}, "custom": None}
    run = await publisher.start_run(sid, "hello")
    await publisher.publish_batch(
        sid,
        [
            EventIn("agui.raw", {"event": raw}, run.run_id),
            EventIn("vendor.progress", {"pct": 50}, run.run_id),
            EventIn("message.delta", {"text": "hi"}, run.run_id),
            EventIn("run.completed", {}, run.run_id),
        ],
    )
    async with client.stream("GET", f"{gw.url}/v1/sessions/{sid}/agui", timeout=30) as resp:
        got = AguiFrames()
        await read_until(resp.aiter_text(), got, lambda f: "RUN_FINISHED" in f.types)
    assert got.events[1] == raw
    custom_id, custom = [f for f in got.frames if f[1] is not None][2]
    assert custom == {
        "type": "CUSTOM",
        "name": "vendor.progress",
        "value": {"pct": 50},
        "timestamp": custom["timestamp"],
        "rawEvent": {"offset": custom_id},  # the offset, where a subscriber can read it
    }
    assert got.events[0]["input"]["messages"][0] == {
        "id": f"{run.run_id}-user",
        "role": "user",
        "content": "hello",
    }


async def test_connection_id_resumes_from_the_stored_offset(
    gw: Gateway, publisher: Publisher, client, sid
):
    base = f"{gw.url}/v1/sessions/{sid}"
    run = await publisher.start_run(sid, "hello")
    await run.text_delta("one ")
    created = await client.post(f"{base}/connections", json={"from": "live"})
    cid = created.json()["connection_id"]
    await run.text_delta("two")
    await run.complete()
    async with client.stream("GET", f"{base}/agui?connection_id={cid}", timeout=30) as resp:
        got = AguiFrames()
        await read_until(resp.aiter_text(), got, lambda f: "RUN_FINISHED" in f.types)
    # Inside the run: its RUN_STARTED, the open message started again, then what followed.
    assert got.types == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert got.events[2]["delta"] == "two"
    r = await client.get(f"{base}/agui?connection_id=c-0000000000000000")
    assert (r.status_code, r.json()["code"]) == (404, "connection_not_found")


async def test_a_reset_is_a_comment_and_the_run_goes_on_with_a_run_started(
    gw: Gateway, publisher: Publisher, client, sid
):
    run = await publisher.start_run(sid, "hello")
    await run.text_delta("before ")
    url = f"{gw.url}/v1/sessions/{sid}/agui"
    other_epoch = {"Last-Event-ID": "0badcafe_000000000001"}
    async with client.stream("GET", url, headers=other_epoch, timeout=30) as resp:
        chunks = resp.aiter_text()
        got = AguiFrames()
        await read_until(chunks, got, lambda f: ": reset epoch_changed" in f.raw)
        assert got.events == []  # no run was open on this stream: nothing to end
        await run.text_delta("after")
        await run.complete()
        await read_until(chunks, got, lambda f: "RUN_FINISHED" in f.types)
    assert got.types == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert got.events[0]["runId"] == run.run_id and got.events[2]["delta"] == "after"


async def test_bad_input_is_4xx_with_a_code(gw: Gateway, publisher: Publisher, client, sid):
    url = f"{gw.url}/v1/sessions/{sid}/agui"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"threadId": "t"}).encode(), 400, "invalid_agui_input"),
        (json.dumps(run_input("   ")).encode(), 400, "invalid_input"),
        (json.dumps(run_input("x", messages=[])).encode(), 400, "invalid_input"),
    ]
    for content, status, code in cases:
        r = await client.post(url, content=content, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (status, code), content
    r = await client.get(url + "?from=garbage")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_offset")
    r = await client.post(f"{gw.url}/v1/sessions/bad%20id/agui", json=run_input("x"))
    assert (r.status_code, r.json()["code"]) == (400, "invalid_id")
    await publisher.start_run(sid, "busy")  # a run nobody plays keeps the session busy
    r = await client.post(url, json=run_input("x"))
    assert (r.status_code, r.json()["code"]) == (409, "run_active")


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Iterator[Gateway]:
    g = Gateway(redis_server.url, jwt_secret=SECRET, heartbeat_interval=1.0)
    yield g
    g.stop()


def bearer(sid: str, *actions: str) -> dict[str, str]:
    token = mint(SECRET, "alice", sessions=[sid], actions=list(actions), ttl_s=600)
    return {"Authorization": f"Bearer {token}"}


async def test_same_tokens_and_scopes_as_the_rest(secured: Gateway, client, sid):
    url = f"{secured.url}/v1/sessions/{sid}/agui"
    r = await client.post(url, json=run_input("hi"))
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    r = await client.get(url)
    assert r.status_code == 401
    r = await client.post(url, json=run_input("hi"), headers=bearer(sid, "view"))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    resume = run_input("", resume=[{"interruptId": "a", "status": "cancelled"}])
    r = await client.post(url, json=resume, headers=bearer(sid, "view", "command"))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = await client.post(url, json=run_input("hi"), headers=bearer("other", "view", "command"))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    async with client.stream("GET", url, headers=bearer(sid, "view"), timeout=30) as resp:
        assert resp.status_code == 200
    allowed = bearer(sid, "view", "command")
    async with client.stream("POST", url, json=run_input("hi"), headers=allowed) as resp:
        assert resp.status_code == 200
        got = AguiFrames()
        await read_until(resp.aiter_text(), got, lambda f: f.events)
        assert got.types[0] == "RUN_STARTED"


def test_ag_ui_client_node(gw: Gateway, worker: Worker) -> None:
    """``@ag-ui/client`` (pinned in tests/node) runs tests/node/agui.test.mjs: an unmodified
    ``HttpAgent`` runs a turn; a second instance attaches mid-run, another resumes from a
    saved offset through the documented subclass; each ends with the same message list;
    an approval interrupt is answered through ``resume``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test.sh installs it)")
    if not (ROOT / "tests/node/node_modules/@ag-ui/client/package.json").exists():
        pytest.fail("@ag-ui/client is not installed: run `npm ci` in tests/node")
    out = subprocess.run(
        [node, "--test", "--test-reporter=tap", "tests/node/agui.test.mjs"],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_URL": gw.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "# pass 3" in out.stdout and "# fail 0" in out.stdout, out.stdout[-3000:]


def encode_all(
    events: list[tuple[str, dict[str, Any]]], enc: AguiEncoder | None = None, run: str = "r1"
) -> list[dict[str, Any]]:
    enc = enc or AguiEncoder("s")
    out = []
    for seq, (typ, data) in enumerate(events, 1):
        frames = enc.encode(StoredEvent(seq, 0, typ, run, json.dumps(data)))
        out += [json.loads(e) for e in frames]
    return out


def test_encoder_ends_runs_as_the_protocol_says() -> None:
    """Pure encoder: failures are RUN_ERROR, cancels a cancelled outcome, a cancel while an
    approval waits opens the run again to end it (the client then drops its interrupt), a
    passed-through RUN_* event moves the open run, and a reset ends the open run."""
    failed = encode_all(
        [
            ("run.started", {"input": "x"}),
            ("message.delta", {"text": "a"}),
            ("run.failed", {"error": "boom"}),
        ]
    )
    assert [e["type"] for e in failed][-2:] == ["TEXT_MESSAGE_END", "RUN_ERROR"]
    assert failed[-1]["message"] == "boom"
    cancelled = encode_all(
        [
            ("run.started", {"input": "x"}),
            ("approval.requested", {"approval_id": "a1", "prompt": "ok?"}),
            ("run.cancelled", {}),
        ]
    )
    assert [e["type"] for e in cancelled] == [
        "RUN_STARTED",
        "RUN_FINISHED",
        "RUN_STARTED",
        "RUN_FINISHED",
    ]
    assert cancelled[1]["outcome"]["type"] == "interrupt"
    assert cancelled[3]["outcome"] == {"type": "cancelled"}
    enc = AguiEncoder("s")
    raw = encode_all(
        [
            ("agui.raw", {"event": {"type": "RUN_STARTED", "threadId": "t", "runId": "x"}}),
            ("agui.raw", {"event": {"type": "TEXT_MESSAGE_START", "messageId": "m"}}),
            ("agui.raw", {"event": {"type": "RUN_FINISHED", "threadId": "t", "runId": "x"}}),
        ],
        enc,
    )
    assert [e["type"] for e in raw] == ["RUN_STARTED", "TEXT_MESSAGE_START", "RUN_FINISHED"]
    assert encode_all([("session.title", {"title": "between runs"})], enc, run="") == []
    enc = AguiEncoder("s")
    encode_all([("run.started", {"input": "x"}), ("reasoning.delta", {"text": "hm"})], enc)
    assert [json.loads(e)["type"] for e in enc.preamble()] == [
        "RUN_STARTED",
        "REASONING_START",
        "REASONING_MESSAGE_START",
    ]
    assert [json.loads(e)["type"] for e in enc.abandon()] == [
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "RUN_ERROR",
    ]
    assert enc.preamble() == [] and enc.abandon() == []
