"""AI SDK: the gateway's events as the Vercel AI SDK *UI message stream* (protocol ``v1``,
https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol; chunk schemas as in ``ai`` 7.x,
``src/ui-message-stream/ui-message-chunks.ts``), and the request bodies its
``DefaultChatTransport`` sends. This module owns that wire format: the chunks, their SSE
framing (``data: <json>\\n\\n``, the last chunk of each stored event with ``id: <offset>``,
ending with ``data: [DONE]``); :mod:`gateway.protocols.ai_sdk_messages` applies the chunks to
build ``UIMessage`` objects (``GET /v1/chat/{id}/messages`` folds a log with this encoder).

One run is one assistant message, whose id is the run id. The mapping (docs/integrations.md):

=========================  ===================================================================
our event                  UI message stream chunks
=========================  ===================================================================
``run.started``            ``start`` {messageId: run id}, ``start-step``
``message.delta``          ``text-start`` (when no text part is open), ``text-delta``
``reasoning.delta``        ``reasoning-start`` (when none is open), ``reasoning-delta``
``tool.started``           ``tool-input-available`` {toolCallId, toolName, input: args}
``tool.completed``         ``tool-output-available`` {output}, or ``tool-output-error``
                           {errorText: output} when ``is_error``
``approval.requested``     ``tool-input-available`` of a tool named ``approval`` (toolCallId =
                           approval id, input {prompt}) unless a tool is open, then
                           ``tool-approval-request`` {approvalId, toolCallId, reason: prompt},
                           ``finish-step``
``approval.resolved``      ``start-step``, ``tool-approval-response`` {approvalId, approved};
                           the ``approval`` tool then gets ``tool-output-available``
                           {decision} or ``tool-output-denied`` (a denied real tool:
                           ``tool-output-denied``)
``session.title``          ``data-session-title`` {title}, transient
``run.completed``          ``finish-step``, ``finish`` {finishReason: stop}
``run.failed``             ``error`` {errorText}, ``finish-step``, ``finish`` {error}
``run.cancelled``          ``finish-step``, ``abort`` {reason: cancelled}
any other ``x.y``          ``data-x.y`` {data}
=========================  ===================================================================

Text and reasoning parts are closed (``text-end`` / ``reasoning-end``) before any other part
and at the run's end; content after an approval request opens a new step (``start-step``);
tools still open at the run's end get ``tool-output-error``, so no part of a finished message
is left waiting. A stream that reaches an approval still pending *pauses*: it ends with
``finish`` {finishReason: tool-calls}, as ``streamText`` does for a tool approval, and the
client's answer continues it (:meth:`UIMessageEncoder.continue_after`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

from msgspec import Struct, field

from gateway.core.events import TERMINAL, StoredEvent

Chunk = dict[str, Any]
APPROVAL_TOOL = "approval"  # the tool name of an approval that no open tool call carries
DONE = b"data: [DONE]\n\n"
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}  # with content-type text/event-stream


# --- request and response bodies ----------------------------------------------------------------
class UIMessage(Struct, omit_defaults=True):
    """An AI SDK ``UIMessage``: ``parts`` are the SDK's part objects (``text``,
    ``reasoning``, ``step-start``, ``tool-<name>``, ``data-<name>``, …), kept as sent."""

    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]]
    metadata: Any = None


class ChatRequest(Struct):
    """``POST /v1/chat``: the body ``DefaultChatTransport.sendMessages`` sends. ``id`` is the
    chat id, which is the session id. ``message`` alone (the last message, as the SDK's
    resumable-stream guide sends it with ``prepareSendMessagesRequest``) stands for
    ``messages: [message]``; other fields the client adds are ignored."""

    id: str
    messages: list[UIMessage] = field(default_factory=list)
    message: UIMessage | None = None
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    message_id: str | None = field(name="messageId", default=None)
    CODES: ClassVar[dict[str, str]] = {
        "": "invalid_request",
        "id": "invalid_id",
        "messages": "invalid_messages",
        "messages[]": "invalid_messages",
        "message": "invalid_messages",
        "trigger": "invalid_trigger",
    }

    @property
    def history(self) -> list[UIMessage]:
        """The messages sent: ``messages``, else ``[message]``."""
        if self.messages or self.message is None:
            return self.messages
        return [self.message]


def input_text(messages: Sequence[UIMessage]) -> str | None:
    """The run input a request carries: the text parts of its last message when that is a
    user message (joined with blank lines), else None."""
    if not messages or messages[-1].role != "user":
        return None
    texts = [
        p["text"]
        for p in messages[-1].parts
        if p.get("type") == "text" and isinstance(p.get("text"), str)
    ]
    return "\n\n".join(texts)


def approval_answers(messages: Sequence[UIMessage]) -> dict[str, bool]:
    """The approvals a request answers: ``approval id -> approved``, from the tool parts in
    state ``approval-responded`` of its last message when that is an assistant message (the
    client's ``addToolApprovalResponse``; the SDK sends them as the next request)."""
    if not messages or messages[-1].role != "assistant":
        return {}
    out: dict[str, bool] = {}
    for part in messages[-1].parts:
        kind = part.get("type")
        approval = part.get("approval")
        if (
            isinstance(kind, str)
            and (kind.startswith("tool-") or kind == "dynamic-tool")
            and part.get("state") == "approval-responded"
            and isinstance(approval, dict)
            and isinstance(approval.get("id"), str)
            and isinstance(approval.get("approved"), bool)
        ):
            out[approval["id"]] = approval["approved"]
    return out


# --- framing ------------------------------------------------------------------------------------
def sse(chunks: Sequence[Chunk], id: str | None = None) -> str:
    """The SSE text of ``chunks``: one ``data: <json>`` event each (JSON has no raw newline);
    ``id`` (the offset of the event they come from) goes on the last one."""
    frames = [
        f"data: {json.dumps(c, separators=(',', ':'), ensure_ascii=False)}\n\n" for c in chunks
    ]
    if id is not None and frames:
        frames[-1] = f"id: {id}\n{frames[-1]}"
    return "".join(frames)


def error_chunk(text: str) -> Chunk:
    """An ``error`` chunk (the client reports it; the message keeps what it has)."""
    return {"type": "error", "errorText": text}


# --- the encoder --------------------------------------------------------------------------------
class UIMessageEncoder:
    """Turns one run's events into UI message stream chunks (see the module docstring).

    Stateful for one response (open parts, open tools, approvals); deterministic, so a replay
    from ``run.started`` gives the chunks a continuous stream gave. Events of other runs are
    skipped; events without a run (``session.title``, pass-through types) are kept.

    While an approval requested last is unanswered (``awaiting``) later events are held
    back, so a stream paused there (:meth:`pause`) has sent nothing the continuation sends.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.message_id = run_id
        self.finished = False
        self.awaiting: str | None = None
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._silent: set[str] = set()
        self._step = False
        self._text: str | None = None
        self._reasoning: str | None = None
        self._count = 0
        self._open: dict[str, str] = {}  # tool call id -> tool name, started not completed
        self._tools: set[str] = set()
        self._approvals: dict[str, tuple[str, bool]] = {}  # approval id -> (tool call, ours)

    def continue_after(self, approval_ids: Iterable[str]) -> None:
        """Emit nothing until the requests of ``approval_ids`` were fed, then ``start``: the
        continuation of a stream paused at them (the client appends to its message)."""
        self._silent = set(approval_ids)

    def feed_event(self, ev: StoredEvent) -> list[Chunk]:
        """The chunks of one stored event (its data is JSON text)."""
        if self.finished or (ev.run_id and ev.run_id != self.run_id):
            return []
        try:
            data = json.loads(ev.data)
        except ValueError:
            data = {}
        return self.feed(ev.type, data if isinstance(data, dict) else {})

    def feed(self, type_: str, data: dict[str, Any]) -> list[Chunk]:
        """The chunks of one event of this run (``type_``, ``data``)."""
        if self.finished:
            return []
        if self.awaiting is not None:
            resolves = type_ == "approval.resolved" and data.get("approval_id") == self.awaiting
            if not resolves and type_ not in TERMINAL:
                self._held.append((type_, data))
                return []
            # The answer (or the run's end) releases what was held, each event in turn.
            self.awaiting = None
            held, self._held = self._held, []
            queue = [(type_, data), *held] if resolves else [*held, (type_, data)]
            out: list[Chunk] = []
            for t, d in queue:
                out += self.feed(t, d)
            return out
        return self._filter(type_, data, self._map(type_, data))

    def _filter(self, type_: str, data: dict[str, Any], out: list[Chunk]) -> list[Chunk]:
        if not self._silent:
            return out
        if type_ == "approval.requested":
            self._silent.discard(data.get("approval_id", ""))
            if not self._silent:
                return [{"type": "start", "messageId": self.message_id}]
        return []

    def pause(self) -> list[Chunk]:
        """End the stream at the pending approval: ``finish`` {tool-calls}."""
        self.finished = True
        return [{"type": "finish", "finishReason": "tool-calls"}]

    def fail(self, text: str) -> list[Chunk]:
        """End the stream with an error the log cannot avoid (e.g. the run was trimmed)."""
        self.finished = True
        return [error_chunk(text)]

    # --- mapping ---
    def _new_id(self, kind: str) -> str:
        self._count += 1
        return f"{kind}-{self._count}"

    def _close_parts(self) -> list[Chunk]:
        out: list[Chunk] = []
        if self._text is not None:
            out.append({"type": "text-end", "id": self._text})
            self._text = None
        if self._reasoning is not None:
            out.append({"type": "reasoning-end", "id": self._reasoning})
            self._reasoning = None
        return out

    def _content(self) -> list[Chunk]:
        """Open a step for content that follows an approval request."""
        if self._step:
            return []
        self._step = True
        return [{"type": "start-step"}]

    def _map(self, type_: str, data: dict[str, Any]) -> list[Chunk]:
        if type_ == "run.started":
            self._step = True
            return [{"type": "start", "messageId": self.message_id}, {"type": "start-step"}]
        if type_ == "message.delta" or type_ == "reasoning.delta":
            return self._delta(type_ == "reasoning.delta", _text(data.get("text")))
        if type_ in TERMINAL:
            return self._end(type_, data)
        if type_ == "session.title":
            title = {"title": _text(data.get("title"))}
            return [{"type": "data-session-title", "data": title, "transient": True}]
        out = self._content()
        if type_ == "tool.started":
            out += self._tool_started(data)
        elif type_ == "tool.completed":
            out += self._tool_completed(data)
        elif type_ == "approval.requested":
            out += self._approval_requested(data)
        elif type_ == "approval.resolved":
            out += self._approval_resolved(data)
        else:
            out += self._close_parts()
            out.append({"type": f"data-{type_}", "data": data})
        return out

    def _delta(self, reasoning: bool, text: str) -> list[Chunk]:
        out = self._content()
        if reasoning:
            if self._text is not None:
                out += self._close_parts()
            if self._reasoning is None:
                self._reasoning = self._new_id("reasoning")
                out.append({"type": "reasoning-start", "id": self._reasoning})
            out.append({"type": "reasoning-delta", "id": self._reasoning, "delta": text})
        else:
            if self._reasoning is not None:
                out += self._close_parts()
            if self._text is None:
                self._text = self._new_id("text")
                out.append({"type": "text-start", "id": self._text})
            out.append({"type": "text-delta", "id": self._text, "delta": text})
        return out

    def _input(self, call_id: str, name: str, args: Any) -> Chunk:
        self._open[call_id] = name
        self._tools.add(call_id)
        return {
            "type": "tool-input-available",
            "toolCallId": call_id,
            "toolName": name,
            "input": args,
        }

    def _tool_started(self, data: dict[str, Any]) -> list[Chunk]:
        call_id = data.get("tool_call_id")
        if not isinstance(call_id, str) or call_id in self._tools:
            return []
        args = data.get("args")
        name = _text(data.get("name")) or "tool"
        return [
            *self._close_parts(),
            self._input(call_id, name, args if isinstance(args, dict) else {}),
        ]

    def _tool_completed(self, data: dict[str, Any]) -> list[Chunk]:
        call_id = data.get("tool_call_id")
        if not isinstance(call_id, str):
            return []
        out = self._close_parts()
        if call_id not in self._tools:  # its start was trimmed away or never published
            out.append(self._input(call_id, _text(data.get("name")) or "tool", {}))
        elif call_id not in self._open:
            return out  # the first completion stands
        del self._open[call_id]
        output = data.get("output")
        if data.get("is_error") is True:
            out.append(
                {"type": "tool-output-error", "toolCallId": call_id, "errorText": _text(output)}
            )
        else:
            out.append({"type": "tool-output-available", "toolCallId": call_id, "output": output})
        return out

    def _approval_requested(self, data: dict[str, Any]) -> list[Chunk]:
        approval_id = data.get("approval_id")
        if not isinstance(approval_id, str) or approval_id in self._approvals:
            return []
        out = self._close_parts()
        prompt = _text(data.get("prompt"))
        call_id = data.get("tool_call_id")
        if not (isinstance(call_id, str) and call_id in self._open):
            call_id = next(reversed(self._open), None)
        ours = call_id is None
        if call_id is None:
            call_id = approval_id if approval_id not in self._tools else f"approval-{approval_id}"
            out.append(self._input(call_id, APPROVAL_TOOL, {"prompt": prompt}))
        self._approvals[approval_id] = (call_id, ours)
        out.append(
            {
                "type": "tool-approval-request",
                "approvalId": approval_id,
                "toolCallId": call_id,
                "reason": prompt,
            }
        )
        # The answer may come in another request: what follows is a new step.
        out.append({"type": "finish-step"})
        self._step = False
        self.awaiting = approval_id
        return out

    def _approval_resolved(self, data: dict[str, Any]) -> list[Chunk]:
        approval_id = data.get("approval_id")
        decision = data.get("decision")
        known = self._approvals.get(approval_id) if isinstance(approval_id, str) else None
        if known is None or decision not in ("approve", "deny"):
            return []  # its request was trimmed away: no part to answer
        call_id, ours = known
        approved = decision == "approve"
        out: list[Chunk] = [
            {"type": "tool-approval-response", "approvalId": approval_id, "approved": approved}
        ]
        if call_id in self._open and (ours or not approved):
            del self._open[call_id]
            if approved:
                output = {"decision": decision}
                out.append(
                    {"type": "tool-output-available", "toolCallId": call_id, "output": output}
                )
            else:
                out.append({"type": "tool-output-denied", "toolCallId": call_id})
        return out

    def _end(self, type_: str, data: dict[str, Any]) -> list[Chunk]:
        out = self._close_parts()
        status = type_.split(".", 1)[1]
        for call_id in list(self._open):
            text = f"the run was {status} before this tool finished"
            out.append({"type": "tool-output-error", "toolCallId": call_id, "errorText": text})
        self._open.clear()
        if type_ == "run.failed":
            out.append(error_chunk(_text(data.get("error")) or "run failed"))
        if self._step:
            out.append({"type": "finish-step"})
        if type_ == "run.cancelled":
            out.append({"type": "abort", "reason": "cancelled"})
        else:
            reason = "error" if type_ == "run.failed" else "stop"
            out.append({"type": "finish", "finishReason": reason})
        self.finished = True
        return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
