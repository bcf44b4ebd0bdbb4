"""Benchmarks: the gateway against the alternatives and a peer, on real Redis, in one run.

    python -m loadtests.bench                  # the full run (about 20 minutes on 2 cores)
    python -m loadtests.bench --quick          # small counts, about a minute (CI)
    python -m loadtests.bench --out DIR        # write results elsewhere (default docs/benchmarks)
    python -m loadtests.bench --phases peers   # only some phases (merged into DIR's results)
    python -m loadtests.bench --report-only    # re-render README.md and plots from results.json

Prints a table and writes ``results.json``, PNG plots and ``README.md`` into the output
directory. Phases (``--phases``; ``--quick`` runs ``systems``, ``peers``
and ``durable``):

- ``systems``: each system on the same workloads with its own redis-server on a free port:
  ``gateway`` (``gateway serve --insecure``, one uvicorn process, published to with the
  gateway's Publisher); ``xread`` (``loadtests/baselines/xread_per_viewer.py``, one blocking
  XREAD per SSE viewer, resume by ``Last-Event-ID``, plain XADD); ``channels``
  (``loadtests/baselines/litestar_channels.py``, Litestar's ChannelsPlugin with its Redis
  stream backend); ``raw`` (``loadtests/baselines/raw_asgi.py``, pre-built SSE frames under
  the same uvicorn: the server's own fan-out limit and idle-memory floor). Workloads: publish
  throughput (the Publisher vs raw pipelined XADD); publish→SSE latency at 10, 100 and 1,000
  viewers (100 sessions, 1,000 events/s in all); fan-out (one session, 100 viewers, the
  publisher as fast as it goes); RSS and Redis connections at 1,000 and 5,000 idle viewers;
  reattach to a 10,000-event backlog.
- ``peers``: the gateway against Vercel's ``resumable-stream`` (``loadtests/bench_peers.py``).
- ``durable``: the gateway's Durable Streams endpoint (``/ds``) against the protocol's Node
  reference server, same Node load generator (``loadtests/bench_durable.py``).
- ``live``, ``cores``, ``scale``: 10,000 live viewers, ``--workers 2`` vs 1, idle viewers up
  to this machine's file-descriptor limit (``loadtests/bench_scale.py``).

``--systems`` selects systems (``resumable-stream`` among them). Viewers and publishers run in
their own processes (``loadtests/bench_load.py``, driven through ``loadtests/bench_procs.py``);
the report is ``loadtests/bench_report.py``, ``bench_plots.py`` and ``bench_extra.py``.
Everything runs on loopback, is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_procs import Child, Server
from tests.support import ROOT, RedisServer

OUT = ROOT / "docs" / "benchmarks"
SYSTEMS = ("gateway", "xread", "channels")
LABEL = {
    "gateway": "gateway",
    "xread": "XREAD per viewer",
    "channels": "Litestar channels",
    "raw": "raw ASGI writer",
    "resumable-stream": "resumable-stream",
}
COLOR = {
    "gateway": "#1f77b4",
    "xread": "#d62728",
    "channels": "#2ca02c",
    "raw": "#7f7f7f",
    "resumable-stream": "#9467bd",
}


@dataclass(frozen=True)
class Config:
    latency_viewers: tuple[int, ...] = (10, 100, 1000)
    sessions: int = 100
    rate: float = 1000.0
    latency_seconds: float = 10.0
    warmup: float = 1.0
    fanout_viewers: int = 100
    fanout_seconds: float = 8.0
    idle_viewers: tuple[int, ...] = (1000, 5000)
    backlog: int = 10_000
    reattach_reps: int = 5
    publish_events: int = 20_000
    publish_batch: int = 100
    publish_concurrency: int = 4
    publish_repeats: int = 2
    repeats: int = 3  # latency and fan-out runs (median reported)
    settle: float = 2.0
    # peers phase (loadtests/bench_peers.py)
    peer_events: int = 20_000
    peer_streams: int = 4
    peer_backlog: int = 1000
    peer_reps: int = 5
    # live, cores and scale phases (loadtests/bench_scale.py)
    live_viewers: int = 10_000
    live_sessions: int = 1000
    live_rate: float = 1000.0
    live_seconds: float = 10.0
    live_procs: int = 4
    cores_viewers: int = 100
    cores_seconds: float = 8.0
    scale_counts: tuple[int, ...] = (1000, 5000, 10_000, 19_000)
    scale_heartbeat: float = 5.0
    # durable phase (loadtests/bench_durable.py, through loadtests/ds_bench.py)
    ds_writers: int = 32
    ds_streams: int = 8
    ds_seconds: float = 10.0
    ds_readers: int = 100
    ds_events: int = 1000
    ds_rate: float = 100.0
    ds_repeats: int = 3


FULL = Config()
QUICK = Config(
    latency_viewers=(5, 50),
    sessions=20,
    rate=200.0,
    latency_seconds=1.0,
    warmup=0.3,
    fanout_viewers=20,
    fanout_seconds=1.0,
    idle_viewers=(50, 200),
    backlog=1000,
    reattach_reps=2,
    publish_events=2000,
    publish_batch=100,
    publish_concurrency=4,
    publish_repeats=1,
    repeats=1,
    settle=0.3,
    peer_events=1000,
    peer_backlog=200,
    peer_reps=1,
    live_viewers=200,
    live_sessions=20,
    live_rate=200.0,
    live_seconds=1.0,
    live_procs=2,
    cores_viewers=20,
    cores_seconds=1.0,
    scale_counts=(200, 500),
    scale_heartbeat=1.0,
    ds_writers=8,
    ds_streams=2,
    ds_seconds=1.0,
    ds_readers=10,
    ds_events=100,
    ds_rate=100.0,
    ds_repeats=1,
)
PHASES = ("systems", "peers", "durable", "live", "cores", "scale")
QUICK_PHASES = ("systems", "peers", "durable")  # the others hold thousands of sockets for minutes
PEERS = ("resumable-stream",)
PREFIX = {
    "peers": "peer_",
    "durable": "ds_",
    "live": "live_",
    "cores": "cores_",
    "scale": "scale_",
}


# --- workloads -----------------------------------------------------------------------------


@dataclass
class Run:
    cfg: Config
    viewers: Child
    publisher: Child
    profile_dir: Path | None = None
    log: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)


@contextlib.contextmanager
def profiling(run: Run, server: Server, name: str, seconds: float) -> Iterator[None]:
    """``py-spy record`` of the server for ``seconds`` (only with ``--profile``)."""
    proc = None
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if run.profile_dir is not None and pyspy and name:
        run.profile_dir.mkdir(parents=True, exist_ok=True)
        out = run.profile_dir / f"{server.system}-{name}.txt"
        proc = subprocess.Popen(
            [pyspy, "record", "--pid", str(server.pid), "--duration", str(int(seconds)),
             "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield
    finally:
        if proc is not None:
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def publish_throughput(run: Run, system: str) -> dict[str, Any]:
    cfg = run.cfg
    ways = {
        "gateway": ["batch", "raw_pipeline", "single", "raw_single"],
        "xread": ["batch", "single"],
        "channels": ["single"],
    }[system]
    out: dict[str, Any] = {}
    for how in ways:
        best: dict[str, Any] = {}
        for rep in range(cfg.publish_repeats):
            res = run.publisher.call(
                cmd="throughput",
                how=how,
                events=cfg.publish_events,
                batch=cfg.publish_batch,
                concurrency=cfg.publish_concurrency,
                sessions=cfg.sessions,
                prefix=f"tp-{how}-{rep}",
            )
            if res["rate"] > best.get("rate", 0):
                best = res
        out[how] = best
        run.say(f"  publish {how:<13} {best['rate']:>10,.0f} events/s")
    return out


def _median_rep(reps: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The repetition whose ``key`` is the median (the lower one of an even count)."""
    return sorted(reps, key=lambda r: r[key])[(len(reps) - 1) // 2]


def latency(run: Run, server: Server, viewers: int) -> dict[str, Any]:
    """``cfg.repeats`` runs; each percentile is the median over the runs."""
    reps = [latency_once(run, server, viewers, k) for k in range(run.cfg.repeats)]
    out = dict(_median_rep(reps, "p99_ms"))  # its quantiles are the plotted distribution
    for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "server_cpu"):
        out[key] = statistics.median(r[key] for r in reps)
    for key in ("missing", "gaps", "duplicates", "n", "received"):
        out[key] = sum(r[key] or 0 for r in reps)
    out["reps"] = [{k: v for k, v in r.items() if k != "quantiles"} for r in reps]
    return out


def latency_once(run: Run, server: Server, viewers: int, rep: int) -> dict[str, Any]:
    cfg = run.cfg
    sessions = [f"lat{viewers}r{rep}-{k}" for k in range(cfg.sessions)]
    run.publisher.call(cmd="prepare", sessions=sessions)
    paths = [server.stream_path(sessions[j % len(sessions)]) for j in range(viewers)]
    opened = run.viewers.call(cmd="open", host="127.0.0.1", port=server.port, paths=paths)
    if opened["failed"]:
        raise RuntimeError(
            f"{server.system}: {opened['failed']} viewers failed: {opened['errors']}"
        )
    time.sleep(0.5)
    cpu0, client0 = server.cpu(), run.viewers.cpu()
    name = f"latency-{viewers}" if rep == 0 else ""
    with profiling(run, server, name, cfg.warmup + cfg.latency_seconds):
        pub = run.publisher.call(
            cmd="paced", sessions=sessions, rate=cfg.rate, seconds=cfg.warmup + cfg.latency_seconds
        )
    cpu = (server.cpu() - cpu0) / pub["seconds"]
    client_cpu = (run.viewers.cpu() - client0) / pub["seconds"]
    expected = sum(pub["per_session"][sessions[j % len(sessions)]] for j in range(viewers))
    res = run.viewers.call(
        cmd="collect",
        expected=expected,
        wait=10,
        t0=pub["t_start"] + cfg.warmup,
        t1=pub["t_end"],
    )
    lat = res.pop("latency")
    run.publisher.call(cmd="finish", sessions=sessions)
    out = {
        "viewers": viewers,
        "sessions": cfg.sessions,
        "rate": cfg.rate,
        "published": pub["published"],
        "publisher_max_lag_s": pub["max_lag_s"],
        "server_cpu": cpu,
        "viewer_process_cpu": client_cpu,
        **res,
        **{k: v for k, v in lat.items()},
    }
    run.say(
        f"  latency {viewers:>5} viewers: p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms"
        f"  (n={lat['n']}, missing {res['missing']}, gaps {res['gaps']},"
        f" dups {res['duplicates']}, server cpu {cpu:.0%}, viewers' cpu {client_cpu:.0%})"
    )
    return out


def fanout(run: Run, server: Server) -> dict[str, Any]:
    """``cfg.repeats`` runs; the headline is the median one."""
    reps = [fanout_once(run, server, k) for k in range(run.cfg.repeats)]
    out = dict(_median_rep(reps, "deliveries_per_s"))
    out["reps"] = reps
    return out


def fanout_once(run: Run, server: Server, rep: int) -> dict[str, Any]:
    cfg = run.cfg
    sid = f"fan-{rep}"
    paths = [server.stream_path(sid) for _ in range(cfg.fanout_viewers)]
    if server.system != "raw":
        run.publisher.call(cmd="prepare", sessions=[sid])
    opened = run.viewers.call(
        cmd="open", host="127.0.0.1", port=server.port, paths=paths, mode="count"
    )
    if opened["failed"]:
        raise RuntimeError(
            f"{server.system}: {opened['failed']} viewers failed: {opened['errors']}"
        )
    time.sleep(0.3)
    pub: dict[str, Any] = {}
    with profiling(run, server, "fanout" if rep == 0 else "", cfg.warmup + cfg.fanout_seconds):
        client0 = run.viewers.cpu()
        if server.system == "raw":
            time.sleep(cfg.warmup)
            cpu0, t0 = server.cpu(), time.time()
            time.sleep(cfg.fanout_seconds)
            t1 = time.time()
        else:
            cpu0 = server.cpu()
            pub = run.publisher.call(
                cmd="flood",
                session=sid,
                seconds=cfg.warmup + cfg.fanout_seconds,
                # The channels route drops a message whose seq is not above the last it
                # sent, so its publisher must keep order: one call at a time.
                inflight=1 if server.system == "channels" else cfg.publish_concurrency,
            )
            t0, t1 = pub["t_start"] + cfg.warmup, pub["t_end"]
    cpu = (server.cpu() - cpu0) / (t1 - t0 + (cfg.warmup if pub else 0))
    client_cpu = (run.viewers.cpu() - client0) / (t1 - t0 + cfg.warmup)
    res = run.viewers.call(cmd="collect", t0=t0, t1=t1)
    out = {
        "viewers": cfg.fanout_viewers,
        "deliveries_per_s": res["rate"],
        # normalised by the CPU the server process got (the machine has 2 shared cores)
        "deliveries_per_cpu_s": res["rate"] / cpu if cpu > 0 else 0.0,
        "received": res["received"],
        "publish_rate": pub.get("rate"),
        "publisher_cpu": pub["cpu_s"] / (pub["t_end"] - pub["t_start"]) if pub else None,
        "server_cpu": cpu,
        "viewer_process_cpu": client_cpu,
        "seconds": t1 - t0,
    }
    run.say(
        f"  fan-out {cfg.fanout_viewers} viewers: {res['rate']:,.0f} deliveries/s"
        + (f"  (published {pub['rate']:,.0f} events/s)" if pub else "")
        + f"  server cpu {cpu:.0%}, viewers' cpu {client_cpu:.0%}"
    )
    time.sleep(cfg.settle)  # let the server drain what it still had queued
    if server.system != "raw":
        run.publisher.call(cmd="finish", sessions=[sid])
    return out


def reattach(run: Run, server: Server) -> dict[str, Any]:
    cfg = run.cfg
    sid = "re-0"
    if server.system == "gateway":
        run.publisher.call(cmd="prepare", sessions=[sid])
    first = run.publisher.call(cmd="backlog", session=sid, events=cfg.backlog)["first"]
    variants: dict[str, list[tuple[str, dict[str, str]]]] = {}
    if server.system == "gateway":
        conns = []
        for _ in range(cfg.reattach_reps):
            r = httpx.post(
                f"http://127.0.0.1:{server.port}/v1/sessions/{sid}/connections",
                json={"from": first, "commit": "auto"},
                timeout=10,
            )
            r.raise_for_status()
            conns.append((f"/v1/sessions/{sid}/connections/{r.json()['connection_id']}/events", {}))
        variants["connection"] = conns
        variants["last_event_id"] = [
            (f"/v1/sessions/{sid}/events", {"Last-Event-ID": first})
        ] * cfg.reattach_reps
    else:
        variants["last_event_id"] = [
            (f"/sessions/{sid}/events", {"Last-Event-ID": first})
        ] * cfg.reattach_reps
    out: dict[str, Any] = {"backlog": cfg.backlog}
    for name, attempts in variants.items():
        reps = [
            run.viewers.call(
                cmd="reattach",
                host="127.0.0.1",
                port=server.port,
                path=path,
                headers=headers,
                expected=cfg.backlog,
                timeout=60,
            )
            for path, headers in attempts
        ]
        out[name] = {
            "first_ms": statistics.median(r["first_ms"] for r in reps),
            "all_ms": statistics.median(r["all_ms"] for r in reps),
            "first_ms_each": [r["first_ms"] for r in reps],
            "all_ms_each": [r["all_ms"] for r in reps],
            "gaps": sum(r["gaps"] for r in reps),
            "duplicates": sum(r["duplicates"] for r in reps),
        }
        run.say(
            f"  reattach ({name}): first event {out[name]['first_ms']:.1f} ms, "
            f"{cfg.backlog:,} events {out[name]['all_ms']:.0f} ms (median of {len(reps)})"
        )
    out["headline"] = "connection" if server.system == "gateway" else "last_event_id"
    return out


def idle(run: Run, system: str, redis: RedisServer | None) -> dict[str, Any]:
    cfg = run.cfg
    server = Server(system, redis)
    out: dict[str, Any] = {}
    try:
        # Warm up: a few streams opened and closed, so imports, pools and caches are loaded.
        warm = [server.idle_path(f"warm-{k}") for k in range(20)]
        run.viewers.call(cmd="open", host="127.0.0.1", port=server.port, paths=warm)
        run.viewers.call(cmd="close")
        time.sleep(cfg.settle)
        rss0, clients0 = server.rss(), server.redis_clients()
        out["baseline"] = {"rss": rss0, "redis_clients": clients0}
        opened = 0
        for count in cfg.idle_viewers:
            paths = [server.idle_path(f"idle-{k}") for k in range(opened, count)]
            res = run.viewers.call(
                cmd="open", host="127.0.0.1", port=server.port, paths=paths, timeout=120
            )
            if res["failed"]:
                raise RuntimeError(
                    f"{system}: {res['failed']} idle viewers failed: {res['errors']}"
                )
            opened = count
            time.sleep(cfg.settle)
            cpu0 = server.cpu()
            time.sleep(cfg.settle)
            cpu = (server.cpu() - cpu0) / cfg.settle
            rss = server.rss()
            out[str(count)] = {
                "viewers": count,
                "rss": rss,
                "rss_per_viewer_kib": (rss - rss0) / count / 1024,
                "redis_clients": server.redis_clients(),
                "idle_cpu": cpu,
                "open_seconds": res["seconds"],
                "opens_per_s": len(paths) / res["seconds"],
            }
            run.say(
                f"  idle {count:>5} viewers: {out[str(count)]['rss_per_viewer_kib']:.1f} KiB/viewer,"
                f" RSS {rss / 2**20:.1f} MiB, Redis clients {out[str(count)]['redis_clients']},"
                f" idle cpu {cpu:.0%}, opened at {len(paths) / res['seconds']:,.0f}/s"
            )
        run.viewers.call(cmd="close")
    finally:
        server.stop()
    return out


def bench_system(run: Run, system: str) -> dict[str, Any]:
    run.say(f"== {LABEL[system]}  (load average {os.getloadavg()[0]:.2f})")
    redis = RedisServer() if system != "raw" else None
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    try:
        if redis is not None:
            run.publisher.call(cmd="setup", system=system, redis=redis.url)
            out["publish"] = publish_throughput(run, system)
        server = Server(system, redis)
        try:
            if system != "raw":
                out["latency"] = {str(v): latency(run, server, v) for v in run.cfg.latency_viewers}
                out["reattach"] = reattach(run, server)
            out["fanout"] = fanout(run, server)
        finally:
            server.stop()
            problems = [
                line for line in server.log.splitlines() if "Traceback" in line or "ERROR" in line
            ]
            out["server_log_problems"] = len(problems)
        out["idle"] = idle(run, system, redis)
    finally:
        if redis is not None:
            redis.stop()
    out["load_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    from loadtests.bench_report import describe, machine, report

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="reduced counts (under a minute)")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the servers (profiles/ under --out)"
    )
    parser.add_argument(
        "--systems",
        default=",".join((*SYSTEMS, "raw", *PEERS)),
        help="comma-separated subset of gateway, xread, channels, raw, resumable-stream "
        "(a subset of the first four: development, no README, plots or targets)",
    )
    parser.add_argument(
        "--phases",
        help="comma-separated subset of " + ", ".join(PHASES) + " (default: all; with "
        "--quick: " + ",".join(QUICK_PHASES) + "). Without 'systems', the new results are "
        "merged into --out's results.json when there is one, and the report re-rendered",
    )
    parser.add_argument(
        "--fanout-viewers", type=int, help="development: override the fan-out viewer count"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render README.md and the plots from --out's results.json (no measuring)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="development: override a Config field (e.g. live_viewers=2000, "
        "scale_counts=1000:5000)",
    )
    args = parser.parse_args()
    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
        report(data, load_config(data), args.out)
        return
    cfg = QUICK if args.quick else FULL
    if args.fanout_viewers:
        cfg = replace(cfg, fanout_viewers=args.fanout_viewers)
    cfg = override(cfg, args.set)
    systems = args.systems.split(",")
    phases = args.phases.split(",") if args.phases else list(QUICK_PHASES if args.quick else PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        sys.exit(f"unknown phases {sorted(unknown)}: choose from {', '.join(PHASES)}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every process
    need = max(
        cfg.idle_viewers[-1] * 2 + 200 if "systems" in phases else 0,
        cfg.live_viewers + 500 if "live" in phases else 0,
    )
    if hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    m = machine()
    print(f"machine: {describe(m)}\nload average {load_before[0]:.2f} {load_before[1]:.2f}")
    viewers, publisher = Child("viewers"), Child("publisher")
    run = Run(cfg, viewers, publisher, out / "profiles" if args.profile else None)
    results: dict[str, Any] = {}
    try:
        results.update(run_phases(run, phases, systems))
    finally:
        viewers.stop()
        publisher.stop()
    command = "python -m loadtests.bench" + "".join(f" {a}" for a in sys.argv[1:])
    meta = {
        "command": command,
        "quick": args.quick,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.time() - started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "machine": m,
        "machine_text": describe(m),
        "config": asdict(cfg),
        "phases": phases,
    }
    complete = {*SYSTEMS, "raw"} <= set(results)
    if "systems" in phases and not complete:
        print(json.dumps(results, indent=1, default=str)[:20000])
        return
    if not complete:
        previous = out / "results.json"
        if not previous.exists():
            print(json.dumps(results, indent=1, default=str)[:20000])
            print(f"(no {previous} to merge into: no report written)")
            return
        data = json.loads(previous.read_text())
        data["results"].update(results)
        earlier = data["meta"].get("later_phases", [])  # minus those this run replaces
        keep = [e for e in earlier if not set(e["phases"]) <= set(phases)]
        data["meta"]["later_phases"] = [*keep, meta]
        # The merged phases' counts (e.g. --set) are kept in the config the report reads.
        old = data["meta"]["config"]
        prefixes = tuple(PREFIX[p] for p in phases if p in PREFIX)
        for key, value in asdict(cfg).items():
            if key.startswith(prefixes) or key not in old:
                old[key] = value
        report(data, load_config(data), out)
        return
    report({"meta": meta, "results": results}, cfg, out)


def run_phases(run: Run, phases: list[str], systems: list[str]) -> dict[str, Any]:
    """The selected phases, in order; each returns its results under its own key."""
    from loadtests import bench_durable, bench_peers, bench_scale

    results: dict[str, Any] = {}
    if "systems" in phases:
        for system in systems:
            if system in (*SYSTEMS, "raw"):
                results[system] = bench_system(run, system)
    if "peers" in phases and {"gateway", *PEERS} & set(systems):
        results["peers"] = bench_peers.peers(run, systems)
    if "durable" in phases:
        results["durable"] = bench_durable.durable(run)
    if "live" in phases:
        results["live"] = bench_scale.live(run)
    if "cores" in phases:
        results["cores"] = bench_scale.cores(run)
    if "scale" in phases:
        scale = bench_scale.scale(run)
        if scale is not None:
            results["scale"] = scale
    return results


def load_config(data: dict[str, Any]) -> Config:
    """The Config of a results.json (fields it lacks keep their defaults)."""
    known = {f for f in Config.__dataclass_fields__}
    return Config(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in data["meta"]["config"].items() if k in known})  # fmt: skip


def override(cfg: Config, pairs: list[str]) -> Config:
    """``--set FIELD=VALUE`` (tuples as ``a:b:c``), typed like the field's default."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in Config.__dataclass_fields__:
            sys.exit(f"--set: no Config field {key!r}")
        current = getattr(cfg, key)
        if isinstance(current, tuple):
            changes[key] = tuple(int(v) for v in value.split(":"))
        else:
            changes[key] = type(current)(value)
    return replace(cfg, **changes)


if __name__ == "__main__":
    # Run as ``loadtests.bench`` so that the phase modules, which import it, share this module.
    from loadtests.bench import main as _main

    _main()
