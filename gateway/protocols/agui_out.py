"""AG-UI egress: a pure, stateful encoder from the gateway's stored events to AG-UI 1.0 events.

The AG-UI models of ``ag-ui-protocol`` (``ag_ui.core``) build every event; the encoder holds
only what the protocol's open/close pairing needs (the open AG-UI run, the open text and
reasoning messages), so the same log always encodes to the same events. Ids are derived from
the log, never invented: a text message is ``<run>-m<seq>`` (the sequence number of its
first delta), a reasoning message ``<run>-r<seq>``, a tool result ``<tool_call_id>-result``
and the user message the run's ``run.started`` ``message_id`` (``<run>-user`` when the run
was not started over AG-UI). A replay, a second tab and a resume therefore build identical
message lists in an AG-UI client.

==========================  ============================================================
our event                   AG-UI events
==========================  ============================================================
``run.started``             ``RUN_STARTED`` (``input`` echoes the user message)
``message.delta``           ``TEXT_MESSAGE_START`` (first delta) + ``TEXT_MESSAGE_CONTENT``
``reasoning.delta``         ``REASONING_START`` + ``REASONING_MESSAGE_START`` (first delta)
                            + ``REASONING_MESSAGE_CONTENT``
``tool.started``            ``TOOL_CALL_START`` + ``TOOL_CALL_ARGS`` (args JSON) +
                            ``TOOL_CALL_END``
``tool.completed``          ``TOOL_CALL_RESULT`` (``metadata.gateway``: is_error, duration)
``approval.requested``      ``RUN_FINISHED`` with ``outcome: {type: "interrupt"}`` (one
                            ``Interrupt``: id = approval id, ``reason: "approval"``)
``approval.resolved``       ``RUN_STARTED`` of the same run (the run continues)
``session.title``           ``CUSTOM`` ``{name: "session.title", value: data}``
``run.completed``           ``RUN_FINISHED`` (success)
``run.cancelled``           ``RUN_FINISHED`` with ``outcome: {type: "cancelled"}``
``run.failed``              ``RUN_ERROR`` (``message`` = error)
``agui.raw``                ``data.event`` unchanged (what the AG-UI ingest could not map)
any other ``vendor.thing``  ``CUSTOM`` ``{name: "vendor.thing", value: data}``
==========================  ============================================================

The last AG-UI event made from a stored event that changes a client's state (so a
``TOOL_CALL_ARGS``, not the ``TOOL_CALL_END`` after it) carries ``rawEvent: {"offset": ...}``
(the protocol's place for "the event this one was translated from"): AG-UI events have no
sequence number, this gives them one. Up to that event, replaying the stored event onto a
client that applied part of it repeats only idempotent starts; after it, nothing is left
that changes the client's messages.

An open text or reasoning message is closed (``*_END``) before any other kind of part and
before a run ends or is interrupted. An event of a run whose AG-UI run is not open (a run
continuing after its approval, a viewer that joined after a reset) is preceded by a
``RUN_STARTED`` of that run; events outside any run that AG-UI cannot carry outside a run
(``CUSTOM``) are left out.
"""

from __future__ import annotations

import json
from typing import Any

from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    Interrupt,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    UserMessage,
)
from ag_ui.core.events import (
    RunFinishedCancelledOutcome,
    RunFinishedInterruptOutcome,
)

from gateway.core.events import StoredEvent

RAW_TYPE = "agui.raw"
"""Our event type for an AG-UI event the ingest keeps as-is: data ``{"event": {...}}``."""

APPROVAL_REASON = "approval"
APPROVAL_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}
"""The answer an approval interrupt expects in ``RunAgentInput.resume[].payload``."""

_RUN_LIFECYCLE = frozenset({"RUN_STARTED", "RUN_FINISHED", "RUN_ERROR"})
_ENDS = frozenset({"TEXT_MESSAGE_END", "REASONING_MESSAGE_END", "REASONING_END", "TOOL_CALL_END"})


def dump(event: BaseEvent) -> str:
    """One AG-UI event as wire JSON (camelCase, optional fields without a value left out)."""
    return event.model_dump_json(by_alias=True)


def user_message_id(run_id: str, data: dict[str, Any]) -> str:
    """The id of the user message a run answers: ``run.started``'s ``message_id``, else
    ``<run>-user``."""
    mid = data.get("message_id")
    return mid if isinstance(mid, str) and mid else f"{run_id}-user"


class AguiEncoder:
    """Turns stored events, in log order, into AG-UI event JSON texts.

    ``thread_id`` is the AG-UI thread of every run (the session id). :meth:`encode` returns
    the AG-UI events one stored event maps to (possibly none). To resume in the middle of a
    run, feed the run's events up to the cursor to :meth:`encode` and discard the output,
    then send :meth:`preamble` before the events after the cursor.
    """

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.run: str | None = None  # the gateway run whose AG-UI run is open
        self.text: str | None = None  # open text message id
        self.reasoning: str | None = None  # open reasoning message id
        self.closed = False  # the last encoded event finished or errored an AG-UI run
        self._started: dict[str, Any] = {}  # run id → its run.started data (the echo)

    # --- public ---------------------------------------------------------------------------
    def encode(self, ev: StoredEvent, offset: str | None = None) -> list[str]:
        """The AG-UI events (JSON texts) for one stored event, in order.

        ``offset``: the event's offset, set as ``rawEvent: {"offset": ...}`` on the last
        AG-UI event it maps to that changes a client's state (not a ``*_END``; not on a
        passed-through ``agui.raw`` event), so a client can note in a subscriber how far it
        has applied the log and resume there without applying anything twice.
        """
        self.closed = False
        try:
            data = json.loads(ev.data)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        out: list[BaseEvent | str] = []
        handler = _HANDLERS.get(ev.type)
        if handler is not None:
            handler(self, ev, data, out)
        elif ev.type == RAW_TYPE:
            self._raw(ev, data, out)
        elif ev.run_id or self.run:
            self._open(ev.run_id or self.run or "", out)
            out.append(CustomEvent(name=ev.type, value=data, timestamp=ev.ts))
        if offset is not None:
            carrier = next((o for o in reversed(out) if _kind(o) not in _ENDS), None)
            if isinstance(carrier, BaseEvent):
                carrier.raw_event = {"offset": offset}
        return [o if isinstance(o, str) else dump(o) for o in out]

    def preamble(self) -> list[str]:
        """What a client resuming at this point needs first: the open run's ``RUN_STARTED``
        and a start for each open message (the client keeps a message it already has by
        id, so content resumes into it). Empty when no AG-UI run is open."""
        if self.run is None:
            return []
        out: list[BaseEvent] = [self._run_started(self.run)]
        if self.reasoning is not None:
            out.append(ReasoningStartEvent(message_id=self.reasoning))
            out.append(ReasoningMessageStartEvent(message_id=self.reasoning))
        if self.text is not None:
            out.append(TextMessageStartEvent(message_id=self.text, role="assistant"))
        return [dump(e) for e in out]

    def abandon(self) -> list[str]:
        """The stream skipped events (a reset): end the open AG-UI run with ``RUN_ERROR``
        code ``reset``; the run's later events open it again with a new ``RUN_STARTED``."""
        if self.run is None:
            return []
        out: list[BaseEvent | str] = []
        self._finish(out, RunErrorEvent(message="stream reset: events were skipped", code="reset"))
        return [o if isinstance(o, str) else dump(o) for o in out]

    # --- parts ----------------------------------------------------------------------------
    def _run_started(self, run_id: str, ts: int | None = None) -> RunStartedEvent:
        started = self._started.get(run_id)
        echo = None
        if started is not None and isinstance(started.get("input"), str):
            echo = RunAgentInput(
                thread_id=self.thread_id,
                run_id=run_id,
                messages=[
                    UserMessage(id=user_message_id(run_id, started), content=started["input"])
                ],
            )
        return RunStartedEvent(
            thread_id=self.thread_id,
            run_id=run_id,
            protocol_version="1.0",
            input=echo,
            timestamp=ts,
        )

    def _open(self, run_id: str, out: list[BaseEvent | str], ts: int | None = None) -> None:
        """Make ``run_id``'s AG-UI run the open one (a run's continuation, or a late join)."""
        if self.run == run_id:
            return
        if self.run is not None:
            # A run the log never ended (its terminal was trimmed away): AG-UI cannot hold
            # two runs open, so the older one is closed as failed.
            self._close_parts(out)
            out.append(RunErrorEvent(message="run superseded", code="superseded"))
        self.run = run_id
        out.append(self._run_started(run_id, ts))

    def _close_parts(self, out: list[BaseEvent | str]) -> None:
        if self.text is not None:
            out.append(TextMessageEndEvent(message_id=self.text))
            self.text = None
        if self.reasoning is not None:
            out.append(ReasoningMessageEndEvent(message_id=self.reasoning))
            out.append(ReasoningEndEvent(message_id=self.reasoning))
            self.reasoning = None

    def _finish(self, out: list[BaseEvent | str], event: BaseEvent) -> None:
        self._close_parts(out)
        out.append(event)
        self.run = None
        self.closed = True

    # --- one handler per known type ----------------------------------------------------
    def _run_started_ev(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._started = {ev.run_id: data}  # only the latest run can still be continued
        if self.run == ev.run_id:
            return
        self._open(ev.run_id, out, ev.ts)

    def _message(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        if self.reasoning is not None:
            self._close_parts(out)
        if self.text is None:
            self.text = f"{ev.run_id}-m{ev.seq}"
            out.append(
                TextMessageStartEvent(message_id=self.text, role="assistant", timestamp=ev.ts)
            )
        out.append(
            TextMessageContentEvent(message_id=self.text, delta=_str(data, "text"), timestamp=ev.ts)
        )

    def _reasoning(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        if self.text is not None:
            self._close_parts(out)
        if self.reasoning is None:
            self.reasoning = f"{ev.run_id}-r{ev.seq}"
            out.append(ReasoningStartEvent(message_id=self.reasoning, timestamp=ev.ts))
            out.append(ReasoningMessageStartEvent(message_id=self.reasoning, timestamp=ev.ts))
        out.append(
            ReasoningMessageContentEvent(
                message_id=self.reasoning, delta=_str(data, "text"), timestamp=ev.ts
            )
        )

    def _tool_started(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        parent = self.text  # a tool call right after text belongs to that assistant message
        self._close_parts(out)
        call_id = _str(data, "tool_call_id")
        args = data.get("args")
        out.append(
            ToolCallStartEvent(
                tool_call_id=call_id,
                tool_call_name=_str(data, "name"),
                parent_message_id=parent,
                timestamp=ev.ts,
            )
        )
        out.append(
            ToolCallArgsEvent(
                tool_call_id=call_id,
                delta=json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False),
                timestamp=ev.ts,
            )
        )
        out.append(ToolCallEndEvent(tool_call_id=call_id, timestamp=ev.ts))

    def _tool_completed(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        self._close_parts(out)
        call_id = _str(data, "tool_call_id")
        meta = {"is_error": bool(data.get("is_error"))}
        if isinstance(data.get("duration_ms"), int | float):
            meta["duration_ms"] = data["duration_ms"]
        out.append(
            ToolCallResultEvent(
                message_id=f"{call_id}-result",
                tool_call_id=call_id,
                content=_str(data, "output"),
                role="tool",
                metadata={"gateway": meta},
                timestamp=ev.ts,
            )
        )

    def _approval_requested(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        tool_call = data.get("tool_call_id")
        interrupt = Interrupt(
            id=_str(data, "approval_id"),
            reason=APPROVAL_REASON,
            message=_str(data, "prompt"),
            tool_call_id=tool_call if isinstance(tool_call, str) else None,
            response_schema=APPROVAL_RESPONSE_SCHEMA,
        )
        self._finish(
            out,
            RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=ev.run_id,
                outcome=RunFinishedInterruptOutcome(interrupts=[interrupt]),
                timestamp=ev.ts,
            ),
        )

    def _approval_resolved(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)  # the interrupted run goes on

    def _title(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        if self.run is None and not ev.run_id:
            return  # CUSTOM is not allowed between runs
        self._open(ev.run_id or self.run or "", out, ev.ts)
        out.append(CustomEvent(name=ev.type, value=data, timestamp=ev.ts))

    def _completed(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        self._finish(
            out, RunFinishedEvent(thread_id=self.thread_id, run_id=ev.run_id, timestamp=ev.ts)
        )

    def _cancelled(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        self._finish(
            out,
            RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=ev.run_id,
                outcome=RunFinishedCancelledOutcome(),
                timestamp=ev.ts,
            ),
        )

    def _failed(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        self._open(ev.run_id, out, ev.ts)
        code = data.get("code")
        self._finish(
            out,
            RunErrorEvent(
                message=_str(data, "error"),
                code=code if isinstance(code, str) else None,
                timestamp=ev.ts,
            ),
        )

    def _raw(self, ev: StoredEvent, data: dict[str, Any], out: list[Any]) -> None:
        event = data.get("event")
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "RUN_STARTED":
            self._close_parts(out)
            self.run = ev.run_id or str(event.get("runId", ""))
        elif kind in _RUN_LIFECYCLE:
            self._close_parts(out)
            self.run = None
            self.closed = True
        elif ev.run_id:
            self._open(ev.run_id, out, ev.ts)
        out.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False))


def _kind(event: BaseEvent | str) -> str:
    return "" if isinstance(event, str) else str(event.type.value)


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


_HANDLERS = {
    "run.started": AguiEncoder._run_started_ev,
    "message.delta": AguiEncoder._message,
    "reasoning.delta": AguiEncoder._reasoning,
    "tool.started": AguiEncoder._tool_started,
    "tool.completed": AguiEncoder._tool_completed,
    "approval.requested": AguiEncoder._approval_requested,
    "approval.resolved": AguiEncoder._approval_resolved,
    "session.title": AguiEncoder._title,
    "run.completed": AguiEncoder._completed,
    "run.cancelled": AguiEncoder._cancelled,
    "run.failed": AguiEncoder._failed,
}
