"""Snapshot: a session's state folded from its events, so a new viewer renders at once.

The state shape (documented in docs/api.md) is the same one the browser client folds in
``frontend/gateway-fold.js``; the two folds must agree. A snapshot is stored with its
offset and extended from there on the next request, so its cost follows new events only.
"""

from __future__ import annotations

import json
from typing import Any

from gateway import offsets
from gateway.streams import Streams

State = dict[str, Any]
_TERMINAL_STATUS = {
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}


def empty_state(session_id: str) -> State:
    """The state of a session with no events."""
    return {
        "session_id": session_id,
        "status": "idle",
        "title": "",
        "current_run": None,
        "runs": [],
        "pending_approvals": [],
    }


def _run(state: State, run_id: str | None) -> dict[str, Any]:
    for run in reversed(state["runs"]):
        if run["run_id"] == run_id:
            return run  # type: ignore[no-any-return]
    run = {
        "run_id": run_id,
        "input": "",
        "status": "running",
        "text": "",
        "reasoning": "",
        "error": None,
        "tools": [],
        "approvals": [],
    }
    state["runs"].append(run)
    return run


def apply(state: State, type_: str, run_id: str | None, data: dict[str, Any]) -> State:
    """Fold one event into ``state`` (mutated and returned). Unknown types are ignored."""
    if type_ == "session.title":
        state["title"] = data.get("title", "")
        return state
    if type_ == "run.started":
        run = _run(state, run_id)
        run["input"] = data.get("input", "")
        state["status"], state["current_run"] = "running", run_id
    elif type_ in ("message.delta", "reasoning.delta"):
        key = "text" if type_ == "message.delta" else "reasoning"
        run = _run(state, run_id)
        run[key] += data.get("text", "")
    elif type_ == "tool.started":
        _run(state, run_id)["tools"].append(
            {
                "tool_call_id": data.get("tool_call_id"),
                "name": data.get("name"),
                "args": data.get("args", {}),
                "status": "running",
                "output": None,
                "is_error": False,
                "duration_ms": None,
            }
        )
    elif type_ == "tool.completed":
        for tool in _run(state, run_id)["tools"]:
            if tool["tool_call_id"] == data.get("tool_call_id"):
                tool.update(
                    status="completed",
                    output=data.get("output"),
                    is_error=bool(data.get("is_error")),
                    duration_ms=data.get("duration_ms"),
                )
    elif type_ == "approval.requested":
        aid, prompt = data.get("approval_id"), data.get("prompt", "")
        _run(state, run_id)["approvals"].append(
            {"approval_id": aid, "prompt": prompt, "decision": None}
        )
        state["pending_approvals"].append({"approval_id": aid, "run_id": run_id, "prompt": prompt})
    elif type_ == "approval.resolved":
        aid = data.get("approval_id")
        for appr in _run(state, run_id)["approvals"]:
            if appr["approval_id"] == aid:
                appr["decision"] = data.get("decision")
        state["pending_approvals"] = [
            p for p in state["pending_approvals"] if p["approval_id"] != aid
        ]
    elif type_ in _TERMINAL_STATUS:
        run = _run(state, run_id)
        run["status"] = _TERMINAL_STATUS[type_]
        if type_ == "run.failed":
            run["error"] = data.get("error")
        if state["current_run"] == run_id:
            state["status"], state["current_run"] = "idle", None
        state["pending_approvals"] = [
            p for p in state["pending_approvals"] if p["run_id"] != run_id
        ]
    return state


async def compact(streams: Streams, session_id: str, keep: int, ttl_s: float) -> int:
    """After a run ends: fold the session into its stored snapshot, then trim the log to
    its last ``keep`` events and set the session's idle TTL. Returns the events trimmed.

    A viewer whose offset falls before the kept events gets a ``reset`` to the snapshot, which
    holds everything they summarise. Memory per finished session is then at most ``keep``
    log entries plus the snapshot (the folded transcript).
    """
    res = await load(streams, session_id)
    if res is None:
        return 0
    head = offsets.parse(res[0]).seq
    return await streams.compact(session_id, max(1, head - keep + 1), ttl_s)


async def load(streams: Streams, session_id: str, page: int = 1000) -> tuple[str, State] | None:
    """The session's state at its latest offset, as ``(offset, state)``; None if unknown.

    Starts from the stored snapshot when it belongs to the current epoch, folds newer
    events, and stores the result. If the log was trimmed past the stored snapshot the
    state carries ``"truncated": true`` (older events are gone).
    """
    meta = await streams.meta(session_id)
    if meta is None:
        return None
    state = empty_state(session_id)
    seq = 0
    stored = await streams.load_snapshot(session_id)
    if stored is not None:
        off = offsets.parse(stored[0])
        if off.epoch == meta.epoch and off.seq <= meta.seq:
            seq, state = off.seq, json.loads(stored[1])
    if seq + 1 < meta.first_seq:
        state["truncated"] = True
    start_seq = seq
    while True:
        batch = await streams.read(session_id, seq, page)
        for ev in batch:
            apply(state, ev.type, ev.run_id or None, json.loads(ev.data))
            seq = ev.seq
        if len(batch) < page:
            break
    offset = offsets.format_offset(meta.epoch, seq)
    if seq != start_seq:
        await streams.save_snapshot(session_id, offset, json.dumps(state, separators=(",", ":")))
    return offset, state
