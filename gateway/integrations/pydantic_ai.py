"""pydantic-ai: play a pydantic-ai ``Agent`` as a gateway worker.

:class:`PydanticAIAgent` implements ``gateway.agent.worker.Agent``: each run command is played
with ``agent.run_stream_events(turn.input, message_history=…)`` and its stream is published
as our events (tested with pydantic-ai-slim 2.68):

=====================================================  ====================================
pydantic-ai event                                      gateway event
=====================================================  ====================================
``PartStartEvent`` ``TextPart`` (its initial content)  ``message.delta``
``PartDeltaEvent`` ``TextPartDelta``                   ``message.delta``
``PartStartEvent`` ``ThinkingPart``                    ``reasoning.delta``
``PartDeltaEvent`` ``ThinkingPartDelta``               ``reasoning.delta``
``FunctionToolCallEvent``                              ``tool.started`` (``args`` as a dict)
``FunctionToolResultEvent``                            ``tool.completed`` (``is_error`` when
                                                       the outcome is not ``success``)
a deferred call needing approval                       ``approval.requested``; the answer
(``requires_approval=True``)                           (``approval.resolved``) approves it
                                                       or denies it (``ToolDenied``)
``AgentRunResultEvent``                                ``run.completed`` (a non-text output
                                                       with no text streamed: its JSON as a
                                                       ``message.delta`` first)
an exception                                           ``run.failed``
a browser's cancel                                     the run is cancelled,
                                                       ``run.cancelled``
=====================================================  ====================================

Output-tool calls and tool-call argument deltas are not published (the complete call is).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_ai import Agent as PAIAgent
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import (
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    UserPromptPart,
)
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolDenied
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


class PydanticAIAgent:
    """Plays runs with a pydantic-ai ``Agent`` (see the module docstring for the mapping).

    Args:
        agent: the pydantic-ai agent (its model, tools, instructions).
        deps: passed as ``deps`` to every run.
        title: name an untitled session after its first input (``session.title``).
        with_history: give the agent the session's earlier turns (input and answer of each
            run) as ``message_history``.
        run_kwargs: more keyword arguments for ``run_stream_events`` (``model_settings``,
            ``usage_limits``, …).
    """

    def __init__(
        self,
        agent: PAIAgent[Any, Any],
        *,
        deps: Any = None,
        with_history: bool = True,
        title: bool = True,
        **run_kwargs: Any,
    ) -> None:
        self.agent = agent
        self.deps = deps
        self.with_history = with_history
        self.title = title
        self.run_kwargs = run_kwargs

    async def play(self, turn: Turn) -> None:
        """Play one turn; raises ``Cancelled`` when a browser cancels (the worker then
        publishes ``run.cancelled``); any other exception fails the run."""
        if self.title:
            await title_session(turn)
        messages = await self.messages(turn) if self.with_history else []
        emit = Emitter(turn)
        await until_cancelled(turn, self._stream(turn, messages, emit))
        await turn.run.complete()

    async def messages(self, turn: Turn) -> list[ModelMessage]:
        """The session's earlier turns as pydantic-ai messages."""
        out: list[ModelMessage] = []
        for prompt, answer in await history(turn):
            out.append(ModelRequest(parts=[UserPromptPart(prompt)]))
            out.append(ModelResponse(parts=[TextPart(answer)]))
        return out

    async def _stream(self, turn: Turn, messages: Sequence[ModelMessage], emit: Emitter) -> None:
        kwargs = dict(self.run_kwargs)
        if messages:
            kwargs["message_history"] = list(messages)

        async def ask(ctx: RunContext[Any], requests: DeferredToolRequests) -> DeferredToolResults:
            results = DeferredToolResults()
            for call in requests.approvals:
                ok = await approve_tool(
                    turn, call.tool_call_id, call.tool_name, call.args_as_dict()
                )
                results.approvals[call.tool_call_id] = ok or ToolDenied("The user denied it.")
            return results

        handler = HandleDeferredToolCalls[Any](handler=ask)
        kwargs["capabilities"] = [*kwargs.get("capabilities", []), handler]
        async with self.agent.run_stream_events(turn.input, deps=self.deps, **kwargs) as events:
            async for event in events:
                await publish(event, emit)


async def publish(event: AgentStreamEvent | AgentRunResultEvent[Any], emit: Emitter) -> None:
    """Publish one pydantic-ai stream event as our events (the module docstring's table)."""
    if isinstance(event, PartStartEvent):
        if isinstance(event.part, TextPart):
            await emit.text_delta(event.part.content)
        elif isinstance(event.part, ThinkingPart):
            await emit.reasoning_delta(event.part.content)
    elif isinstance(event, PartDeltaEvent):
        if isinstance(event.delta, TextPartDelta):
            await emit.text_delta(event.delta.content_delta)
        elif isinstance(event.delta, ThinkingPartDelta) and event.delta.content_delta:
            await emit.reasoning_delta(event.delta.content_delta)
    elif isinstance(event, FunctionToolCallEvent):
        call = event.part
        await emit.tool_started(call.tool_call_id, call.tool_name, call.args_as_dict())
    elif isinstance(event, FunctionToolResultEvent):
        ret = event.part
        await emit.tool_completed(
            ret.tool_call_id, ret.model_response_str(), ret.outcome != "success"
        )
    elif isinstance(event, AgentRunResultEvent):
        output = event.result.output
        if not emit.text and output is not None and not isinstance(output, str):
            await emit.text_delta(json.dumps(to_jsonable_python(output), ensure_ascii=False))
        elif not emit.text and isinstance(output, str):
            await emit.text_delta(output)


def pydantic_ai_worker(
    agent: PAIAgent[Any, Any],
    store: Store,
    publisher: Publisher,
    settings: Settings,
    **options: Any,
) -> Worker:
    """A worker playing runs with ``agent``; ``options`` go to :class:`PydanticAIAgent`."""
    return worker_for(PydanticAIAgent(agent, **options), store, publisher, settings)
