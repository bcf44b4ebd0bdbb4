"""AG-UI in, black box: ``POST /v1/sessions/{sid}/agui/events`` on a real gateway process and real
Redis, and ``gateway worker --agui-url`` relaying runs to a LangGraph agent served over AG-UI by
``ag-ui-langgraph`` (a real uvicorn process; the chat model is a scripted fake, no network).

The session log is read straight from Redis, so each test asserts what was stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.agent.publisher import Publisher, new_run_id
from gateway.api.auth import mint
from gateway.core.events import StoredEvent
from gateway.protocols.agui_in import SseParser, tool_args
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.agui_langgraph_app import BLOCKED_TEXT
from tests.conftest import FAST
from tests.support import Gateway, Proc, RedisServer, Worker, free_port, wait_until

PREFIX = "agui"
SECRET = "agui-ingest-secret-" + "x" * 32


@pytest.fixture(scope="module")
def gwa(redis_server: RedisServer) -> Iterator[Gateway]:
    """A gateway of its own key prefix: the relay worker below plays only its commands."""
    g = Gateway(redis_server.url, key_prefix=PREFIX, **FAST)
    yield g
    g.stop()


@pytest_asyncio.fixture(scope="module")
async def log_store(redis_server: RedisServer) -> AsyncIterator[Store]:
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    yield Store(redis, PREFIX)
    await redis.aclose()


async def log(store: Store, sid: str) -> list[StoredEvent]:
    return await store.sessions.read(sid, 0, 1000)


def types(evs: list[StoredEvent]) -> list[str]:
    return [e.type for e in evs]


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll an async condition until it holds (returns its value)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what or pred}")


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


def a_run(run_id: str, text: list[str]) -> list[dict[str, Any]]:
    """A whole AG-UI run: start, a streamed assistant message, a tool call, unmapped events."""
    start_input = {
        "threadId": "th-1",
        "runId": run_id,
        "messages": [{"id": "u1", "role": "user", "content": "what are offsets?"}],
        "state": {},
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    return [
        ev("RUN_STARTED", threadId="th-1", runId=run_id, input=start_input),
        ev("STEP_STARTED", stepName="think"),
        ev("REASONING_START", messageId="rs1"),
        ev("REASONING_MESSAGE_START", messageId="rs1", role="reasoning"),
        ev("REASONING_MESSAGE_CONTENT", messageId="rs1", delta="Let me look."),
        ev("REASONING_MESSAGE_END", messageId="rs1"),
        ev("REASONING_END", messageId="rs1"),
        ev("THINKING_TEXT_MESSAGE_CONTENT", delta=" Legacy thought."),
        ev("TOOL_CALL_START", toolCallId="c1", toolCallName="lookup", parentMessageId="m1"),
        ev("TOOL_CALL_ARGS", toolCallId="c1", delta='{"topic": '),
        ev("TOOL_CALL_ARGS", toolCallId="c1", delta='"offsets"}'),
        ev("TOOL_CALL_END", toolCallId="c1"),
        ev("TOOL_CALL_RESULT", messageId="t1", toolCallId="c1", content="notes"),
        ev("TEXT_MESSAGE_START", messageId="m1", role="assistant"),
        *[ev("TEXT_MESSAGE_CONTENT", messageId="m1", delta=t) for t in text],
        ev("TEXT_MESSAGE_END", messageId="m1"),
        ev("STATE_SNAPSHOT", snapshot={"step": 2}, rawEvent={"framework": "copy"}),
        ev("CUSTOM", name="progress", value={"pct": 100}),
        ev("RUN_FINISHED", threadId="th-1", runId=run_id, result={"ok": True}),
    ]


def sse_body(events: list[dict[str, Any]], nl: str = "\n") -> bytes:
    return "".join(f"data: {json.dumps(e)}{nl}{nl}" for e in events).encode()


async def post_events(
    client: httpx.AsyncClient, gw: Gateway, sid: str, body: Any, **headers: str
) -> httpx.Response:
    url = f"{gw.url}/v1/sessions/{sid}/agui/events"
    if isinstance(body, bytes | str) or hasattr(body, "__aiter__"):
        return await client.post(url, content=body, headers=headers)
    return await client.post(url, json=body, headers=headers)


async def test_a_json_array_is_stored_as_one_mapped_run(gwa, log_store, client, sid):
    r = await post_events(client, gwa, sid, a_run("agui-run-1", ["Offsets ", "are stored."]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["run_id"] == "agui-run-1"
    stored = await log(log_store, sid)
    assert [int(o.split("_")[1]) for o in body["offsets"]] == [e.seq for e in stored]
    assert types(stored) == [
        "run.started",
        "agui.raw",  # STEP_STARTED
        "reasoning.delta",
        "reasoning.delta",  # the legacy THINKING_TEXT_MESSAGE_CONTENT
        "tool.started",
        "tool.completed",
        "message.delta",
        "message.delta",
        "agui.raw",  # STATE_SNAPSHOT
        "agui.raw",  # CUSTOM
        "run.completed",
    ]
    assert {e.run_id for e in stored} == {"agui-run-1"}
    data = [json.loads(e.data) for e in stored]
    assert data[0]["input"] == "what are offsets?"
    assert data[2]["text"] + data[3]["text"] == "Let me look. Legacy thought."
    assert data[4] == {
        "tool_call_id": "c1",
        "name": "lookup",
        "args": {"topic": "offsets"},
        "parent_message_id": "m1",
    }
    assert data[5]["tool_call_id"] == "c1" and data[5]["output"] == "notes"
    assert "".join(d["text"] for d in data[6:8]) == "Offsets are stored."
    # Unmapped types are kept as the AG-UI event itself (minus the framework's rawEvent copy).
    assert data[1] == {"event": {"type": "STEP_STARTED", "stepName": "think"}}
    assert data[8] == {"event": {"type": "STATE_SNAPSHOT", "snapshot": {"step": 2}}}
    assert data[9] == {"event": {"type": "CUSTOM", "name": "progress", "value": {"pct": 100}}}
    assert data[10] == {"result": {"ok": True}}
    snap = (await client.get(f"{gwa.url}/v1/sessions/{sid}/snapshot")).json()
    run = snap["state"]["runs"][-1]
    assert run["status"] == "completed" and run["text"] == "Offsets are stored."

    # The run has ended: nothing attaches to it any more.
    late = [ev("TEXT_MESSAGE_CONTENT", messageId="m1", delta="late")]
    r = await post_events(client, gwa, sid, late)
    assert r.status_code == 409 and r.json()["code"] == "run_not_active"
    # Events after the terminal in the same body go to the ended run: refused, atomically.
    again = [
        ev("RUN_STARTED", threadId="th-1", runId="agui-run-2"),
        ev("RUN_FINISHED", threadId="th-1", runId="agui-run-2"),
        ev("TEXT_MESSAGE_CONTENT", messageId="m2", delta="after the end"),
    ]
    r = await post_events(client, gwa, sid, again)
    assert r.status_code == 409 and r.json()["code"] == "run_ended", r.text
    assert len(await log(log_store, sid)) == len(stored)


async def test_an_event_stream_body_is_stored_as_it_arrives(gwa, log_store, client, sid):
    # A run started by one request; the next request's RUN_STARTED names it, so it attaches
    # instead of starting a second run.
    run_id = f"r-stream-{sid}"
    r = await post_events(client, gwa, sid, [ev("RUN_STARTED", threadId=sid, runId=run_id)])
    assert r.status_code == 201 and r.json()["run_id"] == run_id
    first = [
        ev("RUN_STARTED", threadId=sid, runId=run_id),
        ev("TEXT_MESSAGE_CHUNK", messageId="m1", delta="Hello"),
    ]
    released = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        raw = sse_body(first, "\r\n") + b": a comment\r\n\r\n"
        yield raw[:17]  # split inside a line
        yield raw[17:]
        await released.wait()
        yield sse_body(
            [
                ev("TEXT_MESSAGE_CHUNK", delta=", world"),
                ev("TOOL_CALL_CHUNK", toolCallId="c9", toolCallName="search", delta='{"q":'),
                ev("TOOL_CALL_CHUNK", delta=' "x"}'),
                ev("RUN_FINISHED", threadId=sid, runId=run_id),
            ]
        )

    task = asyncio.create_task(
        post_events(client, gwa, sid, body(), **{"content-type": "text/event-stream"})
    )
    # The first chunk is stored while the request is still open.
    stored = await until(
        lambda: _with_type(log_store, sid, "message.delta"), what="the first delta"
    )
    assert not task.done()
    released.set()
    r = await task
    assert r.status_code == 201, r.text
    assert r.json()["run_id"] == run_id
    stored = await log(log_store, sid)
    assert types(stored) == [
        "run.started",
        "message.delta",
        "message.delta",
        "tool.started",
        "run.completed",
    ]
    data = [json.loads(e.data) for e in stored]
    assert data[0]["thread_id"] == sid  # the first request's run.started, not a second one
    assert data[1]["text"] + data[2]["text"] == "Hello, world"
    assert data[2]["message_id"] == "m1"  # a chunk continues the message before it
    assert data[3]["args"] == {"q": "x"} and data[3]["name"] == "search"

    # Events with no RUN_STARTED and no running run: 409.
    r = await post_events(
        client,
        gwa,
        sid,
        sse_body([ev("TEXT_MESSAGE_CONTENT", messageId="m", delta="x")]),
        **{"content-type": "text/event-stream"},
    )
    assert r.status_code == 409 and r.json()["code"] == "run_not_active"


async def _with_type(store: Store, sid: str, kind: str) -> list[StoredEvent]:
    return [e for e in await log(store, sid) if e.type == kind]


BAD_BODIES = [
    ({"type": "RUN_STARTED"}, "invalid_agui_body"),
    ([], "invalid_agui_body"),
    ([ev("NOT_AN_EVENT")], "unknown_agui_event_type"),
    ([ev("TEXT_MESSAGE_CONTENT", messageId="m")], "invalid_agui_event"),
    ([ev("RUN_STARTED", threadId="t")], "invalid_agui_event"),
    (["RUN_STARTED"], "invalid_agui_event"),
    ([{"type": {}}], "invalid_agui_event"),
    ([ev("TOOL_CALL_ARGS", toolCallId="c", delta="{}")], "agui_unknown_tool_call"),
    (
        [
            ev("RUN_STARTED", threadId="t", runId="r-incomplete"),
            ev("TOOL_CALL_START", toolCallId="c", toolCallName="f"),
        ],
        "agui_incomplete_tool_call",
    ),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
async def test_invalid_bodies_are_4xx_with_a_code_and_store_nothing(
    gwa, log_store, client, sid, body, code
):
    r = await post_events(client, gwa, sid, body)
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert await log(log_store, sid) == []


async def test_media_types_sizes_and_event_stream_errors(gwa, log_store, client, sid):
    r = await post_events(client, gwa, sid, b"not json", **{"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = await post_events(client, gwa, sid, b"[]", **{"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    many = [ev("STEP_STARTED", stepName="s")] * 501
    r = await post_events(client, gwa, sid, many)
    assert r.status_code == 413 and r.json()["code"] == "batch_too_large"
    stream = {"content-type": "text/event-stream"}
    r = await post_events(client, gwa, sid, b"data: {nope\n\n", **stream)
    assert r.status_code == 400 and r.json()["code"] == "invalid_agui_event"
    assert "event 0" in r.json()["message"]
    r = await post_events(client, gwa, sid, b'data: {"type": "RUN_STARTED"}\n\n', **stream)
    assert r.status_code == 400 and r.json()["code"] == "invalid_agui_event"
    assert await log(log_store, sid) == []


def test_the_body_is_described_in_openapi(gwa):
    schema = httpx.get(gwa.url + "/schema/openapi.json", timeout=10).json()
    op = schema["paths"]["/v1/sessions/{session_id}/agui/events"]["post"]
    content = op["requestBody"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    items = content["application/json"]["schema"]["items"]["oneOf"]
    assert "TEXT_MESSAGE_CONTENT" in json.dumps(items) and "$ref" not in json.dumps(items)
    assert "201" in op["responses"]


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Iterator[Gateway]:
    g = Gateway(redis_server.url, jwt_secret=SECRET, key_prefix=PREFIX)
    yield g
    g.stop()


async def test_the_publish_scope_guards_it(secured, client, sid):
    url = f"{secured.url}/v1/sessions/{sid}/agui/events"
    body = [ev("RUN_STARTED", threadId=sid, runId="r-auth")]

    def auth(*actions: str, sessions: tuple[str, ...] = ("*",)) -> dict[str, str]:
        token = mint(SECRET, "agent", sessions=list(sessions), actions=list(actions), ttl_s=60)
        return {"Authorization": f"Bearer {token}"}

    r = await client.post(url, json=body)
    assert r.status_code == 401
    r = await client.post(url, json=body, headers=auth("view", "command", "approve"))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await client.post(url, json=body, headers=auth("publish", sessions=("other-*",)))
    assert r.status_code == 403
    r = await client.post(url, json=body, headers=auth("publish"))
    assert r.status_code == 201 and r.json()["run_id"] == "r-auth"


# --- the worker relay -------------------------------------------------------------------------


class AgentServer(Proc):
    """An AG-UI agent app (``module:app``) under uvicorn on a free port, at ``/agent``."""

    def __init__(self, app: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/agent"
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        super().__init__(args, dict(os.environ), f"agent-{self.port}")
        wait_until(
            lambda: httpx.get(self.url, timeout=1).status_code in (404, 405),
            timeout=60,
            what=f"the agent {app}: {self.output()[-2000:]}",
        )


@pytest.fixture(scope="module")
def langgraph_agent() -> Iterator[AgentServer]:
    server = AgentServer("tests.agui_langgraph_app:app")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(redis_server: RedisServer, langgraph_agent: AgentServer) -> Iterator[Worker]:
    w = Worker(redis_server.url, "--agui-url", langgraph_agent.url, key_prefix=PREFIX)
    yield w
    w.stop()


async def start_run(client: httpx.AsyncClient, gw: Gateway, sid: str, text: str) -> str:
    r = await client.post(f"{gw.url}/v1/sessions/{sid}/runs", json={"input": text})
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


async def ended(store: Store, sid: str) -> list[StoredEvent]:
    return [
        e for e in await log(store, sid) if e.type.startswith("run.") and e.type != "run.started"
    ]


async def test_langgraph_runs_through_the_relay(gwa, log_store, relay, client, sid):
    run_id = await start_run(client, gwa, sid, "please use the tool")
    await until(lambda: ended(log_store, sid), what=f"the end of the run: {relay.output()}")
    stored = await log(log_store, sid)
    assert [e.type for e in stored if e.type in ("run.completed", "run.failed")] == [
        "run.completed"
    ], relay.output()
    assert types(stored).count("run.started") == 1  # the agent's RUN_STARTED is not re-published
    assert {e.run_id for e in stored} == {run_id}
    data = [(e.type, json.loads(e.data)) for e in stored]
    tool = [d for t, d in data if t == "tool.started"]
    assert [(t["tool_call_id"], t["name"], t["args"]) for t in tool] == [
        ("call-lookup-1", "lookup", {"topic": "offsets"})
    ]
    done = [d for t, d in data if t == "tool.completed"]
    assert [(d["tool_call_id"], d["output"]) for d in done] == [
        ("call-lookup-1", "notes about offsets")
    ]
    text = "".join(d["text"] for t, d in data if t == "message.delta")
    assert text == "Found: notes about offsets"
    # What LangGraph streams beyond our vocabulary is kept for AG-UI clients.
    raw = {d["event"]["type"] for t, d in data if t == "agui.raw"}
    assert {"STEP_STARTED", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT"} <= raw
    assert all("rawEvent" not in d["event"] for t, d in data if t == "agui.raw")
    snap = (await client.get(f"{gwa.url}/v1/sessions/{sid}/snapshot")).json()
    assert snap["state"]["runs"][-1]["text"] == "Found: notes about offsets"

    # A second turn of the same session (LangGraph thread = session id) plays too.
    await start_run(client, gwa, sid, "hello again")
    await until(lambda: _count_ends(log_store, sid, 2), what="the second run's end")
    texts = [
        json.loads(e.data)["text"] for e in await log(log_store, sid) if e.type == "message.delta"
    ]
    assert "".join(texts).endswith("You said: hello again")


async def test_the_relay_sends_the_clients_run_agent_input(gwa, log_store, relay, client, sid):
    """A command carrying the client's RunAgentInput (``agui``, as POST …/agui stores it) is
    what the agent gets, with the gateway's run id."""
    run_id = new_run_id()
    client_input = {
        "threadId": sid,
        "runId": "the-clients-own-run-id",
        "messages": [
            {"id": "u0", "role": "user", "content": "earlier question"},
            {"id": "a0", "role": "assistant", "content": "earlier answer"},
            {"id": "u1", "role": "user", "content": "from the AG-UI client"},
        ],
        "state": {},
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    command = {
        "kind": "run",
        "session_id": sid,
        "run_id": run_id,
        "input": "from the AG-UI client",
        "agui": json.dumps(client_input),
    }
    await Publisher(log_store).start_run(sid, command["input"], run_id=run_id, command=command)
    await log_store.commands.enqueue(command)
    await until(lambda: ended(log_store, sid), what=f"the run's end: {relay.output()}")
    assert [e.type for e in await ended(log_store, sid)] == ["run.completed"]
    assert await _text_is(log_store, sid, "You said: from the AG-UI client")
    assert {e.run_id for e in await log(log_store, sid)} == {run_id}


async def _count_ends(store: Store, sid: str, n: int) -> bool:
    return len(await ended(store, sid)) >= n


async def test_cancel_during_a_relayed_run_ends_it_once_as_cancelled(
    gwa, log_store, relay, client, sid
):
    run_id = await start_run(client, gwa, sid, "block after some text")
    # The agent has streamed its text and now waits forever inside the graph.
    await until(
        lambda: _text_is(log_store, sid, BLOCKED_TEXT), what=f"the streamed text: {relay.output()}"
    )
    r = await client.post(f"{gwa.url}/v1/sessions/{sid}/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    await until(lambda: ended(log_store, sid), what="the run's end")
    assert [e.type for e in await ended(log_store, sid)] == ["run.cancelled"]
    # The relay is free again: the next run plays to its end.
    await start_run(client, gwa, sid, "are you there?")
    await until(lambda: _count_ends(log_store, sid, 2), what="the next run's end")
    assert [e.type for e in await ended(log_store, sid)] == ["run.cancelled", "run.completed"]


async def _text_is(store: Store, sid: str, text: str) -> bool:
    deltas = [
        json.loads(e.data)["text"] for e in await log(store, sid) if e.type == "message.delta"
    ]
    return "".join(deltas) == text


async def test_an_unreachable_agent_fails_the_run_with_the_reason(redis_server, client, sid):
    prefix = "agui-down"
    g = Gateway(redis_server.url, key_prefix=prefix)
    dead = f"http://127.0.0.1:{free_port()}/agent"
    w = Worker(redis_server.url, "--agui-url", dead, key_prefix=prefix)
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    store = Store(redis, prefix)
    try:
        await start_run(client, g, sid, "hello")
        failed = await until(lambda: ended(store, sid), what=f"the failure: {w.output()}")
        assert [e.type for e in failed] == ["run.failed"]
        error = json.loads(failed[0].data)["error"]
        assert "unreachable" in error and dead in error, error
    finally:
        w.stop()
        g.stop()
        await redis.aclose()


async def test_a_pydantic_ai_agent_runs_through_the_relay(redis_server, client, sid):
    """tests/agui_pydantic_ai_app.py: the docs' snippet (AGUIAdapter.dispatch_request) on a
    FunctionModel that thinks, calls a tool and answers."""
    prefix = "agui-pa"
    server = AgentServer("tests.agui_pydantic_ai_app:app")
    g = Gateway(redis_server.url, key_prefix=prefix)
    w = Worker(redis_server.url, "--agui-url", server.url, key_prefix=prefix)
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    store = Store(redis, prefix)
    try:
        run_id = await start_run(client, g, sid, "what are offsets?")
        done = await until(lambda: ended(store, sid), what=f"the run's end: {w.output()}")
        assert [e.type for e in done] == ["run.completed"], w.output()
        stored = await log(store, sid)
        assert {e.run_id for e in stored} == {run_id}
        assert types(stored) == [
            "run.started",
            "reasoning.delta",
            "tool.started",
            "tool.completed",
            "message.delta",
            "message.delta",
            "run.completed",
        ]
        data = [json.loads(e.data) for e in stored]
        assert data[1]["text"] == "Looking it up."
        assert (data[2]["name"], data[2]["args"]) == ("lookup", {"topic": "offsets"})
        assert (data[3]["tool_call_id"], data[3]["output"]) == ("call-pa-1", "notes about offsets")
        assert data[4]["text"] + data[5]["text"] == "Found: notes about offsets"
        assert data[6] == {"outcome": {"type": "success"}}
    finally:
        w.stop()
        g.stop()
        server.stop()
        await redis.aclose()


def test_sse_parser_and_tool_args_edge_cases():
    p = SseParser()
    assert p.feed(b"data: a\r") == []  # maybe the first half of \r\n
    assert p.feed(b"\n\r\n") == ["a"]
    assert p.feed(b"event: x\nid: 1\ndata: b\ndata: c\n\n") == ["b\nc"]
    assert p.feed("data: \u00e9".encode()[:-1]) == []  # a character split across chunks
    assert p.feed("data: \u00e9".encode()[-1:] + b"\n\n") == ["\u00e9"]
    assert p.feed(b"data: tail") == [] and p.close() == ["tail"]
    assert tool_args("") == {} and tool_args('{"a": 1}') == {"a": 1}
    assert tool_args("[1]") == {"_value": [1]} and tool_args("{nope") == {"_raw": "{nope"}
