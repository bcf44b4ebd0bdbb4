"""A pydantic-ai agent served over AG-UI (``AGUIAdapter.dispatch_request`` in a Starlette
route), on a scripted ``FunctionModel``: no network, no keys.
``python -m uvicorn tests.agui_pydantic_ai_app:app``.

The model thinks, calls the ``lookup`` tool, then streams ``Found: <tool result>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ToolReturnPart
from pydantic_ai.models.function import (
    AgentInfo,
    DeltaThinkingCalls,
    DeltaThinkingPart,
    DeltaToolCall,
    DeltaToolCalls,
    FunctionModel,
)
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def scripted(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls | DeltaThinkingCalls]:
    returns = [
        p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)
    ]
    if returns:
        for word in ("Found: ", str(returns[-1].content)):
            yield word
        return
    yield {0: DeltaThinkingPart(content="Looking it up.")}
    yield {1: DeltaToolCall(name="lookup", json_args='{"topic": ', tool_call_id="call-pa-1")}
    yield {1: DeltaToolCall(json_args='"offsets"}')}


agent = Agent(FunctionModel(stream_function=scripted))


@agent.tool_plain
def lookup(topic: str) -> str:
    """Look a topic up in the notes."""
    return f"notes about {topic}"


async def run(request: Request) -> Response:
    return await AGUIAdapter.dispatch_request(request, agent=agent)


app = Starlette(routes=[Route("/agent", run, methods=["POST"])])
