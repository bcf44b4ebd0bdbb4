"""AI SDK UI message stream egress (``/v1/chat``), black box: real redis-server, a real gateway
(with tokens) and a real demo worker; plus the encoder on its own, and the SDK's own client
(``ai``, tests/node/ai_sdk.test.mjs) run with Node's test runner against the same processes.

The demo worker's pace (``tokens_per_second``) leaves a run streaming long enough to act on it
mid-run; tests wait on what the stream delivered, never on time.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.api.auth import mint
from gateway.core.events import StoredEvent
from gateway.protocols.ai_sdk import UIMessageEncoder
from gateway.protocols.ai_sdk_messages import MessageBuilder, session_messages
from tests.support import ROOT, Gateway, RedisServer, Worker, wait_until

SECRET = "ai-sdk-secret-for-tests-" + "x" * 32
NODE_TEST = "tests/node/ai_sdk.test.mjs"
PREFIX = "aisdk"  # its own keys and command stream: only this module's worker plays its runs


def token(sessions: list[str], actions: list[str], sub: str = "alice") -> str:
    return mint(SECRET, sub, sessions=sessions, actions=actions, ttl_s=3600)


ALL = {"Authorization": f"Bearer {token(['*'], ['view', 'command', 'approve'])}"}


@pytest.fixture(scope="module")
def chat_gw(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(redis_server.url, jwt_secret=SECRET, heartbeat_interval=1.0, key_prefix=PREFIX)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    w = Worker(redis_server.url, tokens_per_second=25, key_prefix=PREFIX)
    yield w
    w.stop()


def chat_id() -> str:
    return "ai-" + uuid.uuid4().hex[:10]


def body(cid: str, text: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": text}]
    return {
        "id": cid,
        "messages": [{"id": "u1", "role": "user", "parts": parts}],
        "trigger": "submit-message",
    }


async def chunks(
    resp: httpx.Response, ids: dict[int, str] | None = None
) -> AsyncIterator[dict[str, Any] | str]:
    """The stream's chunks (``"[DONE]"`` as a string); asserts the framing. ``ids`` gets
    the ``id:`` (offset) of each chunk that carries one, by the chunk's index."""
    n, pending_id = 0, None
    async for line in resp.aiter_lines():
        if not line or line.startswith(":") or line.startswith("retry:"):
            continue
        if line.startswith("id: "):
            pending_id = line[4:]
            continue
        assert line.startswith("data: "), line
        data = line[6:]
        if pending_id is not None and ids is not None:
            ids[n] = pending_id
        n, pending_id = n + 1, None
        yield data if data == "[DONE]" else json.loads(data)


def check_sequence(seq: list[Any]) -> None:
    """Parts are opened before use and closed before anything else; one start; ends right."""
    assert seq[0]["type"] == "start" and seq[-1] == "[DONE]"
    assert [c for c in seq[:-1] if c == "[DONE]"] == []
    open_part: str | None = None
    for c in seq[:-1]:
        kind = c["type"]
        if kind in ("text-start", "reasoning-start"):
            assert open_part is None, seq
            open_part = c["id"]
        elif kind in ("text-delta", "reasoning-delta"):
            assert c["id"] == open_part
        elif kind in ("text-end", "reasoning-end"):
            assert c["id"] == open_part
            open_part = None
        elif not kind.startswith("data-"):
            assert open_part is None, f"{kind} while {open_part} is open"
    assert open_part is None
    assert sum(1 for c in seq[:-1] if c["type"] == "start") == 1


async def read_all(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[Any]:
    async with client.stream(method, url, headers=ALL, timeout=60, **kw) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
        return [c async for c in chunks(resp)]


# --- HTTP ----------------------------------------------------------------------------------------
async def test_post_chat_streams_one_run_then_done(chat_gw, worker, client):
    cid = chat_id()
    seq = await read_all(
        client, "POST", f"{chat_gw.url}/v1/chat", json=body(cid, "What is an offset?")
    )
    check_sequence(seq)
    types = [c["type"] for c in seq[:-1]]
    assert types[:2] == ["start", "start-step"]
    assert types[-2:] == ["finish-step", "finish"] and seq[-2]["finishReason"] == "stop"
    assert {
        "reasoning-start",
        "tool-input-available",
        "tool-output-available",
        "text-delta",
    } <= set(types)
    assert (
        types.index("reasoning-end")
        < types.index("tool-input-available")
        < types.index("text-start")
    )
    title = next(c for c in seq[:-1] if c["type"] == "data-session-title")
    assert title["transient"] is True and title["data"]["title"]
    run_id = seq[0]["messageId"]
    # Idle again: nothing to resume; the history holds the run.
    r = await client.get(f"{chat_gw.url}/v1/chat/{cid}/stream", headers=ALL)
    assert r.status_code == 204 and r.content == b""
    msgs = (await client.get(f"{chat_gw.url}/v1/chat/{cid}/messages", headers=ALL)).json()
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["parts"] == [{"type": "text", "text": "What is an offset?"}]
    assert msgs[1]["id"] == run_id
    text = "".join(c["delta"] for c in seq[:-1] if c["type"] == "text-delta")
    assert [p for p in msgs[1]["parts"] if p["type"] == "text"] == [
        {"type": "text", "text": text, "state": "done"}
    ]


async def test_resume_replays_from_run_start_while_active(chat_gw, worker, client):
    cid = chat_id()
    url = f"{chat_gw.url}/v1/chat"
    async with client.stream(
        "POST", url, json=body(cid, "How does reconnect work?"), headers=ALL, timeout=60
    ) as resp:
        live = chunks(resp)
        first = [await anext(live) for _ in range(5)]  # the run is streaming
        resumed = await read_all(client, "GET", f"{url}/{cid}/stream")
        rest = [c async for c in live]
    continuous = first + rest
    check_sequence(resumed)
    assert resumed == continuous  # a full replay, then live: the same chunks


async def test_last_event_id_resumes_after_that_offset(chat_gw, worker, client):
    cid = chat_id()
    url = f"{chat_gw.url}/v1/chat"
    ids: dict[int, str] = {}
    async with client.stream(
        "POST", url, json=body(cid, "How are offsets formatted?"), headers=ALL, timeout=60
    ) as resp:
        live = chunks(resp, ids)
        first = [await anext(live) for _ in range(6)]
        at = max(ids)  # the last chunk of an event received so far
        async with client.stream(
            "GET", f"{url}/{cid}/stream", headers={**ALL, "Last-Event-ID": ids[at]}, timeout=60
        ) as resumed:
            assert resumed.status_code == 200
            rest = [c async for c in chunks(resumed)]
        continuous = first + [c async for c in live]
    assert rest == continuous[at + 1 :]  # exactly what follows that offset
    offsets = [ids[i] for i in sorted(ids)]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    bad = await client.get(f"{url}/{cid}/stream", headers={**ALL, "Last-Event-ID": "nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_offset"


async def test_idle_and_unknown_chats_answer_204(chat_gw, client):
    r = await client.get(f"{chat_gw.url}/v1/chat/{chat_id()}/stream", headers=ALL)
    assert r.status_code == 204
    r = await client.post(f"{chat_gw.url}/v1/chat/{chat_id()}/stop", headers=ALL)
    assert r.status_code == 204
    r = await client.get(f"{chat_gw.url}/v1/chat/{chat_id()}/messages", headers=ALL)
    assert r.status_code == 200 and r.json() == []


async def test_stop_cancels_the_active_run(chat_gw, worker, client):
    cid = chat_id()
    url = f"{chat_gw.url}/v1/chat"
    async with client.stream(
        "POST", url, json=body(cid, "Describe the hub"), headers=ALL, timeout=60
    ) as resp:
        live = chunks(resp)
        seq = [await anext(live) for _ in range(3)]
        run_id = seq[0]["messageId"]
        r = await client.post(f"{url}/{cid}/stop?run_id=r-other", headers=ALL)
        assert r.status_code == 409 and r.json()["code"] == "run_not_active"  # a stale stop
        r = await client.post(f"{url}/{cid}/stop", params={"run_id": run_id}, headers=ALL)
        assert r.status_code == 202 and r.json() == {"run_id": run_id}
        seq += [c async for c in live]
    check_sequence(seq)
    assert seq[-2] == {"type": "abort", "reason": "cancelled"}
    assert (await client.post(f"{url}/{cid}/stop", headers=ALL)).status_code == 204
    # A new message starts a new run in the same chat; ``message`` alone is enough.
    only_last = {"id": cid, "message": body(cid, "And offsets?")["messages"][0]}
    again = await read_all(client, "POST", url, json=only_last)
    assert again[-2]["type"] == "finish" and again[0]["messageId"] != seq[0]["messageId"]
    msgs = (await client.get(f"{url}/{cid}/messages", headers=ALL)).json()
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 2


async def test_approval_pauses_the_stream_and_the_answer_continues_it(chat_gw, worker, client):
    cid = chat_id()
    url = f"{chat_gw.url}/v1/chat"
    first = await read_all(client, "POST", url, json=body(cid, "What is stored? I must approve."))
    check_sequence(first)
    request = next(c for c in first if isinstance(c, dict) and c["type"] == "tool-approval-request")
    assert first[-2] == {"type": "finish", "finishReason": "tool-calls"}
    # While it waits, the run is active: a resume replays it up to the same pause.
    assert await read_all(client, "GET", f"{url}/{cid}/stream") == first
    # A second POST while it runs is refused.
    r = await client.post(url, json=body(cid, "another"), headers=ALL)
    assert r.status_code == 409 and r.json()["code"] == "run_active"
    # The client's answer: its assistant message with the tool part approval-responded.
    msgs = (await client.get(f"{url}/{cid}/messages", headers=ALL)).json()
    part = next(p for p in msgs[1]["parts"] if p["type"] == "tool-approval")
    assert part["state"] == "approval-requested" and part["approval"]["id"] == request["approvalId"]
    part["state"] = "approval-responded"
    part["approval"]["approved"] = False
    answer = {"id": cid, "messages": msgs, "trigger": "submit-message", "messageId": msgs[1]["id"]}
    cont = await read_all(client, "POST", url, json=answer)
    assert [c["type"] for c in cont[:4]] == [
        "start",
        "start-step",
        "tool-approval-response",
        "tool-output-denied",
    ]
    assert cont[0]["messageId"] == first[0]["messageId"] and cont[-2]["type"] == "finish"
    assert cont[2] == {
        "type": "tool-approval-response",
        "approvalId": request["approvalId"],
        "approved": False,
    }
    # The same answer again (a resent history) is not an error: it was resolved already.
    again = await read_all(client, "POST", url, json=answer)
    assert again == cont
    # Answering via the approvals endpoint afterwards: 409, answered once.
    r = await client.post(
        f"{chat_gw.url}/v1/sessions/{cid}/approvals/{request['approvalId']}",
        json={"decision": "approve"},
        headers=ALL,
    )
    assert r.status_code == 409
    final = (await client.get(f"{url}/{cid}/messages", headers=ALL)).json()[1]
    built = MessageBuilder(first[0]["messageId"])
    for c in [
        *first[:-2],
        *cont[1:-1],
    ]:  # the client's view: a paused stream, then its continuation
        built.apply(c)
    assert final == built.message
    assert (
        next(p for p in final["parts"] if p["type"] == "tool-approval")["state"] == "output-denied"
    )


async def test_an_answer_after_the_run_ended_gets_its_end_not_another_pause(
    redis_server, worker, client
):
    # One event per catch-up read: the stream reaches the approval before it reads the end.
    gw = Gateway(redis_server.url, jwt_secret=SECRET, catchup_page=1, key_prefix=PREFIX)
    try:
        cid, url = chat_id(), f"{gw.url}/v1/chat"
        first = await read_all(client, "POST", url, json=body(cid, "Stop me at the approval"))
        assert first[-2] == {"type": "finish", "finishReason": "tool-calls"}
        assert (await client.post(f"{url}/{cid}/stop", headers=ALL)).status_code == 202
        wait_until(
            lambda: httpx.get(f"{url}/{cid}/stream", headers=ALL).status_code == 204,
            what="the run cancelled",
        )
        msgs = (await client.get(f"{url}/{cid}/messages", headers=ALL)).json()
        part = next(p for p in msgs[1]["parts"] if p["type"] == "tool-approval")
        assert part["state"] == "output-error"  # the history shows the run's end
        # A client still showing the request answers it.
        request = next(c for c in first[:-1] if c["type"] == "tool-approval-request")
        stale = {**part, "state": "approval-responded"}
        stale["approval"] = {"id": request["approvalId"], "approved": True}
        msgs[1]["parts"] = [stale]
        answer = {"id": cid, "messages": msgs, "trigger": "submit-message"}
        cont = await read_all(client, "POST", url, json=answer)
    finally:
        gw.stop()
    assert [c["type"] for c in cont[:-1]] == ["start", "tool-output-error", "abort"]
    assert cont[1]["toolCallId"] == request["toolCallId"]


async def test_bad_requests_are_4xx_with_codes(chat_gw, client):
    url = f"{chat_gw.url}/v1/chat"
    cases = [
        ({"id": "bad id!", "messages": [], "trigger": "submit-message"}, 400, "invalid_id"),
        ({"id": chat_id(), "messages": "x"}, 400, "invalid_messages"),
        ({"id": chat_id(), "messages": [], "trigger": "nope"}, 400, "invalid_trigger"),
        ({"id": chat_id(), "messages": []}, 400, "invalid_input"),
        (body(chat_id(), "   "), 400, "invalid_input"),
        (
            {
                "id": chat_id(),
                "messages": [
                    {
                        "id": "a",
                        "role": "assistant",
                        "parts": [
                            {
                                "type": "tool-approval",
                                "toolCallId": "x",
                                "state": "approval-responded",
                                "approval": {"id": "ap-unknown", "approved": True},
                            }
                        ],
                    }
                ],
            },
            404,
            "approval_not_found",
        ),
    ]
    for payload, status, code in cases:
        r = await client.post(url, json=payload, headers=ALL)
        assert (r.status_code, r.json()["code"]) == (status, code), payload
    r = await client.get(f"{url}/bad%20id/stream", headers=ALL)
    assert r.status_code == 400 and r.json()["code"] == "invalid_id"


async def test_tokens_and_scopes_guard_every_chat_endpoint(chat_gw, client):
    url = f"{chat_gw.url}/v1/chat"
    cid = "team-a-" + uuid.uuid4().hex[:8]
    viewer = {"Authorization": f"Bearer {token(['team-a-*'], ['view'], 'bob')}"}
    other = {"Authorization": f"Bearer {token(['team-b-*'], ['view', 'command'], 'eve')}"}
    commander = {"Authorization": f"Bearer {token(['team-a-*'], ['view', 'command'], 'carol')}"}
    for method, path, kw in [
        ("POST", "", {"json": body(cid, "hi")}),
        ("GET", f"/{cid}/stream", {}),
        ("POST", f"/{cid}/stop", {}),
        ("GET", f"/{cid}/messages", {}),
    ]:
        r = await client.request(method, url + path, **kw)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
        r = await client.request(method, url + path, headers=other, **kw)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", path
    for method, path, kw in [("POST", "", {"json": body(cid, "hi")}), ("POST", f"/{cid}/stop", {})]:
        r = await client.request(method, url + path, headers=viewer, **kw)
        assert r.status_code == 403, path  # viewing is not commanding
    assert (await client.get(f"{url}/{cid}/stream", headers=viewer)).status_code == 204
    assert (await client.get(f"{url}/{cid}/messages", headers=viewer)).status_code == 200
    answer = {
        "id": cid,
        "messages": [
            {
                "id": "a",
                "role": "assistant",
                "parts": [
                    {
                        "type": "tool-approval",
                        "toolCallId": "x",
                        "state": "approval-responded",
                        "approval": {"id": "ap-x", "approved": True},
                    }
                ],
            }
        ],
    }
    r = await client.post(url, json=answer, headers=commander)
    assert r.status_code == 403, "answering an approval needs the approve action"


async def test_a_draining_replica_ends_with_an_error_and_another_replica_resumes(
    redis_server, chat_gw, worker, client
):
    other = Gateway(redis_server.url, jwt_secret=SECRET, drain_spread=0, key_prefix=PREFIX)
    try:
        cid = chat_id()
        url = f"{other.url}/v1/chat"
        async with client.stream(
            "POST", url, json=body(cid, "How does a drain work?"), headers=ALL, timeout=60
        ) as resp:
            live = chunks(resp)
            got = [await anext(live) for _ in range(3)]
            other.proc.send_signal(signal.SIGTERM)
            got += [c async for c in live]
    finally:
        other.stop()
    assert "[DONE]" not in got
    assert got[-1]["type"] == "error" and "draining" in got[-1]["errorText"]
    resumed = await read_all(client, "GET", f"{chat_gw.url}/v1/chat/{cid}/stream")
    check_sequence(resumed)
    assert resumed[: len(got) - 1] == got[:-1]  # the replay starts with what was delivered


async def test_history_of_runs_trimmed_from_the_log_comes_from_the_snapshot(redis_server, client):
    # Its own key prefix: the module's worker does not take these runs.
    gw = Gateway(redis_server.url, jwt_secret=SECRET, key_prefix="aitrim")
    w = Worker(redis_server.url, key_prefix="aitrim", tokens_per_second=400, retention_after_run=5)
    try:
        cid = chat_id()
        streamed = []
        for text in ("What is an offset?", "And a replica?"):
            seq = await read_all(client, "POST", f"{gw.url}/v1/chat", json=body(cid, text))
            built = MessageBuilder(seq[0]["messageId"])
            for c in seq[:-1]:
                built.apply(c)
            streamed.append(built.message)

        def trimmed() -> bool:  # the worker compacts right after it published the terminal
            info = httpx.get(f"{gw.url}/v1/sessions/{cid}", headers=ALL).json()
            return bool(info["first_offset"] > info["run_first_offset"])

        wait_until(trimmed, what="both runs' starts trimmed from the log")
        msgs = (await client.get(f"{gw.url}/v1/chat/{cid}/messages", headers=ALL)).json()
    finally:
        w.stop()
        gw.stop()
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 2
    assert [msgs[0]["parts"][0]["text"], msgs[2]["parts"][0]["text"]] == [
        "What is an offset?",
        "And a replica?",
    ]
    assert [msgs[1], msgs[3]] == streamed  # a run without approvals is rebuilt exactly


# --- the encoder on its own ----------------------------------------------------------------------
def events(*specs: tuple[str, dict[str, Any]], run: str = "r-1") -> list[StoredEvent]:
    return [StoredEvent(i + 1, 0, t, run, json.dumps(d)) for i, (t, d) in enumerate(specs)]


RUN = events(
    ("run.started", {"input": "hi"}),
    ("message.delta", {"text": "a"}),
    ("tool.started", {"tool_call_id": "c1", "name": "t", "args": {"q": 1}}),
    ("approval.requested", {"approval_id": "ap1", "prompt": "ok?"}),
    ("vendor.note", {"n": 1}),
    ("approval.resolved", {"approval_id": "ap1", "decision": "approve"}),
    (
        "tool.completed",
        {"tool_call_id": "c1", "output": "out", "is_error": False, "duration_ms": 1},
    ),
    ("reasoning.delta", {"text": "r"}),
    ("message.delta", {"text": "b"}),
    ("run.completed", {}),
)


def encode(evs: list[StoredEvent], enc: UIMessageEncoder | None = None) -> list[dict[str, Any]]:
    enc = enc or UIMessageEncoder("r-1")
    return [c for ev in evs for c in enc.feed_event(ev)]


def test_encoder_maps_a_run_and_holds_events_behind_a_pending_approval():
    enc = UIMessageEncoder("r-1")
    upto = encode(RUN[:5], enc)  # the approval is pending: the vendor event is held back
    assert enc.awaiting == "ap1" and upto[-1] == {"type": "finish-step"}
    assert upto[-2] == {
        "type": "tool-approval-request",
        "approvalId": "ap1",
        "toolCallId": "c1",
        "reason": "ok?",
    }
    full = encode(RUN)
    assert [c["type"] for c in full] == [
        "start", "start-step", "text-start", "text-delta", "text-end", "tool-input-available",
        "tool-approval-request", "finish-step", "start-step", "tool-approval-response",
        "data-vendor.note", "tool-output-available", "reasoning-start", "reasoning-delta",
        "reasoning-end", "text-start", "text-delta", "text-end", "finish-step", "finish",
    ]  # fmt: skip
    assert full[: len(upto)] == upto


def test_a_continuation_sends_exactly_what_follows_the_pause():
    paused = encode(RUN[:4])
    cont_enc = UIMessageEncoder("r-1")
    cont_enc.continue_after(["ap1"])
    cont = encode(RUN, cont_enc)
    assert cont[0] == {"type": "start", "messageId": "r-1"}
    assert paused + cont[1:] == encode(RUN)
    # Applied as a client does, the paused stream plus its continuation equals the history.
    built = MessageBuilder("r-1")
    for c in paused + cont:
        built.apply(c)
    assert [built.message] == session_messages(RUN)[1:]


def test_run_end_closes_open_parts_and_tools():
    failed = encode(
        events(
            ("run.started", {"input": "x"}),
            ("tool.started", {"tool_call_id": "c1", "name": "t", "args": {}}),
            ("approval.requested", {"approval_id": "ap1", "prompt": "?"}),
            ("run.failed", {"error": "boom"}),
        )
    )
    # The approval closed the step; the open tool ends in error with the run.
    assert [c["type"] for c in failed[-5:]] == [
        "tool-approval-request", "finish-step", "tool-output-error", "error", "finish",
    ]  # fmt: skip
    assert failed[-2]["errorText"] == "boom" and failed[-1]["finishReason"] == "error"
    cancelled = encode(
        events(
            ("run.started", {"input": "x"}), ("message.delta", {"text": "a"}), ("run.cancelled", {})
        )
    )
    assert [c["type"] for c in cancelled[-3:]] == ["text-end", "finish-step", "abort"]
    # Events of other runs are not this message's; nothing follows the terminal.
    other = encode(
        [*events(("message.delta", {"text": "z"}), run="r-2"), *events(("run.completed", {}))]
    )
    assert [c["type"] for c in other] == ["finish"]


def test_messages_fold_runs_and_the_snapshot_fills_trimmed_ones():
    two = [*RUN, *[StoredEvent(ev.seq + 10, 0, ev.type, "r-2", ev.data) for ev in RUN[:2]]]
    msgs = session_messages(two)
    assert [(m["id"], m["role"]) for m in msgs] == [
        ("r-1-input", "user"), ("r-1", "assistant"), ("r-2-input", "user"), ("r-2", "assistant"),
    ]  # fmt: skip
    assert msgs[3]["parts"][-1] == {"type": "text", "text": "a", "state": "streaming"}
    trimmed = {
        "run_id": "r-0",
        "input": "old",
        "text": "t",
        "reasoning": "",
        "tools": [],
        "approvals": [],
    }
    msgs = session_messages(two[3:], [trimmed])  # r-1's start is gone: it is not in the log
    assert [m["id"] for m in msgs] == ["r-0-input", "r-0", "r-2-input", "r-2"]
    assert msgs[1]["parts"] == [
        {"type": "step-start"},
        {"type": "text", "text": "t", "state": "done"},
    ]


# --- the AI SDK's own client ---------------------------------------------------------------------
def test_ai_sdk_client(chat_gw, worker):
    """tests/node/ai_sdk.test.mjs: DefaultChatTransport, readUIMessageStream and AbstractChat
    (``ai``, the version pinned in tests/node/package-lock.json) against this gateway."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test.sh installs Node 22+)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 22, f"ai 7 needs Node 22 or later, found {version.stdout.strip()}"
    pkg = ROOT / "tests" / "node" / "node_modules" / "ai" / "package.json"
    if not pkg.is_file():
        pytest.fail("tests/node/node_modules/ai is missing: run `npm ci` in tests/node")
    env = {
        "PATH": str(shutil.which("node")).rsplit("/", 1)[0] + ":/usr/bin:/bin",
        "GATEWAY_URL": chat_gw.url,
        "GATEWAY_TOKEN": token(["ai-*"], ["view", "command", "approve"]),
    }
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", NODE_TEST],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    assert passed and int(passed.group(1)) == 4, out
    print(
        f"ai {json.loads(pkg.read_text())['version']} on Node {version.stdout.strip()}: {passed.group(0)}"
    )
