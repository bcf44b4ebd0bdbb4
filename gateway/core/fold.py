"""Fold: a session's state folded from its events, so a new viewer renders at once.

The state shape is documented in docs/api.md ("Snapshot"). The browser client folds the
same events into the same state in ``frontend/gateway-fold.js``; the shared fixtures in
``tests/fixtures/fold/`` and a randomized differential test hold the two to one contract.
"""

from __future__ import annotations

from typing import Any

from gateway.core.events import TERMINAL_STATUS

State = dict[str, Any]


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
    elif type_ in TERMINAL_STATUS:
        run = _run(state, run_id)
        run["status"] = TERMINAL_STATUS[type_]
        if type_ == "run.failed":
            run["error"] = data.get("error")
        if state["current_run"] == run_id:
            state["status"], state["current_run"] = "idle", None
        state["pending_approvals"] = [
            p for p in state["pending_approvals"] if p["run_id"] != run_id
        ]
    return state
