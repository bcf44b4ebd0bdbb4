"""Connection-leak soak: Locust load on two gateway replicas, then a check that nothing leaked.

Starts its own redis-server, two gateway replicas (``gateway serve``) and a demo worker on
free loopback ports (never the machine's Redis), then:

1. warm-up: a short Locust run with the same load, so connection pools, allocator arenas and
   caches reach their working size; settle; record the baseline (per replica: RSS, open
   file descriptors, ``gateway_open_streams`` by kind, ``gateway_hub_channels``; Redis:
   ``connected_clients`` and Pub/Sub channels);
2. the soak: ``locust -f loadtests/locustfile.py --headless`` for ``--duration`` seconds
   (Viewer, Churn and Publisher users, see the locustfile), with progress every few seconds;
3. settle (bounded by ``--settle``), then the verdict: open streams of every kind and hub
   channels back to zero on both replicas, Redis clients and channels back to the baseline,
   RSS and open fds within ``--tolerance`` (10%) of the baseline, no ``gap``/``duplicate``
   failure, and the load really ran (streams of every kind, events checked).

Exit code 0 on PASS, 1 on FAIL; ``--json PATH`` writes the whole result.

    python -m loadtests.soak --duration 60 --users 40
    python -m loadtests.soak --duration 1800 --users 40 --json soak-30min.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from gateway.settings import Settings
from tests.support import ROOT, Gateway, Proc, RedisServer, Worker

KINDS = ("plain", "connection", "mux", "mux-session", "activity")
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
# Heartbeats every 5 s so idle streams also run their tail checks during a short soak.
GATEWAY_SETTINGS: dict[str, Any] = {"heartbeat_interval": 5.0}
WORKER_SETTINGS: dict[str, Any] = {"tokens_per_second": 80.0}
POOL_BOUND = Settings().redis_max_connections  # per process, Pub/Sub included


@dataclass
class Config:
    duration: float = 60.0
    users: int = 40
    spawn_rate: float = 10.0
    warmup: float = 15.0
    settle: float = 20.0
    sessions: int = 8
    publishers: int = 2
    churn_pause: float = 0.0
    tolerance: float = 0.10
    progress: float = 5.0
    json: str | None = None
    prefix: str = field(default_factory=lambda: f"soak{int(time.time()) % 100000}")


@dataclass
class Check:
    name: str
    baseline: str
    peak: str
    after: str
    limit: str
    ok: bool


@dataclass
class Result:
    config: dict[str, Any]
    verdict: str
    checks: list[Check]
    baseline: dict[str, Any]
    peak: dict[str, Any]
    final: dict[str, Any]
    settle_seconds: float
    locust: dict[str, Any]
    locust_exit_code: int
    gateway_log_problems: list[str]
    timings: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"


# --- sampling ------------------------------------------------------------------------------------


def _info(redis: RedisServer) -> dict[str, str]:
    out = {}
    for line in redis.cli("INFO").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def sample(gateways: list[Gateway], redis: RedisServer) -> dict[str, Any]:
    """Resources of every replica and of Redis, now.

    ``redis.connected_clients`` counts the redis-cli that asks (one, constant).
    """
    by_name = _clients_by_name(redis)
    gws = []
    for label, gw in zip("AB", gateways, strict=False):
        proc = psutil.Process(gw.proc.pid)
        rss, fds = proc.memory_info().rss, proc.num_fds()  # before the scrape's own socket
        text = httpx.get(gw.url + "/metrics", timeout=5).text
        streams = dict.fromkeys(KINDS, 0)
        hub = 0
        for line in text.splitlines():
            if line.startswith('gateway_open_streams{kind="'):
                streams[line.split('"')[1]] = int(float(line.split()[-1]))
            elif line.startswith("gateway_hub_channels "):
                hub = int(float(line.split()[-1]))
        gws.append(
            {
                "replica": label,
                "url": gw.url,
                "pid": gw.proc.pid,
                "rss_mb": round(rss / 2**20, 2),
                "fds": fds,
                "streams": streams,
                "hub_channels": hub,
                "redis_conns": _conns_of(by_name, "gateway", gw.proc.pid),
            }
        )
    info = _info(redis)
    return {
        "t": time.time(),
        "gateways": gws,
        "redis": {
            "connected_clients": int(info.get("connected_clients", -1)),
            "pubsub_channels": int(info.get("pubsub_channels", -1)),
        },
        "clients_by_name": by_name,
    }


def _conns_of(by_name: dict[str, int], role: str, pid: int) -> int:
    return sum(
        n for name, n in by_name.items() if name.startswith(role + ":") and name.endswith(f":{pid}")
    )


def _clients_by_name(redis: RedisServer) -> dict[str, int]:
    """Redis connections per client name (``<role>:<host>:<pid>``; "" for redis-cli)."""
    counts: dict[str, int] = {}
    for line in redis.cli("CLIENT", "LIST").splitlines():
        fields = dict(f.partition("=")[::2] for f in line.split())
        name = fields.get("name", "")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _merge_peak(peak: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    if not peak:
        return json.loads(json.dumps(s))
    for p, g in zip(peak["gateways"], s["gateways"], strict=True):
        p["rss_mb"] = max(p["rss_mb"], g["rss_mb"])
        p["fds"] = max(p["fds"], g["fds"])
        p["hub_channels"] = max(p["hub_channels"], g["hub_channels"])
        p["redis_conns"] = max(p["redis_conns"], g["redis_conns"])
        for k, v in g["streams"].items():
            p["streams"][k] = max(p["streams"].get(k, 0), v)
    for k, v in s["redis"].items():
        peak["redis"][k] = max(peak["redis"][k], v)
    return peak


def _line(elapsed: float, s: dict[str, Any], rep: dict[str, Any]) -> str:
    parts = [f"[{elapsed:5.0f}s]"]
    for g in s["gateways"]:
        st = "/".join(str(g["streams"][k]) for k in KINDS)
        parts.append(f"{g['replica']}: streams {st} rss {g['rss_mb']:.1f}MB fds {g['fds']}")
    worker = sum(n for name, n in s["clients_by_name"].items() if name.startswith("worker:"))
    pools = " ".join(f"{g['replica']} {g['redis_conns']}" for g in s["gateways"])
    parts.append(f"redis clients {s['redis']['connected_clients']} ({pools}, worker {worker})")
    if rep:
        c = rep.get("counters", {})
        opened = sum(v for k, v in c.items() if k.startswith("opened:"))
        seq = _failures(rep, "gap") + _failures(rep, "duplicate")
        parts.append(
            f"users {rep.get('users', 0)} reqs {rep['total']['requests']} "
            f"fails {rep['total']['failures']} streams {opened} "
            f"events {c.get('viewer:events', 0)} gap+dup {seq}"
        )
    return " | ".join(parts)


# --- locust --------------------------------------------------------------------------------------


def _read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _failures(rep: dict[str, Any], name: str) -> int:
    return sum(r["failures"] for r in rep.get("requests", []) if r["name"] == name)


def _row(rep: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in rep.get("requests", []) if r["name"] == name), None)


def run_locust(
    cfg: Config,
    gateways: list[Gateway],
    seconds: float,
    workdir: Path,
    tag: str,
    tick: Callable[[float, dict[str, Any]], None] | None = None,
) -> tuple[int, dict[str, Any], Path]:
    """One headless Locust run in a subprocess; returns (exit code, report, log path)."""
    report = workdir / f"locust-{tag}.json"
    log = workdir / f"locust-{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(cfg.users),
        "-r",
        str(cfg.spawn_rate),
        "-t",
        f"{max(1, round(seconds))}s",
        "--host",
        gateways[0].url,
        "-L",
        "WARNING",
        "--soak-gateways",
        ",".join(g.url for g in gateways),
        "--soak-sessions",
        str(cfg.sessions),
        "--soak-prefix",
        cfg.prefix,
        "--soak-publishers",
        str(cfg.publishers),
        "--soak-churn-pause",
        str(cfg.churn_pause),
        "--soak-report",
        str(report),
    ]
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=cfg.progress)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() - start > seconds + 60:
                        proc.kill()
                        proc.wait(10)
                        raise RuntimeError(f"locust did not stop; see {log}") from None
                    if tick is not None:
                        tick(time.monotonic() - start, _read_report(report))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return rc, _read_report(report), log


# --- verdict -------------------------------------------------------------------------------------


def _settled(s: dict[str, Any], base: dict[str, Any], tol: float) -> bool:
    for g, b in zip(s["gateways"], base["gateways"], strict=True):
        if any(g["streams"].values()) or g["hub_channels"]:
            return False
        if g["rss_mb"] > b["rss_mb"] * (1 + tol) or g["fds"] > b["fds"] * (1 + tol):
            return False
    r, b = s["redis"], base["redis"]
    return (
        r["connected_clients"] <= b["connected_clients"]
        and r["pubsub_channels"] == b["pubsub_channels"]
    )


def evaluate(
    base: dict[str, Any],
    peak: dict[str, Any],
    final: dict[str, Any],
    rep: dict[str, Any],
    tol: float,
    pool_bound: int,
) -> list[Check]:
    checks = []
    for b, p, f in zip(base["gateways"], peak["gateways"], final["gateways"], strict=True):
        r = f["replica"]

        def kinds(x: dict[str, Any]) -> str:
            return "/".join(str(x["streams"][k]) for k in KINDS)

        checks.append(
            Check(
                f"{r}: open streams {'/'.join(KINDS)}",
                kinds(b),
                kinds(p),
                kinds(f),
                "all 0",
                not any(f["streams"].values()),
            )
        )
        checks.append(
            Check(
                f"{r}: hub Pub/Sub channels",
                str(b["hub_channels"]),
                str(p["hub_channels"]),
                str(f["hub_channels"]),
                "0",
                f["hub_channels"] == 0,
            )
        )
        for key, unit in (("rss_mb", " MB"), ("fds", "")):
            limit = b[key] * (1 + tol)
            growth = (f[key] - b[key]) / b[key] * 100 if b[key] else 0.0
            checks.append(
                Check(
                    f"{r}: {'RSS' if key == 'rss_mb' else 'open fds'}",
                    f"{b[key]}{unit}",
                    f"{p[key]}{unit}",
                    f"{f[key]}{unit} ({growth:+.1f}%)",
                    f"<= {limit:.1f}{unit} (+{tol:.0%})",
                    f[key] <= limit,
                )
            )
        checks.append(
            Check(
                f"{r}: its Redis connections (pool)",
                str(b["redis_conns"]),
                str(p["redis_conns"]),
                str(f["redis_conns"]),
                f"<= {pool_bound}",
                0 < p["redis_conns"] <= pool_bound and f["redis_conns"] <= pool_bound,
            )
        )
    # The pools were filled before the baseline, so the count can only drop below it (redis-py
    # closes a connection whose command was cancelled by a client disconnect, and reopens one
    # on demand); any connection above it would be a new client, i.e. a leak.
    clients = base["redis"]["connected_clients"]
    checks.append(
        Check(
            "Redis connected_clients",
            str(clients),
            str(peak["redis"]["connected_clients"]),
            str(final["redis"]["connected_clients"]),
            f"<= {clients}",
            final["redis"]["connected_clients"] <= clients,
        )
    )
    channels = base["redis"]["pubsub_channels"]
    checks.append(
        Check(
            "Redis Pub/Sub channels",
            str(channels),
            str(peak["redis"]["pubsub_channels"]),
            str(final["redis"]["pubsub_channels"]),
            f"= {channels}",
            final["redis"]["pubsub_channels"] == channels,
        )
    )
    c = rep.get("counters", {})
    for name in ("gap", "duplicate"):
        n = _failures(rep, name)
        checks.append(Check(f"{name} failures", "-", "-", str(n), "0", n == 0 and bool(rep)))
    opened = {k: c.get(f"opened:{k}", 0) for k in ("plain", "connection", "mux", "activity")}
    events = c.get("viewer:events", 0)
    latency = _row(rep, "sse_latency") or {}
    checks.append(
        Check(
            "load ran: streams opened p/c/m/a, events",
            "-",
            "-",
            "/".join(str(v) for v in opened.values()) + f", {events}",
            "each > 0",
            all(opened.values()) and events > 0 and latency.get("requests", 0) > 0,
        )
    )
    return checks


def table(result: Result) -> str:
    rows = [("check", "baseline", "peak", "after settle", "limit", "result")]
    rows += [
        (c.name, c.baseline, c.peak, c.after, c.limit, "PASS" if c.ok else "FAIL")
        for c in result.checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rep = result.locust
    lat = _row(rep, "sse_latency") or {}
    total = rep.get("total", {"requests": 0, "failures": 0})
    c = rep.get("counters", {})
    drops = ", ".join(
        f"{m} {c.get('drop:' + m, 0)}" for m in ("clean", "abort", "early", "takeover")
    )
    lines += [
        "",
        f"locust: {total['requests']} requests, {total['failures']} failures "
        f"(exit code {result.locust_exit_code}); events checked {c.get('viewer:events', 0)}, "
        f"published {c.get('published', 0)}, viewer attaches {c.get('viewer:attaches', 0)}, "
        f"resets {c.get('viewer:resets', 0)}",
        f"churn drops: {drops}; take-overs that ended the older stream: "
        f"{c.get('takeover:closed', 0)} of {c.get('drop:takeover', 0)}",
        f"sse_latency: n={lat.get('requests', 0)} p50 {lat.get('p50_ms', '-')} ms "
        f"p95 {lat.get('p95_ms', '-')} ms p99 {lat.get('p99_ms', '-')} ms max {lat.get('max_ms', '-')} ms",
        f"settled in {result.settle_seconds:.1f} s; gateway log problems: "
        f"{len(result.gateway_log_problems)}",
    ]
    for e in rep.get("errors", [])[:8]:
        lines.append(f"  error x{e['occurrences']}: {e['type']} {e['name']}: {e['error'][:150]}")
    for p in result.gateway_log_problems[:5]:
        lines.append(f"  log: {p[:200]}")
    lines.append(f"VERDICT: {result.verdict}")
    return "\n".join(lines)


def _log_problems(procs: list[Proc]) -> list[str]:
    bad = ("Traceback", "ERROR", "Exception", "exception")
    return [
        f"{p.name}: {line}"
        for p in procs
        for line in p.output().splitlines()
        if any(b in line for b in bad)
    ]


# --- the soak ------------------------------------------------------------------------------------


def run(cfg: Config, out: Callable[[str], None] = print) -> Result:
    """Start the stack, warm up, record the baseline, soak, settle, judge."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    redis = RedisServer()
    procs: list[Proc] = []
    try:
        gateways: list[Gateway] = []
        for _ in range(2):
            gateways.append(Gateway(redis.url, **GATEWAY_SETTINGS))
            procs.append(gateways[-1])
        procs.append(Worker(redis.url, **WORKER_SETTINGS))
        out(
            f"stack: redis-server :{redis.port}, gateways {gateways[0].url} (A) "
            f"{gateways[1].url} (B), worker; logs in {workdir}"
        )
        timings["startup"] = time.monotonic() - t0

        # One demo-worker run now, so the worker's own connections are open at the baseline.
        httpx.post(
            f"{gateways[0].url}/v1/sessions/{cfg.prefix}-w/runs",
            json={"input": "How does reconnect resume from the stored offset?"},
            timeout=10,
        )
        if cfg.warmup > 0:
            out(f"warm-up: {cfg.warmup:.0f} s of the same load")
            t = time.monotonic()
            run_locust(cfg, gateways, cfg.warmup, workdir, "warmup")
            timings["warmup"] = time.monotonic() - t
        _wait_quiet(gateways, redis, cfg.settle)
        _fill_pools(gateways, redis)
        time.sleep(1.0)
        base = sample(gateways, redis)
        out("baseline: " + _line(0, base, {}))

        peak: dict[str, Any] = {}
        start = time.monotonic()

        def tick(elapsed: float, rep: dict[str, Any]) -> None:
            nonlocal peak
            s = sample(gateways, redis)
            peak = _merge_peak(peak, s)
            out(_line(elapsed, s, rep))

        out(f"soak: {cfg.users} users for {cfg.duration:.0f} s")
        rc, rep, log = run_locust(cfg, gateways, cfg.duration, workdir, "soak", tick)
        timings["soak"] = time.monotonic() - start
        out(f"locust exited {rc}; log {log}")

        settle_start = time.monotonic()
        final = sample(gateways, redis)
        peak = _merge_peak(peak, final)
        while not _settled(final, base, cfg.tolerance):
            if time.monotonic() - settle_start > cfg.settle:
                break
            time.sleep(1.0)
            final = sample(gateways, redis)
        settle = time.monotonic() - settle_start
        out("after:    " + _line(settle, final, {}))
        for gw in gateways:
            if gw.proc.poll() is not None:
                out(f"gateway {gw.url} exited with {gw.proc.returncode}")

        checks = evaluate(base, peak, final, rep, cfg.tolerance, POOL_BOUND)
        checks.append(
            Check(
                "gateways alive",
                "-",
                "-",
                ", ".join("up" if g.proc.poll() is None else "dead" for g in gateways),
                "up",
                all(g.proc.poll() is None for g in gateways),
            )
        )
        timings["total"] = time.monotonic() - t0
        result = Result(
            config=asdict(cfg),
            verdict="PASS" if all(c.ok for c in checks) else "FAIL",
            checks=checks,
            baseline=base,
            peak=peak,
            final=final,
            settle_seconds=round(settle, 2),
            locust=rep,
            locust_exit_code=rc,
            gateway_log_problems=_log_problems(procs),
            timings={k: round(v, 2) for k, v in timings.items()},
        )
        if cfg.json:
            Path(cfg.json).write_text(json.dumps(asdict(result), indent=2))
        return result
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        redis.stop()


def _fill_pools(gateways: list[Gateway], redis: RedisServer) -> None:
    """Open each replica's Redis pool to its bound with bursts of concurrent requests.

    Pools grow on demand and keep their connections, so a baseline taken with a pool below
    its bound would make a pool refilling during the soak look like a leak.
    """

    def get(url: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/v1/sessions", timeout=10)

    with ThreadPoolExecutor(max_workers=48) as pool:
        for _ in range(10):
            by_name = _clients_by_name(redis)
            if all(_conns_of(by_name, "gateway", g.proc.pid) >= POOL_BOUND for g in gateways):
                return
            list(pool.map(get, [g.url for g in gateways for _ in range(96)]))


def _wait_quiet(gateways: list[Gateway], redis: RedisServer, timeout: float) -> dict[str, Any]:
    """Wait (bounded) until no stream is open after the warm-up."""
    deadline = time.monotonic() + timeout
    s = sample(gateways, redis)
    while time.monotonic() < deadline:
        if not any(any(g["streams"].values()) or g["hub_channels"] for g in s["gateways"]):
            break
        time.sleep(0.5)
        s = sample(gateways, redis)
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Config()
    parser.add_argument("--duration", type=float, default=d.duration, help="soak seconds")
    parser.add_argument("--users", type=int, default=d.users, help="Locust users")
    parser.add_argument("--spawn-rate", type=float, default=d.spawn_rate, help="users/s")
    parser.add_argument("--warmup", type=float, default=d.warmup, help="warm-up seconds")
    parser.add_argument("--settle", type=float, default=d.settle, help="max settle seconds")
    parser.add_argument("--sessions", type=int, default=d.sessions, help="published sessions")
    parser.add_argument("--publishers", type=int, default=d.publishers, help="Publisher users")
    parser.add_argument(
        "--churn-pause", type=float, default=d.churn_pause, help="Churn pause between streams"
    )
    parser.add_argument(
        "--tolerance", type=float, default=d.tolerance, help="RSS/fds growth allowed (0.10)"
    )
    parser.add_argument("--progress", type=float, default=d.progress, help="progress interval")
    parser.add_argument("--json", help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    if args.users <= args.publishers:
        parser.error("--users must exceed --publishers")
    cfg = Config(**vars(args))
    # SIGTERM unwinds like Ctrl-C, so the stack (redis-server, gateways, worker, locust) stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(cfg, out=lambda s: print(s, flush=True))
    print()
    print(table(result), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
