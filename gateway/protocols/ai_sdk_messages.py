"""AI SDK messages: a session's history as the AI SDK's ``UIMessage[]`` (``GET
/v1/chat/{id}/messages``, to seed ``useChat({messages})``).

Each run gives a user message (id ``<run id>-input``, its ``run.started`` input as one text
part) and an assistant message (id: the run id). A run whose events are in the log is
encoded with :class:`~gateway.protocols.ai_sdk.UIMessageEncoder` and its chunks applied
the way the SDK's ``processUIMessageStream`` applies them, so the message equals what a
client that streamed the run holds. A run the log no longer holds from its start (retention
trimmed it into the snapshot) is rebuilt from the folded snapshot: the same parts, without
their interleaving (reasoning, tools, approvals, then text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.core.events import TERMINAL, StoredEvent
from gateway.protocols.ai_sdk import APPROVAL_TOOL, Chunk, UIMessageEncoder

Message = dict[str, Any]


def user_message(run_id: str, text: str) -> Message:
    """The user message of a run."""
    return {"id": f"{run_id}-input", "role": "user", "parts": [{"type": "text", "text": text}]}


class MessageBuilder:
    """Applies UI message stream chunks to one assistant message, as the SDK's
    ``processUIMessageStream`` does (fields the SDK leaves undefined are left out)."""

    def __init__(self, message_id: str) -> None:
        self.parts: list[dict[str, Any]] = []
        self.message: Message = {"id": message_id, "role": "assistant", "parts": self.parts}
        self._active: dict[str, dict[str, Any]] = {}

    def _tool(self, call_id: object) -> dict[str, Any] | None:
        for part in reversed(self.parts):
            found: dict[str, Any] = part
            if "state" in found and found.get("toolCallId") == call_id:
                return found
        return None

    def apply(self, chunk: Chunk) -> None:
        """Apply one chunk (unknown chunks and ids are ignored, never raised)."""
        kind = chunk["type"]
        if kind == "start":
            self.message["id"] = chunk.get("messageId", self.message["id"])
        elif kind == "start-step":
            self.parts.append({"type": "step-start"})
        elif kind in ("text-start", "reasoning-start"):
            part: dict[str, Any] = {"type": kind[:-6], "text": "", "state": "streaming"}
            if kind == "reasoning-start":
                part["id"] = chunk["id"]
            self._active[f"{kind[:-6]}:{chunk['id']}"] = part
            self.parts.append(part)
        elif kind in ("text-delta", "reasoning-delta"):
            active = self._active.get(f"{kind[:-6]}:{chunk['id']}")
            if active is not None:
                active["text"] += chunk["delta"]
        elif kind in ("text-end", "reasoning-end"):
            active = self._active.pop(f"{kind[:-4]}:{chunk['id']}", None)
            if active is not None:
                active["state"] = "done"
        elif kind.startswith("tool-"):
            self._apply_tool(kind, chunk)
        elif kind.startswith("data-") and not chunk.get("transient"):
            self.parts.append({"type": kind, "data": chunk.get("data")})

    def _apply_tool(self, kind: str, chunk: Chunk) -> None:
        if kind == "tool-input-available":
            part = self._tool(chunk["toolCallId"])
            if part is None:
                part = {"type": f"tool-{chunk['toolName']}", "toolCallId": chunk["toolCallId"]}
                self.parts.append(part)
            part.update(state="input-available", input=chunk.get("input"))
        elif kind == "tool-approval-request":
            part = self._tool(chunk["toolCallId"])
            if part is not None:
                part["state"] = "approval-requested"
                part["approval"] = {"id": chunk["approvalId"]}
                if chunk.get("reason") is not None:
                    part["approval"]["requestReason"] = chunk["reason"]
        elif kind == "tool-approval-response":
            for part in self.parts:
                approval = part.get("approval")
                if isinstance(approval, dict) and approval.get("id") == chunk["approvalId"]:
                    part["state"] = "approval-responded"
                    approval["approved"] = chunk["approved"]
        else:
            part = self._tool(chunk["toolCallId"])
            if part is None:
                return
            part.pop("output", None)
            part.pop("errorText", None)
            if kind == "tool-output-available":
                part.update(state="output-available", output=chunk.get("output"))
            elif kind == "tool-output-error":
                part.update(state="output-error", errorText=chunk["errorText"])
            elif kind == "tool-output-denied":
                part["state"] = "output-denied"


def run_messages(run_id: str, events: Iterable[StoredEvent]) -> list[Message]:
    """The user and assistant messages of one run, from its events (``run.started`` first)."""
    encoder = UIMessageEncoder(run_id)
    builder = MessageBuilder(encoder.message_id)
    out: list[Message] = []
    for ev in events:
        if ev.type == "run.started" and not out:
            text = _json(ev.data).get("input")
            out.append(user_message(run_id, text if isinstance(text, str) else ""))
        for chunk in encoder.feed_event(ev):
            builder.apply(chunk)
    if builder.parts:
        out.append(builder.message)
    return out


def snapshot_messages(run: dict[str, Any]) -> list[Message]:
    """The messages of a run the log no longer holds from its start, from its folded state
    (``runs[]`` of the snapshot, docs/api.md)."""
    run_id = str(run.get("run_id"))
    parts: list[dict[str, Any]] = [{"type": "step-start"}]
    if run.get("reasoning"):
        # The id the encoder gives a run's first part (reasoning comes first in most runs).
        parts.append(
            {"type": "reasoning", "id": "reasoning-1", "text": run["reasoning"], "state": "done"}
        )
    for tool in run.get("tools", []):
        part: dict[str, Any] = {
            "type": f"tool-{tool.get('name') or 'tool'}",
            "toolCallId": tool.get("tool_call_id"),
            "input": tool.get("args", {}),
        }
        if tool.get("status") != "completed":
            part["state"] = "input-available"
        elif tool.get("is_error"):
            part.update(state="output-error", errorText=tool.get("output") or "")
        else:
            part.update(state="output-available", output=tool.get("output"))
        parts.append(part)
    for appr in run.get("approvals", []):
        decision = appr.get("decision")
        part = {
            "type": f"tool-{APPROVAL_TOOL}",
            "toolCallId": appr.get("approval_id"),
            "input": {"prompt": appr.get("prompt", "")},
            "approval": {"id": appr.get("approval_id"), "requestReason": appr.get("prompt", "")},
        }
        if decision is None:
            part["state"] = "approval-requested"
        else:
            part["approval"]["approved"] = decision == "approve"
            if decision == "approve":
                part.update(state="output-available", output={"decision": decision})
            else:
                part["state"] = "output-denied"
        parts.append(part)
    if run.get("text"):
        parts.append({"type": "text", "text": run["text"], "state": "done"})
    return [
        user_message(run_id, str(run.get("input") or "")),
        {"id": run_id, "role": "assistant", "parts": parts},
    ]


def session_messages(
    events: Iterable[StoredEvent], snapshot_runs: Sequence[dict[str, Any]] = ()
) -> list[Message]:
    """A session's ``UIMessage[]``: first the runs of ``snapshot_runs`` (the snapshot's
    ``runs``, passed when the log was trimmed) whose ``run.started`` the log no longer
    holds, then every run the log holds from its start, in order. Events without a run go
    with the run that was active when they were written (as the stream sends them)."""
    runs: dict[str, list[StoredEvent]] = {}
    current: str | None = None
    for ev in events:
        if ev.type == "run.started" and ev.run_id and ev.run_id not in runs:
            runs[ev.run_id] = []
            current = ev.run_id
        if ev.run_id in runs:
            runs[ev.run_id].append(ev)
            if ev.type in TERMINAL and ev.run_id == current:
                current = None
        elif not ev.run_id and current is not None:
            runs[current].append(ev)
    out = [
        m for run in snapshot_runs if run.get("run_id") not in runs for m in snapshot_messages(run)
    ]
    for run_id, evs in runs.items():
        out += run_messages(run_id, evs)
    return out


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
