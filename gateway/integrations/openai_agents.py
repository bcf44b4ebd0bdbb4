"""OpenAI Agents SDK: play an ``agents.Agent`` as a gateway worker.

:class:`OpenAIAgentsAgent` implements ``gateway.agent.worker.Agent``: each run command is
played with ``Runner.run_streamed(agent, input)`` and ``stream_events()`` is published as
our events (tested with openai-agents 0.24):

================================================================  ===========================
Agents SDK stream event                                           gateway event
================================================================  ===========================
``raw_response_event`` ``response.output_text.delta``             ``message.delta``
``raw_response_event`` ``response.reasoning_summary_text.delta``  ``reasoning.delta``
``raw_response_event`` ``response.reasoning_text.delta``          ``reasoning.delta``
``run_item_stream_event`` ``tool_called``                         ``tool.started`` (``args``:
                                                                  the JSON arguments)
``run_item_stream_event`` ``tool_output``                         ``tool.completed``
                                                                  (``is_error``: the SDK's
                                                                  default tool-error text, or
                                                                  a denied approval)
an interruption (a tool with ``needs_approval``)                  ``approval.requested``; the
                                                                  answer approves or rejects
                                                                  it, and the run resumes
                                                                  from its ``RunState``
the stream's end                                                  ``run.completed`` (a
                                                                  non-text ``final_output``
                                                                  with no text streamed: its
                                                                  JSON as a ``message.delta``)
an exception                                                      ``run.failed``
a browser's cancel                                                ``result.cancel()``,
                                                                  ``run.cancelled``
================================================================  ===========================

Other events (``agent_updated_stream_event``, handoffs, message and reasoning items whose
text already streamed as deltas) publish nothing.
"""

from __future__ import annotations

import json
from typing import Any

from agents import Agent as SDKAgent
from agents import RunConfig, Runner, RunState
from agents.items import ToolCallItem, ToolCallOutputItem, TResponseInputItem
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent, StreamEvent
from openai.types.responses import (
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseTextDeltaEvent,
)
from pydantic_core import to_jsonable_python

from gateway.agent.publisher import Publisher
from gateway.agent.worker import Turn, Worker
from gateway.integrations import (
    Emitter,
    approve_tool,
    history,
    title_session,
    until_cancelled,
    worker_for,
)
from gateway.settings import Settings
from gateway.store import Store

# What the SDK's default ``failure_error_function`` hands the model when a tool raises.
TOOL_ERROR_PREFIX = "An error occurred while running the tool"


class OpenAIAgentsAgent:
    """Plays runs with an OpenAI Agents SDK agent (see the module docstring for the mapping).

    Args:
        agent: the SDK agent (model, tools, instructions, handoffs).
        context: passed as ``context`` to every run.
        title: name an untitled session after its first input (``session.title``).
        with_history: give the agent the session's earlier turns (input and answer of each
            run) as input items before this run's input.
        run_config: the SDK's ``RunConfig`` (model provider, tracing, …).
        max_turns: the SDK's turn limit per run.
    """

    def __init__(
        self,
        agent: SDKAgent[Any],
        *,
        context: Any = None,
        with_history: bool = True,
        title: bool = True,
        run_config: RunConfig | None = None,
        max_turns: int = 10,
    ) -> None:
        self.agent = agent
        self.context = context
        self.with_history = with_history
        self.title = title
        self.run_config = run_config
        self.max_turns = max_turns

    async def play(self, turn: Turn) -> None:
        """Play one turn; raises ``Cancelled`` when a browser cancels (the worker then
        publishes ``run.cancelled``); any other exception fails the run."""
        if self.title:
            await title_session(turn)
        items: list[TResponseInputItem] = []
        if self.with_history:
            for prompt, answer in await history(turn):
                items.append({"role": "user", "content": prompt})
                items.append({"role": "assistant", "content": answer})
        items.append({"role": "user", "content": turn.input})
        emit = Emitter(turn)
        await until_cancelled(turn, self._stream(items, emit))
        await turn.run.complete()

    async def _stream(self, items: list[TResponseInputItem], emit: Emitter) -> None:
        start: list[TResponseInputItem] | RunState[Any] = items
        while True:
            result = Runner.run_streamed(
                self.agent,
                start,
                context=self.context,
                max_turns=self.max_turns,
                run_config=self.run_config,
            )
            try:
                async for event in result.stream_events():
                    await publish(event, emit)
            finally:
                result.cancel()  # a no-op once finished; stops the SDK's task on our cancel
            if not result.interruptions:
                break
            # Tools that need approval paused the run: ask the viewers, then resume it.
            state = result.to_state()
            for item in result.interruptions:
                call_id, name = item.call_id or item.name or "tool", item.name or ""
                if await approve_tool(emit.turn, call_id, name, item.arguments or ""):
                    state.approve(item)
                else:
                    emit.denied.add(call_id)
                    state.reject(item, rejection_message="The user denied it.")
            start = state
        output = result.final_output
        if not emit.text and output is not None:
            text = output if isinstance(output, str) else json.dumps(to_jsonable_python(output))
            await emit.text_delta(text)


async def publish(event: StreamEvent, emit: Emitter) -> None:
    """Publish one Agents SDK stream event as our events (the module docstring's table)."""
    if isinstance(event, RawResponsesStreamEvent):
        data = event.data
        if isinstance(data, ResponseTextDeltaEvent):
            await emit.text_delta(data.delta)
        elif isinstance(
            data, ResponseReasoningSummaryTextDeltaEvent | ResponseReasoningTextDeltaEvent
        ):
            await emit.reasoning_delta(data.delta)
    elif isinstance(event, RunItemStreamEvent):
        item = event.item
        if event.name == "tool_called" and isinstance(item, ToolCallItem):
            await emit.tool_started(item.call_id or "", item.tool_name or "", _args(item))
        elif event.name == "tool_output" and isinstance(item, ToolCallOutputItem):
            output = item.output if isinstance(item.output, str) else _json(item.output)
            await emit.tool_completed(
                item.call_id or "", output, output.startswith(TOOL_ERROR_PREFIX)
            )


def _args(item: ToolCallItem) -> dict[str, Any]:
    raw = item.raw_item
    arguments = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            return {"arguments": arguments}
        return parsed if isinstance(parsed, dict) else {"arguments": parsed}
    return {}


def _json(value: Any) -> str:
    return json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)


def openai_agents_worker(
    agent: SDKAgent[Any],
    store: Store,
    publisher: Publisher,
    settings: Settings,
    **options: Any,
) -> Worker:
    """A worker playing runs with ``agent``; ``options`` go to :class:`OpenAIAgentsAgent`."""
    return worker_for(OpenAIAgentsAgent(agent, **options), store, publisher, settings)
