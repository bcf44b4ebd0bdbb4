"""Seeded chaos runs of the whole system on real processes (issue 11).

Topology: 2-3 gateways and 2 workers (``gateway serve`` / ``gateway worker``) on
redis-server with AOF ``appendfsync always`` behind a TCP proxy, or on a 6-node Redis
Cluster. Traffic: runs started, cancelled and approved over HTTP; manual-commit viewers that
reconnect at random, with and without ``Last-Event-ID``. Nemesis: SIGKILL and restart,
SIGSTOP/SIGCONT, SIGTERM drains, Redis SIGKILL and restart, dropped and stalled Redis
connections (:mod:`loadtests.chaos.nemesis`). After the faults stop and the lease, pickup and
claim timeouts pass, :mod:`loadtests.chaos.invariants` checks that every accepted run is in
the log with exactly one terminal and nothing after it, no session is running, every log is
gap-free in one epoch, every viewer saw a gap-free prefix with no reset and caught up, and
open streams and Redis clients are back to their baseline.

``python -m loadtests.chaos --seed N --duration S [--cluster]``; ``tests/test_chaos.py`` runs
three 60 s seeds on one Redis and one on the cluster in CI.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from loadtests.chaos.invariants import (
    Logs,
    Violation,
    check_logs,
    check_runs,
    check_viewers,
    summary,
)
from loadtests.chaos.nemesis import Nemesis
from loadtests.chaos.topology import SETTINGS, Topology
from loadtests.chaos.traffic import Traffic

MAX_REDIS_CLIENTS = Settings().redis_max_connections


@dataclass
class Report:
    """What a chaos run did and found."""

    seed: int
    duration: float
    cluster: bool
    faults: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    log: dict[str, int] = field(default_factory=dict)
    viewers: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    elapsed_s: float = 0.0
    logdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        topo = "6-node Redis Cluster" if self.cluster else "redis-server (AOF always) + proxy"
        lines = [
            f"chaos seed {self.seed}: {self.duration:.0f} s of faults on {topo}, "
            f"{self.elapsed_s:.0f} s in all",
            "  faults:   " + _kv(self.faults),
            "  traffic:  " + _kv(self.traffic),
            "  log:      " + _kv(self.log),
            "  viewers:  " + _kv(self.viewers),
            f"  violations: {len(self.violations)}",
        ]
        lines += [v.render() for v in self.violations[:20]]
        if self.violations:
            lines.append(f"  reproduce: python -m loadtests.chaos --seed {self.seed} "
                         f"--duration {self.duration:.0f}{' --cluster' if self.cluster else ''}")  # fmt: skip
            lines.append(f"  process logs: {self.logdir}")
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        return json.dumps(data, indent=2)


def _kv(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


async def _until(pred: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await pred():
                return True
        except (httpx.HTTPError, OSError):
            pass
        await asyncio.sleep(0.2)
    return False


async def run_chaos(
    seed: int,
    duration: float,
    *,
    cluster: bool = False,
    gateways: int = 2,
    workers: int = 2,
    sessions: int = 6,
    viewers_per_session: int = 2,
    tokens_per_second: float = 60.0,
    say: Callable[[str], None] = print,
) -> Report:
    """One seeded chaos run; returns its :class:`Report` (``ok`` when no invariant broke)."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    report = Report(seed, duration, cluster)
    say(f"chaos seed {seed}: starting {'a cluster' if cluster else 'redis'}, "
        f"{gateways} gateways, {workers} workers")  # fmt: skip
    top = await asyncio.to_thread(
        Topology.start,
        cluster=cluster,
        gateways=gateways,
        workers=workers,
        tokens_per_second=tokens_per_second,
    )
    report.logdir = top.logdir
    redis = connect(Settings(redis_url=top.direct_url), role="checker")
    store = Store(redis)
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> bool:
                for g in top.gateways:
                    if (await http.get(g.url + "/readyz")).status_code != 200:
                        return False
                return True

            if not await _until(ready, 60):
                raise RuntimeError("gateways did not become ready")
            sids = [f"chaos-{seed}-{i}" for i in range(sessions)]
            first_epochs = {}
            for sid in sids:
                r = await http.post(top.gateways[0].url + "/v1/sessions", json={"session_id": sid})
                first_epochs[sid] = r.json()["offset"].split("_")[0]

            traffic = Traffic(top.gateways, sids, rng, viewers_per_session)
            nemesis = Nemesis(top, rng, say)
            say(f"  traffic on {sessions} sessions, {len(traffic.viewers)} viewers; "
                f"faults for {duration:.0f} s")  # fmt: skip
            driving = asyncio.create_task(traffic.run())
            await nemesis.run(duration)
            traffic.stop_runs()
            await asyncio.wait_for(traffic.runs_done(), 60)
            report.faults = dict(nemesis.counts)
            say("  faults stopped: " + _kv(report.faults))

            if not await _until(ready, 60):
                raise RuntimeError("gateways did not come back after the faults")
            settle = SETTINGS["run_lease_ttl"] + SETTINGS["run_pickup_timeout"] + 60

            async def idle() -> bool:
                for sid in sids:
                    meta = await store.sessions.meta(sid)
                    if meta is None or meta.status == "running":
                        return False
                return True

            t_settle = time.monotonic()
            await _until(idle, settle)
            say(f"  every run ended {time.monotonic() - t_settle:.1f} s after the faults")
            traffic.stop()  # approvals were answered until now: runs waiting for one ended
            await asyncio.wait_for(driving, 60)

            logs = await Logs.read(store, sids)
            for v in traffic.viewers:
                head = logs.head_offset(v.sid)
                if v.last != head:
                    await traffic.attach(v, hold=30, until=head)
            await traffic.close()
            report.traffic = dict(traffic.counts)

            async def quiet() -> bool:
                for g in top.gateways:
                    text = (await http.get(g.url + "/metrics")).text
                    if _metric_sum(text, "gateway_open_streams") or _metric_sum(
                        text, "gateway_hub_channels"
                    ):
                        return False
                return True

            streams_back = await _until(quiet, 15)
            clients = await _redis_clients(top)
            logs = await Logs.read(store, sids)
            report.log = summary(logs)
            report.viewers = _viewer_stats(traffic)
            report.violations = [
                *check_runs(logs, traffic.accepted),
                *check_logs(logs, first_epochs),
                *check_viewers(logs, traffic.viewers),
            ]
            if not streams_back:
                report.violations.append(
                    Violation("baseline", "-", "open streams or hub channels did not return to 0")
                )
            report.violations += _check_clients(top, clients)
    finally:
        await redis.aclose()
        await asyncio.to_thread(top.stop)
    report.elapsed_s = time.monotonic() - t0
    return report


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _viewer_stats(traffic: Traffic) -> dict[str, int]:
    vs = traffic.viewers
    return {
        "viewers": len(vs),
        "deliveries": sum(len(v.received) for v in vs),
        "repeats_dropped": sum(len(v.received) - len(set(v.received)) for v in vs),
        "attaches": sum(v.attaches for v in vs),
        "with_last_event_id": sum(v.with_last_event_id for v in vs),
    }


async def _redis_clients(top: Topology) -> Counter[str]:
    """Connections per client name on every Redis node (read directly, not via the proxy)."""
    ports = (
        top.redis_cluster.live_ports() if top.redis_cluster is not None else [top.redis.port]  # type: ignore[union-attr]
    )
    names: Counter[str] = Counter()
    for port in ports:
        proc = await asyncio.create_subprocess_exec(
            "redis-cli", "-p", str(port), "CLIENT", "LIST", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        for m in re.finditer(r"\bname=(\S*)", out.decode()):
            names[f"{port}/{m.group(1)}"] += 1
    return names


def _check_clients(top: Topology, clients: Counter[str]) -> list[Violation]:
    """Each live process holds at most its pool (per node); dead processes hold nothing."""
    live = {str(n.pid) for n in [*top.gateways, *top.workers]}
    out = []
    for key, count in clients.items():
        name = key.split("/", 1)[1]
        if not name.startswith(("gateway:", "worker:")):
            continue
        pid = name.rsplit(":", 1)[1]
        if pid not in live:
            out.append(Violation("baseline", "-", f"{count} Redis connection(s) of dead {name}"))
        elif count > MAX_REDIS_CLIENTS + 1:
            out.append(Violation("baseline", "-", f"{name} holds {count} Redis connections"))
    return out
