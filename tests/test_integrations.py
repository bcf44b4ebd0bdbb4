"""Framework adapters played by an in-process worker against a real redis-server and a real
gateway process, offline: pydantic-ai with ``FunctionModel``, the OpenAI Agents SDK with its
``agents.testing.ScriptedModel``. Each test starts runs through the HTTP API (with
``gateway.client``) and asserts the session's log as viewers read it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.agent.worker import Agent, Worker
from gateway.client import Event, GatewayClient
from gateway.settings import Settings

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


@contextlib.asynccontextmanager
async def playing(agent: Agent, store: Any, publisher: Any, redis_url: str) -> AsyncIterator[None]:
    """An in-process worker playing runs with ``agent`` (drained on exit)."""
    worker = Worker(store, publisher, Settings(redis_url=redis_url), agent)
    task = asyncio.create_task(worker.run_forever())
    try:
        yield
    finally:
        worker.begin_drain()
        await asyncio.wait_for(task, 30)


async def run_log(gc: GatewayClient, sid: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's events (type, data), read from the start of the session to its terminal."""
    out: list[tuple[str, dict[str, Any]]] = []
    async with gc.events(sid, from_="start") as stream:
        async for ev in stream:
            assert isinstance(ev, Event)
            if ev.run_id == run_id:
                out.append((ev.type, ev.data))
                if ev.type in TERMINAL:
                    return out
    raise AssertionError("the stream ended")


def squash(log: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    """Consecutive deltas of one type joined (how a viewer renders them); tool durations
    dropped (they are timings)."""
    out: list[tuple[str, Any]] = []
    for type_, data in log:
        if type_.endswith(".delta") and out and out[-1][0] == type_:
            out[-1] = (type_, out[-1][1] + data["text"])
        elif type_.endswith(".delta"):
            out.append((type_, data["text"]))
        else:
            out.append((type_, {k: v for k, v in data.items() if k != "duration_ms"}))
    return out


# --- pydantic-ai ---------------------------------------------------------------------------


def pydantic_agent(seen: list[list[Any]], hold: asyncio.Event | None = None) -> Any:
    from pydantic_ai import Agent as PAIAgent
    from pydantic_ai.messages import ToolReturnPart
    from pydantic_ai.models.function import (
        AgentInfo,
        DeltaThinkingPart,
        DeltaToolCall,
        FunctionModel,
    )

    async def stream(messages: list[Any], info: AgentInfo) -> AsyncIterator[Any]:
        seen.append(messages)
        returned = [
            p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)
        ]
        if not returned:
            yield {0: DeltaThinkingPart(content="The user wants ")}
            yield {0: DeltaThinkingPart(content="the time; I'll ask the clock.")}
            yield {1: DeltaToolCall(name="clock", json_args='{"zone": ', tool_call_id="call-1")}
            yield {1: DeltaToolCall(json_args='"UTC"}')}
            return
        for piece in ("It is ", "12:00 ", "in ", returned[-1].content, "."):
            yield piece
            if hold is not None and piece == "12:00 ":
                await hold.wait()  # a model that stalls: only a cancel ends the run

    agent = PAIAgent(FunctionModel(stream_function=stream))

    @agent.tool_plain
    def clock(zone: str) -> str:
        """The time in a zone."""
        return zone

    return agent


async def test_pydantic_ai_text_reasoning_and_a_tool(gw, store, publisher, redis_server, sid):
    from gateway.integrations.pydantic_ai import PydanticAIAgent

    seen: list[list[Any]] = []
    adapter = PydanticAIAgent(pydantic_agent(seen))
    async with (
        playing(adapter, store, publisher, redis_server.url),
        GatewayClient(gw.url) as gc,
    ):
        run1 = await gc.start_run(sid, "What time is it?")
        log = await run_log(gc, sid, run1)
        assert squash(log) == [
            ("run.started", {"input": "What time is it?"}),
            ("session.title", {"title": "What time is it?"}),
            ("reasoning.delta", "The user wants the time; I'll ask the clock."),
            ("tool.started", {"tool_call_id": "call-1", "name": "clock", "args": {"zone": "UTC"}}),
            ("tool.completed", {"tool_call_id": "call-1", "output": "UTC", "is_error": False}),
            ("message.delta", "It is 12:00 in UTC."),
            ("run.completed", {}),
        ]
        assert sum(t == "message.delta" for t, _ in log) >= 4  # streamed, not one block
        assert sum(t == "reasoning.delta" for t, _ in log) == 2
        # A second turn sees the first one as history.
        run2 = await gc.start_run(sid, "And now?")
        assert squash(await run_log(gc, sid, run2))[-2:] == [
            ("message.delta", "It is 12:00 in UTC."),
            ("run.completed", {}),
        ]
        _, state = await gc.snapshot(sid)
    first_call_of_run2 = seen[2]
    texts = [getattr(p, "content", None) for m in first_call_of_run2 for p in m.parts]
    assert texts[:3] == ["What time is it?", "It is 12:00 in UTC.", "And now?"]
    assert [r["status"] for r in state["runs"]] == ["completed", "completed"]


async def test_pydantic_ai_cancel_stops_a_stalled_model(gw, store, publisher, redis_server, sid):
    from gateway.integrations.pydantic_ai import pydantic_ai_worker

    hold = asyncio.Event()  # never set
    worker = pydantic_ai_worker(
        pydantic_agent([], hold), store, publisher, Settings(redis_url=redis_server.url)
    )
    task = asyncio.create_task(worker.run_forever())
    try:
        async with GatewayClient(gw.url) as gc:
            run_id = await gc.start_run(sid, "What time is it?")
            async with gc.events(sid, from_="start") as stream:
                async for ev in stream:
                    assert isinstance(ev, Event)
                    if ev.type == "message.delta" and ev.data["text"] == "12:00 ":
                        await gc.cancel(sid, run_id)
                    if ev.type in TERMINAL:
                        break
            assert (ev.type, ev.run_id) == ("run.cancelled", run_id)
    finally:
        worker.begin_drain()
        await asyncio.wait_for(task, 30)


# --- OpenAI Agents SDK ---------------------------------------------------------------------


def sdk_agent(*steps: Any) -> Any:
    from agents import Agent as SDKAgent
    from agents import function_tool, set_tracing_disabled
    from agents.testing import ScriptedModel

    set_tracing_disabled(True)  # offline: no trace export

    @function_tool
    def clock(zone: str) -> str:
        """The time in a zone."""
        return f"12:00 {zone}"

    @function_tool
    def broken(reason: str) -> str:
        """A tool that fails."""
        raise RuntimeError(reason)

    return SDKAgent(name="clerk", model=ScriptedModel(steps), tools=[clock, broken])


def tool_step() -> Any:
    from agents.testing import ModelStep, function_call
    from openai.types.responses.response_reasoning_item import ResponseReasoningItem, Summary

    thought = Summary(text="The user wants the time.", type="summary_text")
    return ModelStep(
        output=[
            ResponseReasoningItem(id="rs-1", summary=[thought], type="reasoning"),
            function_call("clock", {"zone": "UTC"}, call_id="call-1"),
            function_call("broken", {"reason": "no disk"}, call_id="call-2"),
        ]
    )


def answer(*pieces: str) -> Any:
    """An assistant message of several text parts: each streams as its own delta."""
    from agents.testing import ModelStep
    from openai.types.responses import ResponseOutputMessage, ResponseOutputText

    parts = [ResponseOutputText(text=p, type="output_text", annotations=[]) for p in pieces]
    message = ResponseOutputMessage(
        id="msg-1", type="message", role="assistant", status="completed", content=parts
    )
    return ModelStep(output=[message])


async def test_openai_agents_text_reasoning_and_tools(gw, store, publisher, redis_server, sid):
    from gateway.integrations.openai_agents import TOOL_ERROR_PREFIX, OpenAIAgentsAgent

    agent = sdk_agent(tool_step(), answer("It is ", "12:00 ", "in UTC."), answer("Still ", "12."))
    async with (
        playing(OpenAIAgentsAgent(agent), store, publisher, redis_server.url),
        GatewayClient(gw.url) as gc,
    ):
        run1 = await gc.start_run(sid, "What time is it?")
        log = await run_log(gc, sid, run1)
        run2 = await gc.start_run(sid, "And now?")
        log2 = await run_log(gc, sid, run2)
    squashed = squash(log)
    assert squashed[:5] == [
        ("run.started", {"input": "What time is it?"}),
        ("session.title", {"title": "What time is it?"}),
        ("reasoning.delta", "The user wants the time."),
        ("tool.started", {"tool_call_id": "call-1", "name": "clock", "args": {"zone": "UTC"}}),
        (
            "tool.started",
            {"tool_call_id": "call-2", "name": "broken", "args": {"reason": "no disk"}},
        ),
    ]
    # The SDK runs both tools concurrently: their completions come in either order.
    completed = {d["tool_call_id"]: d for t, d in squashed[5:7] if t == "tool.completed"}
    assert completed["call-1"] == {
        "tool_call_id": "call-1",
        "output": "12:00 UTC",
        "is_error": False,
    }
    assert completed["call-2"]["is_error"] is True
    assert completed["call-2"]["output"].startswith(TOOL_ERROR_PREFIX)
    assert squashed[7:] == [("message.delta", "It is 12:00 in UTC."), ("run.completed", {})]
    assert sum(t == "message.delta" for t, _ in log) == 3
    assert squash(log2)[-2:] == [("message.delta", "Still 12."), ("run.completed", {})]
    # The second run saw the first turn as history.
    second = agent.model.calls[2].input
    assert [(i["role"], i["content"]) for i in second] == [
        ("user", "What time is it?"),
        ("assistant", "It is 12:00 in UTC."),
        ("user", "And now?"),
    ]


async def test_openai_agents_cancel_stops_a_stalled_model(gw, store, publisher, redis_server, sid):
    from agents.testing import ModelStep

    from gateway.integrations.openai_agents import openai_agents_worker

    hold = asyncio.Event()  # never set: the model stalls until the run is cancelled

    async def stall(call: Any) -> Any:
        await hold.wait()

    agent = sdk_agent(tool_step(), ModelStep.respond(stall))
    worker = openai_agents_worker(agent, store, publisher, Settings(redis_url=redis_server.url))
    task = asyncio.create_task(worker.run_forever())
    try:
        async with GatewayClient(gw.url) as gc:
            run_id = await gc.start_run(sid, "What time is it?")
            done: set[str] = set()
            async with gc.events(sid, from_="start") as stream:
                async for ev in stream:
                    assert isinstance(ev, Event)
                    if ev.type == "tool.completed":
                        done.add(ev.data["tool_call_id"])
                        if len(done) == 2:  # the model is now called again, and stalls
                            await gc.cancel(sid, run_id)
                    if ev.type in TERMINAL:
                        break
            assert (ev.type, ev.run_id) == ("run.cancelled", run_id)
    finally:
        worker.begin_drain()
        await asyncio.wait_for(task, 30)


# --- approvals -----------------------------------------------------------------------------


async def drive(gc: GatewayClient, sid: str, text: str, decision: str) -> list[tuple[str, Any]]:
    """Start a run, answer its approval requests with ``decision``, return its squashed log."""
    run_id = await gc.start_run(sid, text)
    log: list[tuple[str, dict[str, Any]]] = []
    async with gc.events(sid, from_="run") as stream:
        async for ev in stream:
            assert isinstance(ev, Event)
            if ev.run_id != run_id:
                continue
            log.append((ev.type, ev.data))
            if ev.type == "approval.requested":
                await gc.approve(sid, ev.data["approval_id"], decision)  # type: ignore[arg-type]
            if ev.type in TERMINAL:
                break
    return squash(log)


async def test_pydantic_ai_tool_approval(gw, store, publisher, redis_server, sid):
    from pydantic_ai import Agent as PAIAgent
    from pydantic_ai.messages import ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

    from gateway.integrations.pydantic_ai import PydanticAIAgent

    async def stream(messages: list[Any], info: AgentInfo) -> AsyncIterator[Any]:
        returned = [p for m in messages[-1:] for p in m.parts if isinstance(p, ToolReturnPart)]
        if not returned:
            call = DeltaToolCall(name="delete", json_args='{"path": "/tmp/x"}')
            yield {0: DeltaToolCall(**{**call.__dict__, "tool_call_id": f"del-{len(messages)}"})}
            return
        yield "Deleted." if returned[0].outcome == "success" else "Kept."

    agent = PAIAgent(FunctionModel(stream_function=stream))

    @agent.tool_plain(requires_approval=True)
    def delete(path: str) -> str:
        """Delete a file."""
        return f"deleted {path}"

    async with (
        playing(PydanticAIAgent(agent, title=False), store, publisher, redis_server.url),
        GatewayClient(gw.url) as gc,
    ):
        approved = await drive(gc, sid, "Delete /tmp/x", "approve")
        denied = await drive(gc, sid, "Delete /tmp/x again", "deny")
    start = (
        "tool.started",
        {"tool_call_id": "del-1", "name": "delete", "args": {"path": "/tmp/x"}},
    )
    prompt = 'Allow the agent to call delete({"path": "/tmp/x"})?'
    assert approved == [
        ("run.started", {"input": "Delete /tmp/x"}),
        start,
        ("approval.requested", {"approval_id": "del-1", "prompt": prompt}),
        ("approval.resolved", {"approval_id": "del-1", "decision": "approve"}),
        (
            "tool.completed",
            {"tool_call_id": "del-1", "output": "deleted /tmp/x", "is_error": False},
        ),
        ("message.delta", "Deleted."),
        ("run.completed", {}),
    ]
    assert [t for t, _ in denied] == [t for t, _ in approved]
    done = denied[4][1]
    assert done["is_error"] is True and "denied" in done["output"]
    assert denied[-2] == ("message.delta", "Kept.")


async def test_openai_agents_tool_approval(gw, store, publisher, redis_server, sid):
    from agents import Agent as SDKAgent
    from agents import function_tool, set_tracing_disabled
    from agents.testing import ScriptedModel, function_call

    from gateway.integrations.openai_agents import OpenAIAgentsAgent

    set_tracing_disabled(True)

    @function_tool(needs_approval=True)
    def delete(path: str) -> str:
        """Delete a file."""
        return f"deleted {path}"

    model = ScriptedModel(
        [
            [function_call("delete", {"path": "/tmp/x"}, call_id="call-9")],
            answer("Deleted."),
            [function_call("delete", {"path": "/tmp/x"}, call_id="call-10")],
            answer("Kept."),
        ]
    )
    agent = SDKAgent(name="clerk", model=model, tools=[delete])
    async with (
        playing(
            OpenAIAgentsAgent(agent, with_history=False, title=False),
            store,
            publisher,
            redis_server.url,
        ),
        GatewayClient(gw.url) as gc,
    ):
        approved = await drive(gc, sid, "Delete /tmp/x", "approve")
        denied = await drive(gc, sid, "Delete /tmp/x again", "deny")
    prompt = 'Allow the agent to call delete({"path": "/tmp/x"})?'
    assert approved == [
        ("run.started", {"input": "Delete /tmp/x"}),
        ("tool.started", {"tool_call_id": "call-9", "name": "delete", "args": {"path": "/tmp/x"}}),
        ("approval.requested", {"approval_id": "call-9", "prompt": prompt}),
        ("approval.resolved", {"approval_id": "call-9", "decision": "approve"}),
        (
            "tool.completed",
            {"tool_call_id": "call-9", "output": "deleted /tmp/x", "is_error": False},
        ),
        ("message.delta", "Deleted."),
        ("run.completed", {}),
    ]
    assert denied[-2:] == [("message.delta", "Kept."), ("run.completed", {})]
    assert ("approval.resolved", {"approval_id": "call-10", "decision": "deny"}) in denied
    rejected = next(d for t, d in denied if t == "tool.completed")
    assert rejected == {
        "tool_call_id": "call-10",
        "output": "The user denied it.",
        "is_error": True,
    }


async def test_a_handed_back_run_skips_what_the_log_already_holds():
    """A draining worker hands a run back; the next one plays the framework again from the
    input. The emitter skips the text, reasoning and tool calls already in the log."""
    from types import SimpleNamespace

    from gateway.integrations import Emitter

    published: list[tuple[str, Any]] = []

    async def record(kind: str, *args: Any, **kw: Any) -> None:
        published.append((kind, args[0] if len(args) == 1 else args))

    run = SimpleNamespace(
        text_delta=lambda t: record("text", t),
        reasoning_delta=lambda t: record("reasoning", t),
        tool_started=lambda *a: record("tool.started", *a),
        tool_completed=lambda i, *a, **kw: record("tool.completed", i),
    )
    prior = {
        "text": "It is 12",
        "reasoning": "Look it up.",
        "tools": [{"tool_call_id": "c1", "status": "completed"}, {"tool_call_id": "c2"}],
    }
    emit = Emitter(SimpleNamespace(prior=prior, run=run))  # type: ignore[arg-type]
    await emit.reasoning_delta("Look ")
    await emit.reasoning_delta("it up.")
    for tid in ("c1", "c2", "c3"):
        await emit.tool_started(tid, "clock", {})
        await emit.tool_completed(tid, "ok", False)
    for piece in ("It ", "is 1", "2:00", " UTC."):
        await emit.text_delta(piece)
    assert published == [
        ("tool.completed", "c2"),
        ("tool.started", ("c3", "clock", {})),
        ("tool.completed", "c3"),
        ("text", ":00"),
        ("text", " UTC."),
    ]
    # A different answer is published from the first piece that differs.
    published.clear()
    emit = Emitter(SimpleNamespace(prior={"text": "It is 12"}, run=run))  # type: ignore[arg-type]
    for piece in ("It ", "was", " late."):
        await emit.text_delta(piece)
    assert published == [("text", "was"), ("text", " late.")]


ECHO_AGENT = """
from pydantic_ai import Agent
from pydantic_ai.models.function import FunctionModel


async def echo(messages, info):
    for word in messages[-1].parts[-1].content.split():
        yield word + " "


agent = Agent(FunctionModel(stream_function=echo))
"""


async def test_worker_process_plays_runs_and_drains_on_sigterm(gw, redis_server, sid, tmp_path):
    """``python -m gateway.integrations echo_agent:agent`` (run_worker in its own process)
    plays a run, then drains and exits 0 on SIGTERM."""
    import os
    import signal
    import sys

    from tests.support import ROOT, Proc

    (tmp_path / "echo_agent.py").write_text(ECHO_AGENT)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    }
    args = [sys.executable, "-m", "gateway.integrations", "echo_agent:agent"]
    proc = Proc(args, env, "echo-worker")
    try:
        async with GatewayClient(gw.url) as gc:
            run_id = await gc.start_run(sid, "say it back")
            log = await run_log(gc, sid, run_id)
        assert squash(log)[1:] == [
            ("session.title", {"title": "say it back"}),
            ("message.delta", "say it back "),
            ("run.completed", {}),
        ]
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0, proc.output()
    finally:
        proc.stop()


def test_adapter_for_tells_the_frameworks_apart():
    from agents import Agent as SDKAgent
    from pydantic_ai import Agent as PAIAgent
    from pydantic_ai.models.test import TestModel

    from gateway.integrations.__main__ import adapter_for
    from gateway.integrations.openai_agents import OpenAIAgentsAgent
    from gateway.integrations.pydantic_ai import PydanticAIAgent

    assert isinstance(adapter_for(PAIAgent(TestModel())), PydanticAIAgent)
    assert isinstance(adapter_for(SDKAgent(name="a")), OpenAIAgentsAgent)
    custom = PydanticAIAgent(PAIAgent(TestModel()), with_history=False)
    assert adapter_for(custom) is custom
    with pytest.raises(TypeError):
        adapter_for(object())
