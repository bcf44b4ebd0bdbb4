"""AG-UI in: validation of AG-UI 1.0 events and their mapping to the gateway's vocabulary.

Used by the ingest endpoint (``POST /v1/sessions/{sid}/agui/events``) and the worker relay
(``gateway worker --agui-url``). Each event is validated with the ``ag-ui-protocol`` 1.0
pydantic models (the ``ag_ui.core.Event`` union, discriminated on ``type``); the ``THINKING_*``
events that left the protocol in 1.0, still sent by producers speaking to pre-0.1.11 peers,
are accepted as their ``REASONING_*`` equivalents.

Mapping (:class:`AguiMapper`, stateful per run because tool-call arguments arrive in pieces):

==============================================  =============================================
AG-UI event                                     gateway event
==============================================  =============================================
``RUN_STARTED``                                 ``run.started`` (the caller decides: start a
                                                run, or attach to the one already running)
``TEXT_MESSAGE_CONTENT``, ``TEXT_MESSAGE_CHUNK``  ``message.delta`` ``{text, message_id}``
``REASONING_MESSAGE_CONTENT`` / ``_CHUNK``,     ``reasoning.delta`` ``{text, message_id}``
``THINKING_TEXT_MESSAGE_CONTENT``
``TOOL_CALL_START`` + ``_ARGS`` + ``_END``,     one ``tool.started`` ``{tool_call_id, name,
``TOOL_CALL_CHUNK``                             args}`` with the accumulated arguments
``TOOL_CALL_RESULT``                            ``tool.completed``
``RUN_FINISHED``                                ``run.completed`` (``run.cancelled`` for the
                                                ``cancelled`` outcome)
``RUN_ERROR``                                   ``run.failed`` ``{error, code?}``
``TEXT_MESSAGE_START``/``_END``, ``REASONING_   nothing: their content is carried by the
START``/``_END``/``_MESSAGE_START``/``_END``,   events above, and an AG-UI egress
``THINKING_*`` (other)                          synthesizes them again
everything else (state, messages snapshot,      ``agui.raw`` ``{"event": <the AG-UI event as
steps, activity, custom, raw, subagents, text   JSON>}``, which the egress emits unchanged
messages of a non-assistant role, …)
==============================================  =============================================

The ``rawEvent`` field (a producer's debugging copy of its framework-native event) is dropped.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ag_ui.core import (
    BaseEvent,
    Event,
    EventType,
    ReasoningMessageChunkEvent,
    ReasoningMessageContentEvent,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallChunkEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from pydantic import TypeAdapter, ValidationError

from gateway.core.errors import GatewayError

RAW_TYPE = "agui.raw"
KNOWN_TYPES = frozenset(t.value for t in EventType)


class LegacyThinkingEvent(BaseEvent):
    """The ``THINKING_*`` events of AG-UI before 1.0 (pydantic-ai still sends them to peers
    that declare an older protocol); only ``THINKING_TEXT_MESSAGE_CONTENT`` carries text."""

    type: Literal[  # type: ignore[assignment]
        "THINKING_START",
        "THINKING_END",
        "THINKING_TEXT_MESSAGE_START",
        "THINKING_TEXT_MESSAGE_CONTENT",
        "THINKING_TEXT_MESSAGE_END",
    ]
    delta: str | None = None


LEGACY_TYPES = frozenset(
    {
        "THINKING_START",
        "THINKING_END",
        "THINKING_TEXT_MESSAGE_START",
        "THINKING_TEXT_MESSAGE_CONTENT",
        "THINKING_TEXT_MESSAGE_END",
    }
)
_EVENT: TypeAdapter[Any] = TypeAdapter(Event)

# Absorbed: what they say is carried by the mapped events and synthesized again on egress.
_ABSORBED = frozenset(
    {
        EventType.TEXT_MESSAGE_START,
        EventType.TEXT_MESSAGE_END,
        EventType.REASONING_START,
        EventType.REASONING_END,
        EventType.REASONING_MESSAGE_START,
        EventType.REASONING_MESSAGE_END,
    }
)


class AguiInvalid(GatewayError):
    """``400``: an AG-UI body or event the gateway cannot accept; ``code`` says why:
    ``invalid_agui_body``, ``invalid_agui_event``, ``unknown_agui_event_type``,
    ``agui_unknown_tool_call``, ``agui_incomplete_tool_call``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)


@dataclass(frozen=True, slots=True)
class Mapped:
    """One gateway event produced from AG-UI: ``type`` and ``data`` (no run id yet)."""

    type: str
    data: dict[str, Any]


def parse_event(obj: Any, where: str = "event") -> BaseEvent:
    """Validate one AG-UI event given as parsed JSON.

    Raises:
        AguiInvalid: ``unknown_agui_event_type`` (a ``type`` AG-UI 1.0 does not define),
            ``invalid_agui_event`` (not an object, or a field fails the protocol's model).
    """
    if not isinstance(obj, dict):
        raise AguiInvalid("invalid_agui_event", f"{where}: an AG-UI event is a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise AguiInvalid("invalid_agui_event", f"{where}: type must be a string")
    try:
        if kind in LEGACY_TYPES:
            return LegacyThinkingEvent.model_validate(obj)
        if kind not in KNOWN_TYPES:
            raise AguiInvalid(
                "unknown_agui_event_type", f"{where}: {kind!r} is not an AG-UI 1.0 event type"
            )
        return _EVENT.validate_python(obj)  # type: ignore[no-any-return]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"][1:] if p != kind) or "event"
        raise AguiInvalid(
            "invalid_agui_event", f"{where} ({kind}): {loc}: {first['msg']}"
        ) from None


def parse_json(text: str | bytes, where: str = "event") -> BaseEvent:
    """Parse and validate one AG-UI event from JSON text (an SSE ``data`` field).

    Raises:
        AguiInvalid: ``invalid_agui_event`` for text that is not JSON, else as
            :func:`parse_event`.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise AguiInvalid("invalid_agui_event", f"{where}: data is not JSON") from None
    return parse_event(obj, where)


def wire(event: BaseEvent) -> dict[str, Any]:
    """The event as AG-UI JSON (camelCase, absent optionals left out), minus ``rawEvent``."""
    out: dict[str, Any] = event.model_dump(mode="json", by_alias=True)
    out.pop("rawEvent", None)
    return out


def text_of(content: Any) -> str:
    """The text of a message's or a tool result's content: a string, or the ``text`` of its
    text parts (other parts are not text)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(str(getattr(p, "text", "")) for p in parts if getattr(p, "type", "") == "text")


def run_input_text(event: RunStartedEvent) -> str:
    """The run's input for ``run.started``: the last user message of the event's
    ``RunAgentInput``, '' when it carries none."""
    messages = event.input.messages if event.input is not None else []
    for message in reversed(messages):
        if getattr(message, "role", "") == "user":
            return text_of(getattr(message, "content", ""))
    return ""


def tool_args(text: str) -> dict[str, Any]:
    """Accumulated ``TOOL_CALL_ARGS`` as ``tool.started`` args: the JSON object they spell;
    ``{}`` when empty; ``{"_value": v}`` for other JSON; ``{"_raw": text}`` for non-JSON."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


@dataclass
class _ToolCall:
    name: str
    parent_message_id: str | None
    args: list[str] = field(default_factory=list)


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


class AguiMapper:
    """Maps one producer's AG-UI events to gateway events, in order (see the module table).

    State: the tool calls started and not yet ended (their arguments accumulate), the
    ``TOOL_CALL_CHUNK`` call in progress, and the role of each text message (a non-assistant
    message is kept as ``agui.raw``).
    """

    def __init__(self) -> None:
        self._tools: dict[str, _ToolCall] = {}
        self._chunk_tool: str | None = None
        self._raw_messages: set[str] = set()
        self._last_message: str | None = None

    @property
    def open_tool_calls(self) -> list[str]:
        """Ids of tool calls started and not ended."""
        return list(self._tools)

    def map(self, event: BaseEvent) -> list[Mapped]:
        """The gateway events one AG-UI event stands for (often none or one).

        Raises:
            AguiInvalid: ``agui_unknown_tool_call`` for ``TOOL_CALL_ARGS``/``_END`` of a call
                that was not started.
        """
        out: list[Mapped] = []
        if self._chunk_tool is not None and not isinstance(event, ToolCallChunkEvent):
            out += self._end_tool(self._chunk_tool)  # a chunked call ends at the next event
        out += self._map(event)
        return out

    def finish(self) -> list[Mapped]:
        """End of the producer's events: the chunked tool call in progress, if any.

        Raises:
            AguiInvalid: ``agui_incomplete_tool_call`` when a ``TOOL_CALL_START`` had no
                ``TOOL_CALL_END``.
        """
        out = self._end_tool(self._chunk_tool) if self._chunk_tool is not None else []
        if self._tools:
            raise AguiInvalid(
                "agui_incomplete_tool_call",
                f"tool call(s) {sorted(self._tools)} started without TOOL_CALL_END",
            )
        return out

    def _end_tool(self, tool_call_id: str) -> list[Mapped]:
        if self._chunk_tool == tool_call_id:
            self._chunk_tool = None
        call = self._tools.pop(tool_call_id)
        data = {
            "tool_call_id": tool_call_id,
            "name": call.name,
            "args": tool_args("".join(call.args)),
            "parent_message_id": call.parent_message_id,
        }
        return [Mapped("tool.started", _drop_none(data))]

    def _end_all_tools(self) -> list[Mapped]:
        out: list[Mapped] = []
        for tool_call_id in list(self._tools):
            out += self._end_tool(tool_call_id)
        return out

    def _tool(self, tool_call_id: str, kind: str) -> _ToolCall:
        call = self._tools.get(tool_call_id)
        if call is None:
            raise AguiInvalid(
                "agui_unknown_tool_call", f"{kind} for tool call {tool_call_id!r} before its start"
            )
        return call

    def _raw(self, event: BaseEvent) -> list[Mapped]:
        return [Mapped(RAW_TYPE, {"event": wire(event)})]

    def _map(self, ev: BaseEvent) -> list[Mapped]:
        if isinstance(ev, TextMessageStartEvent):
            if ev.role not in (None, "assistant"):
                self._raw_messages.add(ev.message_id)
                return self._raw(ev)
            self._last_message = ev.message_id
            return []
        if isinstance(ev, TextMessageContentEvent | TextMessageEndEvent):
            if ev.message_id in self._raw_messages:
                return self._raw(ev)
            if isinstance(ev, TextMessageEndEvent):
                return []
            return [Mapped("message.delta", {"text": ev.delta, "message_id": ev.message_id})]
        if isinstance(ev, TextMessageChunkEvent):
            if ev.role not in (None, "assistant"):
                return self._raw(ev)
            mid = ev.message_id or self._last_message
            self._last_message = mid
            if not ev.delta:
                return []
            return [Mapped("message.delta", _drop_none({"text": ev.delta, "message_id": mid}))]
        if isinstance(ev, ReasoningMessageContentEvent | ReasoningMessageChunkEvent):
            if not ev.delta:
                return []
            thought = {"text": ev.delta, "message_id": ev.message_id}
            return [Mapped("reasoning.delta", _drop_none(thought))]
        if isinstance(ev, LegacyThinkingEvent):
            if ev.type == "THINKING_TEXT_MESSAGE_CONTENT" and ev.delta:
                return [Mapped("reasoning.delta", {"text": ev.delta})]
            return []
        if isinstance(ev, ToolCallStartEvent):
            self._tools[ev.tool_call_id] = _ToolCall(ev.tool_call_name, ev.parent_message_id)
            return []
        if isinstance(ev, ToolCallArgsEvent):
            self._tool(ev.tool_call_id, "TOOL_CALL_ARGS").args.append(ev.delta)
            return []
        if isinstance(ev, ToolCallEndEvent):
            self._tool(ev.tool_call_id, "TOOL_CALL_END")
            return self._end_tool(ev.tool_call_id)
        if isinstance(ev, ToolCallChunkEvent):
            return self._chunk(ev)
        if isinstance(ev, ToolCallResultEvent):
            data: dict[str, Any] = {
                "tool_call_id": ev.tool_call_id,
                "output": text_of(ev.content),
                "is_error": False,
                "duration_ms": 0,
                "message_id": ev.message_id,
            }
            if not isinstance(ev.content, str):
                data["content"] = wire(ev)["content"]
            return [Mapped("tool.completed", data)]
        if isinstance(ev, RunStartedEvent):
            start = {
                "input": run_input_text(ev),
                "thread_id": ev.thread_id,
                "agui_run_id": ev.run_id,
            }
            return [Mapped("run.started", start)]
        if isinstance(ev, RunFinishedEvent):
            wired = wire(ev)
            outcome = wired.get("outcome")
            end = "run.cancelled" if (outcome or {}).get("type") == "cancelled" else "run.completed"
            extra = {"result": wired.get("result"), "outcome": outcome}
            return [*self._end_all_tools(), Mapped(end, _drop_none(extra))]
        if isinstance(ev, RunErrorEvent):
            failed = Mapped("run.failed", _drop_none({"error": ev.message, "code": ev.code}))
            return [*self._end_all_tools(), failed]
        if ev.type in _ABSORBED:
            return []
        return self._raw(ev)

    def _chunk(self, ev: ToolCallChunkEvent) -> list[Mapped]:
        out: list[Mapped] = []
        tool_call_id = ev.tool_call_id or self._chunk_tool
        if tool_call_id is None:
            raise AguiInvalid(
                "agui_unknown_tool_call", "TOOL_CALL_CHUNK without toolCallId outside a call"
            )
        if tool_call_id != self._chunk_tool:
            if self._chunk_tool is not None:
                out += self._end_tool(self._chunk_tool)
            if tool_call_id not in self._tools:
                name = ev.tool_call_name or ""
                self._tools[tool_call_id] = _ToolCall(name, ev.parent_message_id)
            self._chunk_tool = tool_call_id
        if ev.delta:
            self._tools[tool_call_id].args.append(ev.delta)
        return out


class SseParser:
    """Incremental ``text/event-stream`` parser (the WHATWG rules this needs): feed it bytes,
    get the ``data`` of each complete event. ``\\n``, ``\\r\\n`` and ``\\r`` end lines; comment
    lines and fields other than ``data`` are ignored; events without data are skipped."""

    def __init__(self) -> None:
        self._buf = ""
        self._data: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events ``chunk`` completes.

        Raises:
            AguiInvalid: ``invalid_agui_body`` when the bytes are not UTF-8.
        """
        try:
            buf = self._buf + self._decoder.decode(chunk)
        except UnicodeDecodeError:
            raise AguiInvalid("invalid_agui_body", "the event stream is not UTF-8") from None
        out: list[str] = []
        pos = 0
        while (cut := _line_end(buf, pos)) is not None:
            self._line(buf[pos : cut[0]], out)
            pos = cut[1]
        self._buf = buf[pos:]
        return out

    def close(self) -> list[str]:
        """End of the stream: an unterminated last event is still delivered (a request body
        may end without its blank line)."""
        out: list[str] = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = ""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[str]) -> None:
        if line == "":
            if self._data:
                out.append("\n".join(self._data))
            self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)


def _line_end(buf: str, pos: int) -> tuple[int, int] | None:
    """(end of the line starting at ``pos``, start of the next) in ``buf``; None until the
    line is complete (a trailing ``\\r`` may be the first half of ``\\r\\n``)."""
    n = buf.find("\n", pos)
    r = buf.find("\r", pos, n if n != -1 else len(buf))
    if r == -1:
        return None if n == -1 else (n, n + 1)
    if r + 1 == len(buf):
        return None
    return (r, r + 2) if buf[r + 1] == "\n" else (r, r + 1)
