"""A LangGraph agent served over AG-UI by ``ag-ui-langgraph`` (FastAPI), with a scripted fake
chat model: no network, no keys. ``python -m uvicorn tests.agui_langgraph_app:app``.

What the model answers depends on the user's last message:
- ``tool`` in it: a streamed call of the ``lookup`` tool, then (after its result) a text answer;
- ``block`` in it: a streamed text, then the graph waits forever (for cancel tests);
- else: ``You said: <message>`` streamed word by word.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from ag_ui_langgraph import LangGraphAgent, add_langgraph_fastapi_endpoint
from fastapi import FastAPI
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

BLOCKED_TEXT = "Working on it"


class ScriptedChatModel(GenericFakeChatModel):
    """GenericFakeChatModel that also streams tool calls (as providers do: name and id
    first, then the arguments in pieces)."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = next(self.messages)
        if isinstance(message, AIMessage) and message.tool_calls:
            for i, call in enumerate(message.tool_calls):
                args = json.dumps(call["args"])
                pieces = [
                    (call["name"], call["id"], ""),
                    (None, None, args[:6]),
                    (None, None, args[6:]),
                ]
                for name, cid, piece in pieces:
                    part = {"name": name, "args": piece, "id": cid, "index": i}
                    chunk = ChatGenerationChunk(
                        message=AIMessageChunk(content="", tool_call_chunks=[part])  # type: ignore[list-item]
                    )
                    if run_manager:
                        run_manager.on_llm_new_token("", chunk=chunk)
                    yield chunk
            return
        self.messages = iter([message])
        yield from super()._stream(messages, stop, run_manager, **kwargs)


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the notes."""
    return f"notes about {topic}"


def _prompt(messages: list[BaseMessage]) -> str:
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    return str(humans[-1].content) if humans else ""


def _reply(messages: list[BaseMessage]) -> AIMessage:
    prompt = _prompt(messages)
    if isinstance(messages[-1], ToolMessage):
        return AIMessage(content=f"Found: {messages[-1].content}")
    if "tool" in prompt:
        call = {"name": "lookup", "args": {"topic": "offsets"}, "id": "call-lookup-1"}
        return AIMessage(content="", tool_calls=[call])
    if "block" in prompt:
        return AIMessage(content=BLOCKED_TEXT)
    return AIMessage(content=f"You said: {prompt}")


async def chat(state: MessagesState) -> dict[str, Any]:
    model = ScriptedChatModel(messages=iter([_reply(state["messages"])]))
    return {"messages": [await model.ainvoke(state["messages"])]}


async def wait_forever(state: MessagesState) -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


def route(state: MessagesState) -> str:
    last = state["messages"][-1]
    if isinstance(last, AIMessage) and last.tool_calls:
        return "tools"
    return "wait" if "block" in _prompt(state["messages"]) else END


builder = StateGraph(MessagesState)
builder.add_node("chat", chat)
builder.add_node("tools", ToolNode([lookup]))
builder.add_node("wait", wait_forever)
builder.add_edge(START, "chat")
builder.add_conditional_edges("chat", route, ["tools", "wait", END])
builder.add_edge("tools", "chat")
graph = builder.compile(checkpointer=InMemorySaver())

app = FastAPI()
add_langgraph_fastapi_endpoint(app, LangGraphAgent(name="scripted", graph=graph), "/agent")
