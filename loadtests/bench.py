"""Benchmarks: the gateway against two alternatives, on real Redis, in one run.

    python -m loadtests.bench            # the full run (about 10 minutes on 2 cores)
    python -m loadtests.bench --quick    # small counts, well under a minute
    python -m loadtests.bench --out DIR  # write results elsewhere (default docs/benchmarks)

Prints a table and writes ``results.json``, PNG plots and ``README.md`` into the output
directory. Systems, each run on the same workloads with its own redis-server on a free port:

- ``gateway``: ``gateway serve --insecure`` (one uvicorn process), published to with the
  gateway's Publisher;
- ``xread``: ``loadtests/baselines/xread_per_viewer.py``, one blocking XREAD per SSE viewer,
  resume by ``Last-Event-ID``, published to by plain XADD;
- ``channels``: ``loadtests/baselines/litestar_channels.py``, Litestar's ChannelsPlugin with
  its Redis stream backend, resume from its history;
- ``raw``: ``loadtests/baselines/raw_asgi.py``, pre-built SSE frames under the same uvicorn:
  the server's own fan-out limit and idle-memory floor.

Workloads: publish throughput (the Publisher vs raw pipelined XADD of the same payloads);
publish→SSE latency at 10, 100 and 1,000 viewers (100 sessions, 1,000 events/s in all);
fan-out (one session, 100 viewers, the publisher as fast as it goes); RSS and Redis
connections at 1,000 and 5,000 idle viewers; reattach to a 10,000-event backlog. Viewers and
publishers run in their own processes (``loadtests/bench_load.py``). Everything runs on
loopback, is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support import ROOT, Gateway, Proc, RedisServer, free_port, wait_until

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
    peer_events=2000,
    peer_backlog=200,
    peer_reps=2,
    live_viewers=200,
    live_sessions=20,
    live_rate=200.0,
    live_seconds=1.0,
    live_procs=2,
    cores_viewers=20,
    cores_seconds=1.0,
    scale_counts=(200, 500),
    scale_heartbeat=1.0,
)
PHASES = ("systems", "peers", "live", "cores", "scale")
QUICK_PHASES = ("systems", "peers")  # the others hold thousands of sockets for minutes
PEERS = ("resumable-stream",)
PREFIX = {"peers": "peer_", "live": "live_", "cores": "cores_", "scale": "scale_"}


# --- processes -----------------------------------------------------------------------------


class Child:
    """A ``loadtests.bench_load`` process: one JSON command per line, one JSON answer."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.bench_load", role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        self._read(30)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.proc.kill()
            raise TimeoutError(f"{self.role}: no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.role}: {out['error']}")
        return out

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def call(self, timeout: float = 300, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self._read(timeout)

    def cpu(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send(cmd="quit")
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Server:
    """The system under test: a gateway or a baseline app, one uvicorn process."""

    def __init__(self, system: str, redis: RedisServer | None) -> None:
        self.system = system
        self.redis = redis
        if system == "gateway":
            assert redis is not None
            gw = Gateway(redis.url)
            self.proc: Proc = gw
            self.port = gw.port
        else:
            module = {
                "xread": "xread_per_viewer",
                "channels": "litestar_channels",
                "raw": "raw_asgi",
            }[system]
            self.port = free_port()
            env = dict(os.environ)
            if redis is not None:
                env["REDIS_URL"] = redis.url
            self.proc = Proc(
                [sys.executable, "-m", f"loadtests.baselines.{module}", "--port", str(self.port)],
                env,
                system,
            )
            wait_until(self._up, timeout=20, what=f"{system} on {self.port}")
        self.ps = psutil.Process(self.proc.proc.pid)

    def _up(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def stream_path(self, sid: str) -> str:
        if self.system == "gateway":
            return f"/v1/sessions/{sid}/events?from=live"
        if self.system == "raw":
            return "/flood"
        return f"/sessions/{sid}/events"

    def idle_path(self, sid: str) -> str:
        return "/idle" if self.system == "raw" else self.stream_path(sid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def redis_clients(self) -> int:
        """Redis client connections of this process, from ``CLIENT LIST``: by client name
        for the gateway (``gateway:<host>:<pid>``), by address for the baselines."""
        if self.redis is None:
            return 0
        lines = self.redis.cli("CLIENT", "LIST").splitlines()
        if self.system == "gateway":
            name = f"name=gateway:{socket.gethostname()}:{self.pid} "
            return sum(name in line + " " for line in lines)
        mine = {
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in self.ps.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == self.redis.port
        }
        return sum(_field(line, "addr") in mine for line in lines)

    def stop(self) -> None:
        self.proc.stop()
        self.log = self.proc.output()


def _field(line: str, key: str) -> str:
    for part in line.split():
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return ""


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


# --- results -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    versions = {}
    for pkg in ("litestar", "uvicorn", "redis", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_version.split(" sha=")[0],
        "packages": versions,
    }


def describe(m: dict[str, Any]) -> str:
    pk = m["packages"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; "
        f"Python {m['python']}; {m['redis_server']}; litestar {pk.get('litestar')}, "
        f"uvicorn {pk.get('uvicorn')}, redis-py {pk.get('redis')}"
    )


def flat_metrics(results: dict[str, Any], cfg: Config) -> dict[str, float]:
    """The headline numbers, one flat name each (what the test checks)."""
    out: dict[str, float] = {}
    for s in SYSTEMS:
        r = results[s]
        pub = r["publish"]
        out[f"{s}.publish.single_events_per_s"] = pub["single"]["rate"]
        if "batch" in pub:
            out[f"{s}.publish.batch_events_per_s"] = pub["batch"]["rate"]
        for v in cfg.latency_viewers:
            out[f"{s}.latency.{v}.p50_ms"] = r["latency"][str(v)]["p50_ms"]
            out[f"{s}.latency.{v}.p99_ms"] = r["latency"][str(v)]["p99_ms"]
        out[f"{s}.fanout.deliveries_per_s"] = r["fanout"]["deliveries_per_s"]
        for n in cfg.idle_viewers:
            out[f"{s}.idle.{n}.rss_per_viewer_kib"] = r["idle"][str(n)]["rss_per_viewer_kib"]
            out[f"{s}.idle.{n}.redis_clients"] = r["idle"][str(n)]["redis_clients"]
        head = r["reattach"][r["reattach"]["headline"]]
        out[f"{s}.reattach.first_ms"] = head["first_ms"]
        out[f"{s}.reattach.backlog_ms"] = head["all_ms"]
    g = results["gateway"]["publish"]
    out["gateway.publish.raw_pipeline_events_per_s"] = g["raw_pipeline"]["rate"]
    out["gateway.publish.ratio_to_raw_pipeline"] = g["batch"]["rate"] / g["raw_pipeline"]["rate"]
    out["raw.fanout.deliveries_per_s"] = results["raw"]["fanout"]["deliveries_per_s"]
    for s in (*SYSTEMS, "raw"):
        out[f"{s}.fanout.deliveries_per_cpu_s"] = results[s]["fanout"]["deliveries_per_cpu_s"]
    out["gateway.fanout.ratio_to_raw"] = (
        out["gateway.fanout.deliveries_per_s"] / out["raw.fanout.deliveries_per_s"]
    )
    for n in cfg.idle_viewers:
        out[f"raw.idle.{n}.rss_per_viewer_kib"] = results["raw"]["idle"][str(n)][
            "rss_per_viewer_kib"
        ]
    return out


def targets(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    """The issue's targets against this run's numbers (``<=`` or ``>=``)."""
    top, lv = cfg.idle_viewers[-1], cfg.latency_viewers[-1]
    rows = [
        ("Redis client connections per process", f"at {top:,} idle viewers",
         m[f"gateway.idle.{top}.redis_clients"], "<=", 8, ""),
        ("RSS per idle viewer", f"at {top:,} idle viewers",
         m[f"gateway.idle.{top}.rss_per_viewer_kib"], "<=", 32, "KiB"),
        ("latency p50", f"at {lv:,} viewers", m[f"gateway.latency.{lv}.p50_ms"], "<=", 3, "ms"),
        ("latency p99", f"at {lv:,} viewers", m[f"gateway.latency.{lv}.p99_ms"], "<=", 15, "ms"),
        ("fan-out", "deliveries/s, one process",
         m["gateway.fanout.deliveries_per_s"], ">=", 50_000, "/s"),
        ("fan-out vs raw ASGI writer", "ratio",
         m["gateway.fanout.ratio_to_raw"], ">=", 0.60, "x"),
        ("publisher vs raw pipelined XADD", f"batches of {cfg.publish_batch}",
         m["gateway.publish.ratio_to_raw_pipeline"], ">=", 0.50, "x"),
        ("reattach: first replayed event", "", m["gateway.reattach.first_ms"], "<=", 20, "ms"),
        ("reattach: end of the backlog", f"{cfg.backlog:,} events",
         m["gateway.reattach.backlog_ms"], "<=", 500, "ms"),
    ]  # fmt: skip
    out = []
    for name, where, value, op, target, unit in rows:
        met = value <= target if op == "<=" else value >= target
        # how far from the target, as a share of it (positive: room left; negative: missed by)
        margin = (target - value) / target if op == "<=" else (value - target) / target
        out.append(
            {
                "target": name,
                "where": where,
                "value": value,
                "op": op,
                "limit": target,
                "unit": unit,
                "met": met,
                "margin": margin,
            }
        )
    return out


def ratios(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    """The gateway against each alternative, per metric, as "times better"."""
    lv, top = cfg.latency_viewers, cfg.idle_viewers
    rows: list[tuple[str, str, bool]] = [
        ("publish, one event per call (events/s)", "publish.single_events_per_s", True),
    ]
    for v in lv:
        rows.append((f"latency p50 at {v:,} viewers", f"latency.{v}.p50_ms", False))
        rows.append((f"latency p99 at {v:,} viewers", f"latency.{v}.p99_ms", False))
    rows.append(("fan-out (deliveries/s)", "fanout.deliveries_per_s", True))
    for n in top:
        rows.append((f"RSS per idle viewer at {n:,}", f"idle.{n}.rss_per_viewer_kib", False))
        rows.append((f"Redis connections at {n:,}", f"idle.{n}.redis_clients", False))
    rows.append(("reattach: first event", "reattach.first_ms", False))
    rows.append((f"reattach: {cfg.backlog:,}-event backlog", "reattach.backlog_ms", False))
    out = []
    for label, key, higher_better in rows:
        g = m[f"gateway.{key}"]
        row: dict[str, Any] = {"metric": label, "key": key, "higher_is_better": higher_better}
        for s in ("xread", "channels"):
            b = m[f"{s}.{key}"]
            row[s] = (g / b if higher_better else b / g) if g > 0 and b > 0 else None
        out.append(row)
    return out


def fmt(value: float, unit: str = "") -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "KiB":
        return f"{value:.1f} KiB"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"


# --- plots ---------------------------------------------------------------------------------


def plots(results: dict[str, Any], cfg: Config, out: Path, desc: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    footer = "Machine: " + desc

    def finish(fig: Any, name: str) -> None:
        fig.text(0.01, 0.005, footer, fontsize=6, color="#555555", wrap=True, va="bottom")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

    # latency vs viewers
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for s in SYSTEMS:
        xs = list(cfg.latency_viewers)
        for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            ys = [results[s]["latency"][str(v)][key] for v in xs]
            ax.plot(xs, ys, "o-", color=COLOR[s], label=LABEL[s])
    for ax, key, target in zip(axes, ("p50", "p99"), (3, 15), strict=True):
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target {key} ≤ {target} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"viewers ({cfg.sessions} sessions, {cfg.rate:,.0f} events/s in all)")
        ax.set_ylabel(f"publish→SSE latency {key} (ms)")
        ax.set_title(f"latency {key}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    finish(fig, "latency.png")

    # latency distribution at the largest viewer count
    top = str(cfg.latency_viewers[-1])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in SYSTEMS:
        q = results[s]["latency"][top]["quantiles"]
        if q:
            ax.plot(q, range(len(q)), color=COLOR[s], label=LABEL[s])
    ax.set_xscale("log")
    ax.set_xlabel("publish→SSE latency (ms)")
    ax.set_ylabel("percentile")
    ax.set_title(f"latency distribution at {int(top):,} viewers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    finish(fig, "latency-cdf.png")

    # fan-out
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = [*SYSTEMS, "raw"]
    vals = [results[s]["fanout"]["deliveries_per_s"] for s in order]
    bars = ax.bar([LABEL[s] for s in order], vals, color=[COLOR[s] for s in order])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax.axhline(50_000, color="black", ls=":", lw=1, label="target ≥ 50,000/s")
    raw = results["raw"]["fanout"]["deliveries_per_s"]
    ax.axhline(0.6 * raw, color="#7f7f7f", ls="--", lw=1, label="target ≥ 60% of raw")
    ax.set_ylabel("event deliveries per second")
    ax.set_title(f"fan-out: one session, {cfg.fanout_viewers} viewers, one process")
    ax.legend(fontsize=8)
    finish(fig, "fanout.png")

    # RSS per idle viewer and Redis connections
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.8 / 4
    for i, s in enumerate(order):
        xs = [k + i * width for k in range(len(cfg.idle_viewers))]
        ys = [results[s]["idle"][str(n)]["rss_per_viewer_kib"] for n in cfg.idle_viewers]
        b = axes[0].bar(xs, ys, width, color=COLOR[s], label=LABEL[s])
        axes[0].bar_label(b, labels=[f"{y:.0f}" for y in ys], fontsize=7)
    axes[0].axhline(32, color="black", ls=":", lw=1, label="target ≤ 32 KiB")
    axes[0].set_xticks([k + 1.5 * width for k in range(len(cfg.idle_viewers))])
    axes[0].set_xticklabels([f"{n:,} viewers" for n in cfg.idle_viewers])
    axes[0].set_ylabel("RSS per idle viewer (KiB)")
    axes[0].set_title("memory per idle viewer")
    axes[0].legend(fontsize=8)
    width = 0.8 / 3
    for i, s in enumerate(SYSTEMS):
        xs = [k + i * width for k in range(len(cfg.idle_viewers))]
        ys = [max(results[s]["idle"][str(n)]["redis_clients"], 0.5) for n in cfg.idle_viewers]
        b = axes[1].bar(xs, ys, width, color=COLOR[s], label=LABEL[s])
        axes[1].bar_label(b, labels=[f"{y:.0f}" for y in ys], fontsize=7)
    axes[1].axhline(8, color="black", ls=":", lw=1, label="target ≤ 8")
    axes[1].set_yscale("log")
    axes[1].set_xticks([k + width for k in range(len(cfg.idle_viewers))])
    axes[1].set_xticklabels([f"{n:,} viewers" for n in cfg.idle_viewers])
    axes[1].set_ylabel("Redis client connections of the process")
    axes[1].set_title("Redis connections")
    axes[1].legend(fontsize=8)
    finish(fig, "idle.png")

    # reattach
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, target, title in (
        (axes[0], "first_ms", 20, "time to the first replayed event"),
        (axes[1], "all_ms", 500, f"time to the end of a {cfg.backlog:,}-event backlog"),
    ):
        labels, vals, colors = [], [], []
        for s in SYSTEMS:
            r = results[s]["reattach"]
            for variant in ("connection", "last_event_id"):
                if variant in r:
                    tag = (
                        ""
                        if s != "gateway"
                        else (" (stored offset)" if variant == "connection" else " (Last-Event-ID)")
                    )
                    labels.append(LABEL[s] + tag)
                    vals.append(r[variant][key])
                    colors.append(COLOR[s])
        b = ax.bar(labels, vals, color=colors)
        ax.bar_label(b, labels=[f"{v:.1f}" if v < 100 else f"{v:,.0f}" for v in vals], fontsize=8)
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target ≤ {target} ms")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.legend(fontsize=8)
    finish(fig, "reattach.png")

    # publish throughput
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, vals, colors = [], [], []
    g = results["gateway"]["publish"]
    for key, label, s in (
        ("batch", f"Publisher, batches of {cfg.publish_batch}", "gateway"),
        ("raw_pipeline", f"raw XADD, pipelines of {cfg.publish_batch}", "raw"),
        ("single", f"Publisher, 1 per call x{cfg.publish_concurrency}", "gateway"),
        ("raw_single", f"raw XADD, 1 per call x{cfg.publish_concurrency}", "raw"),
    ):
        labels.append(label)
        vals.append(g[key]["rate"])
        colors.append(COLOR[s])
    for s in ("xread", "channels"):
        labels.append(f"{LABEL[s]}, 1 per call x{cfg.publish_concurrency}")
        vals.append(results[s]["publish"]["single"]["rate"])
        colors.append(COLOR[s])
    b = ax.barh(labels, vals, color=colors)
    ax.bar_label(b, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("events per second (one publisher process)")
    ax.set_title("publish throughput")
    ax.tick_params(axis="y", labelsize=8)
    finish(fig, "publish.png")
    return names


# --- README ----------------------------------------------------------------------------------


def readme(results: dict[str, Any], data: dict[str, Any], cfg: Config, out: Path) -> str:
    m, meta = data["metrics"], data["meta"]
    lv, top = cfg.latency_viewers, cfg.idle_viewers
    L: list[str] = []
    add = L.append
    add("# Benchmarks\n")
    add(
        "The gateway against the two designs teams usually reach for first, on real Redis, in "
        "one run of one command. Generated by `loadtests/bench.py`; every number below comes "
        "from `results.json` of the same run.\n"
    )
    add("```bash")
    add(f"{meta['command']}")
    add("```\n")
    add(
        f"Run {meta['started']} ({meta['duration_s']:.0f} s{' , QUICK: reduced counts' if meta['quick'] else ''}). "
        f"Load average (1 min) before {meta['load_before'][0]:.2f}, after {meta['load_after'][0]:.2f}.\n"
    )
    add(f"**Machine**: {meta['machine_text']}.\n")
    add(
        "Load average (1 min) when each system's turn began and ended: "
        + "; ".join(
            f"{LABEL[s]} {results[s]['load_before']:.2f} → {results[s]['load_after']:.2f}"
            for s in (*SYSTEMS, "raw")
            if "load_before" in results[s]
        )
        + ". The machine is shared with other engineers' test runs; their load is included.\n"
    )
    met = [t for t in data["targets"] if t["met"]]
    missed = [t for t in data["targets"] if not t["met"]]
    add(
        f"**Targets**: {len(met)} of {len(data['targets'])} met in this run"
        + (
            "; missed: "
            + "; ".join(
                f"{t['target']} ({fmt(t['value'], t['unit'])} against {t['op']} "
                f"{fmt(t['limit'], t['unit'])}, by {abs(t['margin']):.0%})"
                for t in missed
            )
            if missed
            else ""
        )
        + ". What limits them, with profiles: [Analysis](#analysis).\n"
    )
    add("## Systems\n")
    add("| system | what it is |")
    add("| --- | --- |")
    add(
        "| **gateway** | `gateway serve --insecure`, one uvicorn process, default settings; "
        "published to with `gateway.publisher.Publisher` (one Lua script per call: sequence, "
        "XADD, metadata, PUBLISH); viewers on `GET /v1/sessions/{id}/events?from=live` |"
    )
    add(
        "| **XREAD per viewer** | [`baselines/xread_per_viewer.py`](../../loadtests/baselines/"
        "xread_per_viewer.py): Litestar SSE route, one `XREAD BLOCK` loop per viewer on its own "
        "Redis connection, resume by `Last-Event-ID`; published to by plain `XADD` |"
    )
    add(
        "| **Litestar channels** | [`baselines/litestar_channels.py`](../../loadtests/baselines/"
        "litestar_channels.py): `ChannelsPlugin` + `RedisChannelsStreamBackend` (one XREAD loop "
        "per process), SSE route over a subscriber, resume from the backend's history; "
        "published to with the backend's script |"
    )
    add(
        "| raw ASGI writer | [`baselines/raw_asgi.py`](../../loadtests/baselines/raw_asgi.py): "
        "pre-built SSE frames of the same size under the same uvicorn, one `send` per frame: "
        "the server's own fan-out limit and idle-memory floor |"
    )
    add("")
    add(
        "Each system gets its own `redis-server` on a free loopback port. Viewers (raw asyncio "
        "sockets on uvloop) and publishers run in two separate processes "
        "(`loadtests/bench_load.py`); latency is the viewer's receive time minus the publish "
        "time stamped into each event's data, on the same clock.\n"
    )

    add("## Results\n")
    head = "| metric | " + " | ".join(LABEL[s] for s in SYSTEMS) + " | target (gateway) |"
    add(head)
    add("| --- |" + " ---: |" * len(SYSTEMS) + " --- |")

    def row(label: str, key: str, unit: str, target: str = "") -> None:
        cells = []
        for s in SYSTEMS:
            v = m.get(f"{s}.{key}")
            cells.append(fmt(v, unit) if v is not None else "-")
        add(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    g = results["gateway"]["publish"]
    add(
        f"| publish, batches of {cfg.publish_batch} (events/s) | "
        f"{fmt(g['batch']['rate'], '/s')} (raw pipelined XADD {fmt(g['raw_pipeline']['rate'], '/s')}: "
        f"**{m['gateway.publish.ratio_to_raw_pipeline']:.0%}**) | "
        f"{fmt(results['xread']['publish']['batch']['rate'], '/s')} (pipelined XADD) | no batch API | "
        f"≥ 50% of raw pipelined XADD |"
    )
    row(
        f"publish, one event per call, {cfg.publish_concurrency} callers",
        "publish.single_events_per_s",
        "/s",
    )
    for v in lv:
        t50 = "≤ 3 ms" if v == lv[-1] else ""
        t99 = "≤ 15 ms" if v == lv[-1] else ""
        row(f"latency p50, {v:,} viewers", f"latency.{v}.p50_ms", "ms", t50)
        row(f"latency p99, {v:,} viewers", f"latency.{v}.p99_ms", "ms", t99)
    row(
        f"fan-out, {cfg.fanout_viewers} viewers (deliveries/s)",
        "fanout.deliveries_per_s",
        "/s",
        "≥ 50,000/s",
    )
    add(
        f"| fan-out / raw ASGI writer ({fmt(m['raw.fanout.deliveries_per_s'], '/s')}) | "
        + " | ".join(
            f"{m[f'{s}.fanout.deliveries_per_s'] / m['raw.fanout.deliveries_per_s']:.0%}"
            for s in SYSTEMS
        )
        + " | ≥ 60% |"
    )
    row(
        "fan-out per CPU-second the server process got "
        f"(raw writer {fmt(m['raw.fanout.deliveries_per_cpu_s'], '/s')})",
        "fanout.deliveries_per_cpu_s",
        "/s",
    )
    for n in top:
        row(
            f"RSS per idle viewer, {n:,} viewers (raw floor {m[f'raw.idle.{n}.rss_per_viewer_kib']:.1f} KiB)",
            f"idle.{n}.rss_per_viewer_kib",
            "KiB",
            "≤ 32 KiB" if n == top[-1] else "",
        )
        row(
            f"Redis connections, {n:,} viewers",
            f"idle.{n}.redis_clients",
            "",
            "≤ 8" if n == top[-1] else "",
        )
    row("reattach: first replayed event", "reattach.first_ms", "ms", "≤ 20 ms")
    row(
        f"reattach: end of a {cfg.backlog:,}-event backlog", "reattach.backlog_ms", "ms", "≤ 500 ms"
    )
    add("")
    add(
        f"Latency and fan-out: {cfg.repeats} runs each, the median reported (every run in "
        "Details below). Latency: percentiles over every delivery after a warm-up of "
        f"{cfg.warmup:g} s, {cfg.latency_seconds:g} s at {cfg.rate:,.0f} events/s round robin "
        f"over {cfg.sessions} sessions, viewers spread evenly over the sessions. Fan-out: "
        f"{cfg.fanout_seconds:g} s after {cfg.warmup:g} s of warm-up; the publisher is one "
        "process calling one event per call as fast as it goes (4 calls in flight; 1 for "
        "channels, whose route needs the messages in order). Idle: one viewer per "
        f"session; RSS per viewer = (RSS with N viewers - RSS after a warm-up with none) / N. "
        f"Reattach: median of {cfg.reattach_reps}; the gateway's headline is a stored "
        "connection (`GET …/connections/{id}/events`, its offset stored in Redis), the "
        "baselines resume by `Last-Event-ID`.\n"
    )
    from loadtests import bench_extra

    for name in data["plots"]:
        if name not in bench_extra.PLOTS:  # those go with their own sections
            add(f"![{name}]({name})\n")

    L.extend(bench_extra.readme_sections(results, data, cfg))
    add("## Targets\n")
    add("| target | where | measured | limit | result |")
    add("| --- | --- | ---: | ---: | --- |")
    for t in data["targets"]:
        res = (
            f"met ({abs(t['margin']):.0%} to spare)"
            if t["met"]
            else f"**missed by {abs(t['margin']):.0%}**"
        )
        add(
            f"| {t['target']} | {t['where']} | {fmt(t['value'], t['unit'])} | "
            f"{t['op']} {fmt(t['limit'], t['unit'])} | {res} |"
        )
    add("")

    add("## Against the alternatives\n")
    add(
        "How many times better the gateway is (above 1: the gateway wins; below 1: the "
        "alternative does). For latency, memory, connections and times that is the "
        "alternative's number divided by the gateway's; for rates the gateway's divided by "
        "the alternative's.\n"
    )
    add("| metric | vs XREAD per viewer | vs Litestar channels |")
    add("| --- | ---: | ---: |")
    for r in data["ratios"]:
        cells = [f"{r[s]:.2f}x" if r[s] is not None else "-" for s in ("xread", "channels")]
        add(f"| {r['metric']} | " + " | ".join(cells) + " |")
    add("")

    add("## Details\n")
    add("| system | phase | numbers |")
    add("| --- | --- | --- |")
    for s in SYSTEMS:
        for v in lv:
            r = results[s]["latency"][str(v)]
            add(
                f"| {LABEL[s]} | latency {v:,} | n={r['n']:,}, p90 {r['p90_ms']:.2f} ms, "
                f"p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.1f} ms; missing {r['missing']}, "
                f"gaps {r['gaps']}, duplicates {r['duplicates']}; server CPU {r['server_cpu']:.0%}; "
                "each run p50/p99 "
                + ", ".join(f"{x['p50_ms']:.2f}/{x['p99_ms']:.1f} ms" for x in r.get("reps", []))
                + " |"
            )
        f = results[s]["fanout"]
        add(
            f"| {LABEL[s]} | fan-out | published {f['publish_rate']:,.0f} events/s "
            f"(publisher CPU {f['publisher_cpu']:.0%}), server CPU {f['server_cpu']:.0%}; "
            "each run "
            + ", ".join(f"{x['deliveries_per_s']:,.0f}/s" for x in f.get("reps", []))
            + " |"
        )
        for n in top:
            i = results[s]["idle"][str(n)]
            add(
                f"| {LABEL[s]} | idle {n:,} | RSS {i['rss'] / 2**20:.1f} MiB "
                f"(baseline {results[s]['idle']['baseline']['rss'] / 2**20:.1f} MiB), "
                f"idle CPU {i['idle_cpu']:.0%}, opened {i['opens_per_s']:,.0f} streams/s |"
            )
        for variant in ("connection", "last_event_id"):
            r = results[s]["reattach"].get(variant)
            if r:
                add(
                    f"| {LABEL[s]} | reattach ({variant.replace('_', '-')}) | first "
                    + ", ".join(f"{x:.1f}" for x in r["first_ms_each"])
                    + " ms; all "
                    + ", ".join(f"{x:,.0f}" for x in r["all_ms_each"])
                    + f" ms; gaps {r['gaps']}, duplicates {r['duplicates']} |"
                )
    f = results["raw"]["fanout"]
    add(
        f"| raw ASGI writer | fan-out | server CPU {f['server_cpu']:.0%}; each run "
        + ", ".join(f"{x['deliveries_per_s']:,.0f}/s" for x in f.get("reps", []))
        + " |"
    )
    add("")

    extra = sorted(p.name for p in out.glob("*.md") if p.name not in ("README.md", "analysis.md"))
    analysis = out / "analysis.md"
    if analysis.exists():
        add(analysis.read_text().strip() + "\n")
    add("## Other benchmarks\n")
    add(
        "- Durable Store (`/ds`) against the Node reference server: "
        "`python -m loadtests.ds_bench`" + "".join(f"; [{name}]({name})" for name in extra) + "."
    )
    add("- Connection-leak soak (Locust): [docs/loadtests.md](../loadtests.md).")
    add("")
    return "\n".join(L)


def print_table(data: dict[str, Any]) -> None:
    m = data["metrics"]
    width = max(len(k) for k in m)
    print()
    for key, value in m.items():
        print(f"{key:<{width}}  {value:>14,.2f}")
    print()
    for t in data["targets"]:
        verdict = "met" if t["met"] else f"MISSED by {abs(t['margin']):.0%}"
        print(
            f"target {t['target']:<36} {t['where']:<26} {fmt(t['value'], t['unit']):>14} "
            f"{t['op']} {fmt(t['limit'], t['unit']):<10} {verdict}"
        )
    print()
    for r in data["ratios"]:
        cells = "  ".join(
            f"vs {s} {r[s]:.2f}x" if r[s] is not None else f"vs {s} -"
            for s in ("xread", "channels")
        )
        print(f"gateway {r['metric']:<42} {cells}")


def main() -> None:
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
        data["meta"].setdefault("later_phases", []).append(meta)
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
    from loadtests import bench_peers, bench_scale

    results: dict[str, Any] = {}
    if "systems" in phases:
        for system in systems:
            if system in (*SYSTEMS, "raw"):
                results[system] = bench_system(run, system)
    if "peers" in phases and {"gateway", *PEERS} & set(systems):
        results["peers"] = bench_peers.peers(run, systems)
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


def report(data: dict[str, Any], cfg: Config, out: Path) -> None:
    """Derive metrics, targets and ratios; write results.json, the plots and README.md."""
    from loadtests import bench_extra

    results = data["results"]
    data["metrics"] = flat_metrics(results, cfg) | bench_extra.metrics(results, cfg)
    data["targets"] = targets(data["metrics"], cfg) + bench_extra.targets(data["metrics"], cfg)
    data["ratios"] = ratios(data["metrics"], cfg)
    data["peer_ratios"] = bench_extra.peer_ratios(results, cfg)
    data["plots"] = plots(results, cfg, out, data["meta"]["machine_text"])
    data["plots"] += bench_extra.plots(results, cfg, out, data["meta"]["machine_text"])
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "README.md").write_text(readme(results, data, cfg, out))
    print_table(data)
    print(f"\nwrote {out / 'results.json'}, {out / 'README.md'} and {len(data['plots'])} plots")


if __name__ == "__main__":
    # Run as ``loadtests.bench`` so that the phase modules, which import it, share this module.
    from loadtests.bench import main as _main

    _main()
