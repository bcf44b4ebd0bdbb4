"""Fold: a session's state folded from its events, so a new viewer renders at once.

The state shape is documented in docs/api.md ("Snapshot"). The browser client folds the
same events into the same state in ``frontend/gateway-fold.js``; the shared fixtures in
``tests/fixtures/fold/`` and a randomized differential test (tests/test_fold.py) hold the
two to one contract, written down here and in docs/api.md ("Fold contract").

The fold contract
-----------------
The fold is total and deterministic: any sequence of envelopes, from the empty state or from
a snapshot's state (a fold that starts mid-log), gives one state, the same in both folds.
The publish script keeps logs it writes tidy (a run starts at most once and only while no
run is active, it has exactly one terminal and nothing of it is accepted after that, an
approval is answered once and only after its request), but trimmed logs, logs written
before those rules and plain publishers still reach the fold, so every rule below says what
happens on any input. Where the folds used to disagree, the decision and its reason:

1.  Which events count. ``session.title`` sets the title when ``data.title`` is a string
    (else it is ignored); its ``run_id`` does not matter. The other ten documented types
    are run events: one without a run id (null, absent, ``""`` as stored, or not a string)
    is ignored, since there is no run to put it in (Python used to make a run with id
    None). Any other type (``vendor.x``) is ignored and creates nothing. Data that is not
    a JSON object counts as ``{}``.
2.  Malformed fields. A field of the wrong JSON type counts as absent, and absent fields
    take their defaults: strings ``""`` (``input``, ``text``, ``name``, ``prompt``), ``args``
    ``{}``, ``output`` / ``error`` / ``duration_ms`` null, ``is_error`` true only for JSON
    ``true`` (the folds used Python's and JavaScript's truthiness, which differ). A tool
    event without a string ``tool_call_id``, an approval event without a string
    ``approval_id`` and an ``approval.resolved`` whose ``decision`` is not ``approve`` or
    ``deny`` are ignored: they address nothing (the publish script refuses all of them).
3.  Lazily created runs. A run event of an unknown run id appends that run (status
    ``running``, input ``""``) and folds the event into it, but does NOT make the session
    running nor change ``current_run`` (the browser fold did): only ``run.started`` starts
    the session's run. That is what the gateway's own session metadata says (the publish
    script accepts such events but leaves the session's status alone), so the sidebar,
    ``POST …/cancel`` and the viewer agree; a run whose start was never seen may well have
    ended long ago.
4.  ``run.started`` makes its run the session's current run and the session running, and
    sets the run's input when ``data.input`` is a string (so a lazily created run gets its
    input when its start arrives). A run that has ended never starts again (see 6).
5.  Terminals (``run.completed``, ``run.failed``, ``run.cancelled``; the one table is
    ``gateway.core.events.TERMINAL_STATUS``) set the run's status (and, for ``run.failed``,
    its ``error``) and drop that run's pending approvals. Only the terminal of the
    session's current run makes the session idle with ``current_run`` null; a late
    terminal of an older or lazily created run ends that run only (the browser fold idled
    the session on any terminal). Again what the publish script does with the metadata.
6.  A terminal is final. The first terminal of a run decides its status; after it, every
    event of that run (a second terminal, a ``run.started``, deltas, tools, approvals) is
    ignored (both folds used to overwrite: a late ``run.cancelled`` turned a completed run
    into a cancelled one, a ``run.started`` revived it in the browser). This is the publish
    script's ``run_ended`` rule, applied to logs that predate it. A run "has ended" when
    its status is not ``running``.
7.  Tools are keyed by ``tool_call_id`` within their run (the first entry with that id).
    ``tool.started`` of an id the run already lists is a duplicate and ignored (Python
    appended a second entry, the browser overwrote name and args). ``tool.completed``
    completes a running entry; of an entry already completed it is ignored (first
    completion stands); of an unknown id (its start trimmed away, or never published) it
    appends a completed entry with name ``""`` and args ``{}``, so the output is shown
    (Python dropped it; the browser took undocumented ``name``/``args`` from the
    completion).
8.  Approvals are keyed by ``approval_id`` within their run for ``runs[].approvals`` and by
    ``approval_id`` alone for ``pending_approvals`` (the gateway answers
    ``POST …/approvals/{id}`` by id). ``approval.requested`` of an id the run already lists
    is a duplicate and ignored (Python appended duplicates to both lists); otherwise the
    entry is appended undecided and becomes the one pending entry of that id (an entry of
    the same id pending for another run is replaced, as the gateway re-points the id to
    the latest requesting run). ``approval.resolved`` of an entry already decided is
    ignored (first decision stands, as ``409 approval_already_resolved``); otherwise it
    sets the decision, appending an entry with prompt ``""`` when the run does not list
    the id (the request was trimmed away: the decision is still shown), and removes the
    id from ``pending_approvals``.
9.  Order. ``runs`` keep the order in which each run was first seen; tools and approvals
    the order in which each id was first seen; a new pending entry goes last.

The Python fold mutates and returns the state; the browser fold is pure.
"""

from __future__ import annotations

from typing import Any

from gateway.core.events import TERMINAL_STATUS

State = dict[str, Any]

# The run events the fold knows; every other type but session.title is ignored.
RUN_EVENTS = frozenset(
    {
        "run.started",
        "message.delta",
        "reasoning.delta",
        "tool.started",
        "tool.completed",
        "approval.requested",
        "approval.resolved",
        *TERMINAL_STATUS,
    }
)
DECISIONS = ("approve", "deny")


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


def _new_run(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "input": "",
        "status": "running",
        "text": "",
        "reasoning": "",
        "error": None,
        "tools": [],
        "approvals": [],
    }


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> int | float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _find(items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any] | None:
    for item in items:
        if item.get(key) == value:
            return item
    return None


def _find_run(state: State, run_id: str) -> dict[str, Any] | None:
    for run in reversed(state["runs"]):
        if run["run_id"] == run_id:
            return run  # type: ignore[no-any-return]
    return None


def apply(state: State, type_: str, run_id: str | None, data: Any) -> State:
    """Fold one event into ``state`` (mutated and returned), by the contract above."""
    if not isinstance(data, dict):
        data = {}
    if type_ == "session.title":
        title = data.get("title")
        if isinstance(title, str):
            state["title"] = title
        return state
    if type_ not in RUN_EVENTS or not isinstance(run_id, str) or not run_id:
        return state
    if type_ in ("tool.started", "tool.completed"):
        key = data.get("tool_call_id")
        if not isinstance(key, str):
            return state
    elif type_ in ("approval.requested", "approval.resolved"):
        key = data.get("approval_id")
        if not isinstance(key, str):
            return state
        if type_ == "approval.resolved" and data.get("decision") not in DECISIONS:
            return state
    run = _find_run(state, run_id)
    if run is None:
        run = _new_run(run_id)
        state["runs"].append(run)
    elif run["status"] != "running":
        return state  # a terminal is final

    if type_ == "run.started":
        if isinstance(data.get("input"), str):
            run["input"] = data["input"]
        state["status"], state["current_run"] = "running", run_id
    elif type_ == "message.delta":
        run["text"] += _str(data.get("text"))
    elif type_ == "reasoning.delta":
        run["reasoning"] += _str(data.get("text"))
    elif type_ == "tool.started":
        if _find(run["tools"], "tool_call_id", key) is None:
            args = data.get("args")
            run["tools"].append(
                {
                    "tool_call_id": key,
                    "name": _str(data.get("name")),
                    "args": args if isinstance(args, dict) else {},
                    "status": "running",
                    "output": None,
                    "is_error": False,
                    "duration_ms": None,
                }
            )
    elif type_ == "tool.completed":
        tool = _find(run["tools"], "tool_call_id", key)
        if tool is None:
            tool = {"tool_call_id": key, "name": "", "args": {}}
            run["tools"].append(tool)
        elif tool["status"] != "running":
            return state  # first completion stands
        tool.update(
            status="completed",
            output=_opt_str(data.get("output")),
            is_error=data.get("is_error") is True,
            duration_ms=_number(data.get("duration_ms")),
        )
    elif type_ == "approval.requested":
        if _find(run["approvals"], "approval_id", key) is None:
            prompt = _str(data.get("prompt"))
            run["approvals"].append({"approval_id": key, "prompt": prompt, "decision": None})
            state["pending_approvals"] = [
                p for p in state["pending_approvals"] if p["approval_id"] != key
            ]
            state["pending_approvals"].append(
                {"approval_id": key, "run_id": run_id, "prompt": prompt}
            )
    elif type_ == "approval.resolved":
        appr = _find(run["approvals"], "approval_id", key)
        if appr is None:
            appr = {"approval_id": key, "prompt": ""}
            run["approvals"].append(appr)
        elif appr["decision"] is not None:
            return state  # first decision stands
        appr["decision"] = data["decision"]
        state["pending_approvals"] = [
            p for p in state["pending_approvals"] if p["approval_id"] != key
        ]
    else:  # a terminal
        run["status"] = TERMINAL_STATUS[type_]
        if type_ == "run.failed":
            run["error"] = _opt_str(data.get("error"))
        if state["current_run"] == run_id:
            state["status"], state["current_run"] = "idle", None
        state["pending_approvals"] = [
            p for p in state["pending_approvals"] if p["run_id"] != run_id
        ]
    return state
