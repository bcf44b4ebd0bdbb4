"""The fold contract (gateway/core/fold.py, docs/api.md "Fold contract"), held by both folds.

* Every shared fixture in tests/fixtures/fold/ against the Python fold, and (through
  ``node --test tests/node/fold.test.mjs``) against the browser fold.
* A randomized differential test: seeded event sequences (every event type, unknown types,
  duplicate and unknown ids, interleaved runs, terminals in any order, malformed data, folds
  from a snapshot's state) folded by both, compared state by state. The browser fold runs
  in one Node process for all sequences (tests/node/fold_cli.mjs). ``FOLD_DIFF_SEED`` and
  ``FOLD_DIFF_CASES`` change the seed and the number of sequences.
* The browser fold's terminal table equals ``gateway.core.events.TERMINAL_STATUS``.

Node is required (CI installs it): these tests fail, never skip, without it.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.core import events, fold

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "fold").glob("*.json"))
NODE_TEST = "tests/node/fold.test.mjs"
FOLD_CLI = ROOT / "tests" / "node" / "fold_cli.mjs"
# Tests in fold.test.mjs besides one per fixture (its EXTRA_TESTS).
NODE_EXTRA_TESTS = 3

SEED = int(os.environ.get("FOLD_DIFF_SEED", "20251130"))
CASES = int(os.environ.get("FOLD_DIFF_CASES", "1000"))


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser fold cannot be checked (CI installs it)")
    return node


def _canon(value: Any) -> Any:
    """A JSON value in a form where equality is JSON equality: ``true`` is not ``1``
    (as in Python), and ``1`` equals ``1.0`` (JavaScript has one number type)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    raise TypeError(f"not a JSON value: {value!r}")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(_canon(a), sort_keys=True) == json.dumps(_canon(b), sort_keys=True)


def fold_py(case: dict[str, Any]) -> dict[str, Any]:
    """The Python fold of a case (its initial state, or the empty one, then its events)."""
    initial = case.get("initial")
    state = copy.deepcopy(initial) if initial is not None else fold.empty_state(case["session_id"])
    for env in case["events"]:
        state = fold.apply(state, env["type"], env.get("run_id"), copy.deepcopy(env.get("data")))
    # What a snapshot stores and serves: the JSON text of the state.
    return json.loads(json.dumps(state))  # type: ignore[no-any-return]


def fold_js(cases: list[dict[str, Any]], tmp_path: Path | None = None) -> dict[str, Any]:
    """Fold ``cases`` with the browser fold, all in one Node process."""
    payload = json.dumps({"cases": cases}, ensure_ascii=False)
    if tmp_path is not None:
        (tmp_path / "fold_cases.json").write_text(payload, encoding="utf-8")
    proc = subprocess.run(
        [_node(), str(FOLD_CLI)],
        input=payload.encode("utf-8"),
        capture_output=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out: dict[str, Any] = json.loads(proc.stdout)
    assert len(out["results"]) == len(cases)
    return out


# --- shared fixtures --------------------------------------------------------------------------


def test_fixtures_exist() -> None:
    assert len(FIXTURES) >= 20


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_python(path: Path) -> None:
    fx = json.loads(path.read_text(encoding="utf-8"))
    assert set(fx) <= {"description", "session_id", "events", "initial", "expected"}
    assert fx["description"] and fx["events"] is not None
    got = fold_py(fx)
    assert _same(got, fx["expected"]), (
        f"{fx['description']}\n got: {json.dumps(got)}\nwant: {json.dumps(fx['expected'])}"
    )


def test_fixtures_node() -> None:
    """Every fixture against the browser fold, with Node's own test runner."""
    proc = subprocess.run(
        [_node(), "--test", "--test-reporter=tap", NODE_TEST],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out

    def count(name: str) -> int:
        m = re.search(rf"^# {name} (\d+)$", proc.stdout, re.M)
        assert m, out
        return int(m.group(1))

    expected = len(FIXTURES) + NODE_EXTRA_TESTS
    assert (count("tests"), count("pass"), count("fail")) == (expected, expected, 0), out


# --- one terminal table -----------------------------------------------------------------------


def test_terminal_table_is_the_python_one() -> None:
    out = fold_js([])
    assert out["terminal_status"] == events.TERMINAL_STATUS
    # The documented types are the same set in both folds and in event validation.
    known = set(events._REQUIRED)
    assert set(out["event_types"]) == known
    assert fold.RUN_EVENTS | {"session.title"} == known


# --- randomized differential test -------------------------------------------------------------

RUN_IDS = ["r1", "r2", "r3", "r4"]
TOOL_IDS = ["c1", "c2", "c3"]
APPROVAL_IDS = ["a1", "a2", "a3"]
TEXTS = ["", "a", "b", "lo ", "Hé", "😀", "\n", "a\u0000b"]
WEIRD: list[Any] = [None, 0, 1, -3, 2.5, True, False, "", "x", [], ["x"], {}, {"k": "v"}]
UNKNOWN_TYPES = ["vendor.x", "vendor.progress.tick", "run.startedx", "message", "tool.failed"]
TYPES = [*events._REQUIRED, *UNKNOWN_TYPES]


class Gen:
    """Seeded generator of event sequences that hit every branch of the contract."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq = 0

    def maybe(self, good: Any, p_weird: float = 0.08) -> Any:
        return self.rng.choice(WEIRD) if self.rng.random() < p_weird else good

    def run_id(self, pool: list[str]) -> Any:
        r = self.rng.random()
        if r < 0.06:
            return self.rng.choice([None, "", 7, "__absent__"])
        return self.rng.choice(pool)

    def data(self, type_: str) -> Any:
        rng, m = self.rng, self.maybe
        if rng.random() < 0.03:
            return rng.choice([None, [], "text", 3, ["a"]])
        d: dict[str, Any]
        if type_ == "run.started":
            d = {"input": m(rng.choice(["q", "question", ""]))}
        elif type_ in ("message.delta", "reasoning.delta"):
            d = {"text": m(rng.choice(TEXTS))}
        elif type_ == "tool.started":
            d = {
                "tool_call_id": m(rng.choice(TOOL_IDS), 0.05),
                "name": m(rng.choice(["search", "read", ""])),
                "args": m(rng.choice([{}, {"q": "x"}, {"n": [1, 2]}])),
            }
        elif type_ == "tool.completed":
            d = {
                "tool_call_id": m(rng.choice(TOOL_IDS), 0.05),
                "output": m(rng.choice(["ok", "", "error: x"])),
                "is_error": m(rng.choice([True, False])),
                "duration_ms": m(rng.choice([0, 12, 3.5, 1e-3])),
            }
        elif type_ == "approval.requested":
            d = {
                "approval_id": m(rng.choice(APPROVAL_IDS), 0.05),
                "prompt": m(rng.choice(["Allow?", ""])),
            }
        elif type_ == "approval.resolved":
            d = {
                "approval_id": m(rng.choice(APPROVAL_IDS), 0.05),
                "decision": m(rng.choice(["approve", "deny"]), 0.1),
            }
        elif type_ == "session.title":
            d = {"title": m(rng.choice(["T", "Other", ""]))}
        elif type_ == "run.failed":
            d = {"error": m(rng.choice(["boom", ""])), "reason": "interrupted"}
        else:
            d = {rng.choice(["x", "text", "title"]): m("v")} if rng.random() < 0.3 else {}
        for key in list(d):
            if rng.random() < 0.03:
                del d[key]  # a missing field
        return d

    def envelope(self, type_: str, run_id: Any) -> dict[str, Any]:
        self.seq += 1
        env: dict[str, Any] = {
            "offset": f"5f2a9c01_{self.seq:012d}",
            "session_id": "s1",
            "run_id": run_id,
            "type": type_,
            "data": self.data(type_),
            "ts": 1_763_731_200_000 + self.seq,
        }
        if run_id == "__absent__":
            del env["run_id"]
        return env

    def random_events(self, n: int) -> list[dict[str, Any]]:
        """Events of any type, of a few runs, in any order."""
        pool = self.rng.sample(RUN_IDS, self.rng.randint(1, len(RUN_IDS)))
        return [self.envelope(self.rng.choice(TYPES), self.run_id(pool)) for _ in range(n)]

    def lifecycle_events(self, n: int) -> list[dict[str, Any]]:
        """Runs that mostly follow their lifecycle (start, body, one terminal), with
        interleaving, missing starts, duplicates and late or repeated terminals."""
        rng = self.rng
        out: list[dict[str, Any]] = []
        active: list[str] = []
        next_run = 1
        body = [t for t in events._REQUIRED if t not in events.TERMINAL and t != "run.started"]
        while len(out) < n:
            r = rng.random()
            if r < 0.12 or not active:
                run_id = f"r{next_run}"
                next_run += 1
                active.append(run_id)
                if rng.random() < 0.85:  # else: a lazily created run
                    out.append(self.envelope("run.started", run_id))
            elif r < 0.22:
                run_id = rng.choice(active)
                if rng.random() < 0.8:
                    active.remove(run_id)
                out.append(self.envelope(rng.choice(sorted(events.TERMINAL)), run_id))
            elif r < 0.30 and out:
                out.append(copy.deepcopy(rng.choice(out)))  # a duplicate log entry
            elif r < 0.33:
                out.append(self.envelope(rng.choice(UNKNOWN_TYPES), rng.choice(active)))
            else:
                run_id = rng.choice(active) if rng.random() < 0.9 else f"r{rng.randint(1, 6)}"
                out.append(self.envelope(rng.choice(body), self.maybe(run_id, 0.03)))
        if rng.random() < 0.2 and len(out) > 2:  # out of order
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        return out

    def quirky(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state as older gateways may have stored it: duplicate entries, a run
        without id, unusual statuses."""
        rng = self.rng
        runs = state["runs"]
        for _ in range(rng.randint(1, 3)):
            k = rng.random()
            if k < 0.2 and runs:
                run = rng.choice(runs)
                if run["tools"]:
                    run["tools"].append(copy.deepcopy(rng.choice(run["tools"])))
            elif k < 0.4 and runs:
                run = rng.choice(runs)
                if run["approvals"]:
                    run["approvals"].append(copy.deepcopy(rng.choice(run["approvals"])))
            elif k < 0.55 and state["pending_approvals"]:
                state["pending_approvals"].append(
                    copy.deepcopy(rng.choice(state["pending_approvals"]))
                )
            elif k < 0.7:
                runs.append(fold._new_run("x"))
                runs[-1]["run_id"] = None
            elif k < 0.85 and runs:
                runs.append(copy.deepcopy(rng.choice(runs)))
            elif runs:
                rng.choice(runs)["status"] = rng.choice(["queued", "running", "failed"])
        return state

    def case(self) -> dict[str, Any]:
        rng = self.rng
        n = rng.choice([rng.randint(0, 8), rng.randint(5, 30), rng.randint(20, 60)])
        make = self.random_events if rng.random() < 0.4 else self.lifecycle_events
        case: dict[str, Any] = {"session_id": "s1", "events": make(n)}
        if rng.random() < 0.25:  # a fold that starts from a snapshot's state, mid-log
            prefix = {"session_id": "s1", "events": make(rng.randint(1, 25))}
            initial = fold_py(prefix)
            case["initial"] = self.quirky(initial) if rng.random() < 0.3 else initial
        return case


def _shrink(case: dict[str, Any]) -> dict[str, Any]:
    """Remove events (and the initial state) while the folds still disagree."""

    def fails(cases: list[dict[str, Any]]) -> list[bool]:
        res = fold_js(cases)["results"]
        return [
            "state" not in r or not _same(r["state"], fold_py(c))
            for r, c in zip(res, cases, strict=True)
        ]

    while True:
        cands = [
            {**case, "events": case["events"][:i] + case["events"][i + 1 :]}
            for i in range(len(case["events"]))
        ]
        if "initial" in case:
            cands.append({k: v for k, v in case.items() if k != "initial"})
        if not cands:
            return case
        smaller = [c for c, bad in zip(cands, fails(cands), strict=True) if bad]
        if not smaller:
            return case
        case = smaller[0]


def test_differential_python_and_browser_folds_agree(tmp_path: Path) -> None:
    gen = Gen(random.Random(SEED))
    cases = [gen.case() for _ in range(CASES)]
    types_seen = {env["type"] for c in cases for env in c["events"]}
    assert types_seen >= set(TYPES)  # the generator mixes every event type
    out = fold_js(cases, tmp_path)
    failing = []
    for i, (case, res) in enumerate(zip(cases, out["results"], strict=True)):
        want = fold_py(case)
        if "state" not in res or not _same(res["state"], want):
            failing.append(i)
    if failing:
        first = min(failing, key=lambda i: (len(cases[i]["events"]), "initial" in cases[i]))
        small = _shrink(cases[first])
        res = fold_js([small])["results"][0]
        pytest.fail(
            f"{len(failing)} of {len(cases)} sequences fold differently (seed {SEED}); "
            f"shortest failing sequence (case {first}), shrunk:\n"
            f"{json.dumps(small, indent=1, ensure_ascii=False)}\n"
            f"python: {json.dumps(fold_py(small), ensure_ascii=False)}\n"
            f"browser: {json.dumps(res.get('state', res), ensure_ascii=False)}"
        )
