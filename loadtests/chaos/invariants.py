"""What a chaos run must leave behind, checked once the faults stopped and the timeouts
passed, against Redis directly (never through the proxy). Each violation names its session
and carries an excerpt of the log around it."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from gateway.core.events import StoredEvent
from gateway.store import Store
from loadtests.chaos.traffic import Viewer

TERMINALS = ("run.completed", "run.failed", "run.cancelled")


@dataclass
class Violation:
    """One broken invariant: which, where, and the log lines that show it."""

    invariant: str
    session_id: str
    detail: str
    excerpt: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"[{self.invariant}] session {self.session_id}: {self.detail}"]
        lines += [f"    {line}" for line in self.excerpt]
        return "\n".join(lines)


def _line(ev: StoredEvent) -> str:
    data = ev.data if len(ev.data) <= 100 else ev.data[:97] + "..."
    return f"{ev.seq:>5} {ev.type:<20} {ev.run_id:<16} {data}"


def _excerpt(log: list[StoredEvent], seqs: list[int], around: int = 2) -> list[str]:
    keep = sorted({s + d for s in seqs for d in range(-around, around + 1)})
    by_seq = {e.seq: e for e in log}
    return [_line(by_seq[s]) for s in keep if s in by_seq]


@dataclass
class Logs:
    """Every session's whole log and metadata, read once."""

    events: dict[str, list[StoredEvent]]
    epochs: dict[str, str]
    status: dict[str, str]
    heads: dict[str, int]
    runs: dict[str, str] = field(default_factory=dict)  # sid -> the active run's lease state

    @classmethod
    async def read(cls, store: Store, sessions: list[str]) -> Logs:
        events, epochs, status, heads, runs = {}, {}, {}, {}, {}
        for sid in sessions:
            meta = await store.sessions.meta(sid)
            events[sid] = await store.sessions.read(sid, 0, 1_000_000)
            epochs[sid] = meta.epoch if meta else ""
            status[sid] = meta.status if meta else "missing"
            heads[sid] = meta.seq if meta else 0
            if meta is not None and meta.status == "running":
                runs[sid] = (
                    f"run {meta.run_id}, holder {await store.sessions.run_holder(sid)!r}, "
                    f"lease {await store.sessions.lease_holder(sid)!r}, "
                    f"cancel requested {meta.cancel_requested == meta.run_id}"
                )
        return cls(events, epochs, status, heads, runs)

    def head_offset(self, sid: str) -> str:
        return f"{self.epochs[sid]}_{self.heads[sid]:012d}"


def check_runs(logs: Logs, accepted: dict[str, list[str]]) -> list[Violation]:
    """Every 202 run is in the log; every run has exactly one terminal and nothing after
    it; no session is left running."""
    out = []
    for sid, log in logs.events.items():
        if logs.status[sid] != "idle":
            out.append(
                Violation(
                    "no_session_running",
                    sid,
                    f"status {logs.status[sid]}: {logs.runs.get(sid, '')}",
                    [_line(e) for e in log[-5:]],
                )
            )
        started: dict[str, int] = {}
        terminal: dict[str, list[int]] = {}
        after: dict[str, list[int]] = {}
        for ev in log:
            if not ev.run_id:
                continue
            if ev.type == "run.started":
                started[ev.run_id] = ev.seq
            if ev.run_id in terminal:
                after.setdefault(ev.run_id, []).append(ev.seq)
            if ev.type in TERMINALS:
                terminal.setdefault(ev.run_id, []).append(ev.seq)
        for run_id in accepted.get(sid, []):
            if run_id not in started:
                out.append(Violation("accepted_run_logged", sid, f"run {run_id} got 202"))
        for run_id, seq in started.items():
            ends = terminal.get(run_id, [])
            if len(ends) != 1:
                out.append(
                    Violation(
                        "one_terminal_per_run",
                        sid,
                        f"run {run_id} has {len(ends)} terminal events",
                        _excerpt(log, [seq, *ends]),
                    )
                )
            if after.get(run_id):
                extra = after[run_id]
                out.append(
                    Violation(
                        "nothing_after_terminal",
                        sid,
                        f"run {run_id} has {len(extra)} events after its terminal",
                        _excerpt(log, [*ends[:1], *extra[:3]]),
                    )
                )
    return out


def check_logs(logs: Logs, first_epochs: dict[str, str]) -> list[Violation]:
    """Each log is gap-free (1..head) and kept its epoch."""
    out = []
    for sid, log in logs.events.items():
        seqs = [e.seq for e in log]
        if seqs != list(range(1, len(seqs) + 1)) or len(seqs) != logs.heads[sid]:
            gaps = [b for a, b in itertools.pairwise(seqs) if b != a + 1]
            out.append(
                Violation(
                    "gap_free_log",
                    sid,
                    f"{len(seqs)} events, head {logs.heads[sid]}",
                    _excerpt(log, gaps[:3]),
                )
            )
        first = first_epochs.get(sid)
        if first and first != logs.epochs[sid]:
            out.append(Violation("one_epoch", sid, f"epoch {first} -> {logs.epochs[sid]}"))
    return out


def check_viewers(logs: Logs, viewers: list[Viewer]) -> list[Violation]:
    """After dropping repeats by offset, every viewer saw a gap-free prefix of its log,
    never a reset, and caught up to the end."""
    out = []
    for i, v in enumerate(viewers):
        log = logs.events[v.sid]
        name = f"viewer {i} ({v.cid})"
        if v.resets:
            out.append(Violation("no_reset", v.sid, f"{name} got resets at {v.resets[:3]}"))
        epoch = logs.epochs[v.sid]
        last = 0
        for off in v.received:
            e, _, s = off.partition("_")
            seq = int(s)
            if e != epoch:
                out.append(Violation("one_epoch", v.sid, f"{name} received {off}"))
                break
            if seq <= last:
                continue  # a repeat: at-least-once delivery, dropped by offset
            if seq != last + 1:
                out.append(
                    Violation(
                        "viewer_gap_free",
                        v.sid,
                        f"{name} jumped {last} -> {seq}",
                        _excerpt(log, [last, seq]),
                    )
                )
                break
            last = seq
        if last != logs.heads[v.sid]:
            out.append(
                Violation(
                    "viewer_caught_up", v.sid, f"{name} ended at {last} of {logs.heads[v.sid]}"
                )
            )
    return out


def summary(logs: Logs) -> dict[str, int]:
    """Counts over every log: events, runs, terminals by kind, approvals."""
    out: dict[str, int] = {"events": 0, "runs": 0}
    for log in logs.events.values():
        out["events"] += len(log)
        for ev in log:
            if ev.type == "run.started":
                out["runs"] += 1
            elif ev.type in TERMINALS:
                kind = ev.type
                if ev.type == "run.failed" and json.loads(ev.data).get("reason") == "interrupted":
                    kind = "run.failed (interrupted)"
                out[kind] = out.get(kind, 0) + 1
            elif ev.type.startswith("approval."):
                out[ev.type] = out.get(ev.type, 0) + 1
    return out
