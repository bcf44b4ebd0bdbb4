"""The benchmark's ``live``, ``cores`` and ``scale`` phases (the gateway alone).

- ``live``: ``live_viewers`` viewers over ``live_sessions`` sessions of one gateway process,
  ``live_rate`` events/s published in all (round robin); publish→SSE latency p50/p99 over
  every delivery (the publish time is stamped into each event's data). The viewers are split
  over ``live_procs`` load processes (``loadtests/bench_load.py``), each raising its own
  RLIMIT_NOFILE and binding its sockets to its own loopback source address (127.0.0.2,
  127.0.0.3, …) so that no source runs out of ephemeral ports.
- ``cores``: ``gateway serve --workers 2`` against ``--workers 1``: fan-out deliveries/s of
  one session to ``cores_viewers`` viewers, the publisher as fast as it goes, same load.
- ``scale``: idle viewers up to ``scale_counts`` on one gateway process, through
  ``loadtests.scale_probe.run_scale`` when that module is present (skipped otherwise).

This machine's RLIMIT_NOFILE hard limit (20,000, not raisable) bounds one process to about
19,500 sockets: 50,000 viewers on one gateway process cannot be measured here; the report
extrapolates the measured curve instead and says so.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from tests.support import Proc, RedisServer, _env, free_port, wait_until

if TYPE_CHECKING:
    from loadtests.bench import Run

TARGET_VIEWERS = 50_000


def _pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def nofile_note() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "rlimit_nofile_soft": soft,
        "rlimit_nofile_hard": hard,
        "max_viewers_one_process": max(0, hard - 500),
        "target_viewers": TARGET_VIEWERS,
        "target_measurable": hard > TARGET_VIEWERS + 500,
    }


def live(run: Run) -> dict[str, Any]:
    from loadtests.bench_procs import Child, Server

    cfg = run.cfg
    run.say(
        f"== live: {cfg.live_viewers:,} viewers, {cfg.live_sessions:,} sessions, "
        f"{cfg.live_rate:,.0f} events/s  (load average {os.getloadavg()[0]:.2f})"
    )
    out: dict[str, Any] = {"load_before": os.getloadavg()[0], **nofile_note()}
    redis = RedisServer()
    children: list[Any] = []
    try:
        run.publisher.call(cmd="setup", system="gateway", redis=redis.url)
        server = Server("gateway", redis)
        try:
            sessions = [f"live-{k}" for k in range(cfg.live_sessions)]
            run.publisher.call(cmd="prepare", sessions=sessions, timeout=120)
            warm = [server.stream_path(f"warm-{k}") for k in range(20)]
            run.publisher.call(cmd="prepare", sessions=[f"warm-{k}" for k in range(20)])
            run.viewers.call(cmd="open", host="127.0.0.1", port=server.port, paths=warm)
            run.viewers.call(cmd="close")
            time.sleep(cfg.settle)
            rss0 = server.rss()
            children = [Child("viewers") for _ in range(cfg.live_procs)]
            shares: list[list[str]] = [[] for _ in children]
            for j in range(cfg.live_viewers):
                shares[j % len(children)].append(sessions[j % len(sessions)])
            t0 = time.perf_counter()
            for k, (child, share) in enumerate(zip(children, shares, strict=True)):
                child.send(
                    cmd="open",
                    host="127.0.0.1",
                    port=server.port,
                    paths=[server.stream_path(s) for s in share],
                    source=f"127.0.0.{2 + k}",
                    concurrency=50,
                    timeout=120,
                    report_failed=True,
                )
            opened = [child._read(600) for child in children]
            open_s = time.perf_counter() - t0
            # A viewer the gateway refused is reported, not fatal: the rest are measured.
            failed = sum(o["failed"] for o in opened)
            open_errors = [e for o in opened for e in o["errors"]][:5]
            for share, o in zip(shares, opened, strict=True):
                for path in o["failed_paths"]:
                    share.remove(path.split("/")[3])
            if failed:
                run.say(f"  {failed:,} viewers failed to open, e.g. {open_errors[:2]}")
            time.sleep(cfg.settle)
            rss_open = server.rss()
            clients = server.redis_clients()
            cpu0 = server.cpu()
            gc_open = gc_pauses(f"http://127.0.0.1:{server.port}/metrics")
            pub = run.publisher.call(
                cmd="paced",
                sessions=sessions,
                rate=cfg.live_rate,
                seconds=cfg.warmup + cfg.live_seconds,
                timeout=600,
            )
            cpu = (server.cpu() - cpu0) / pub["seconds"]
            rss_live = server.rss()
            lat: list[float] = []
            received = missing = gaps = dups = ended = 0
            for child, share in zip(children, shares, strict=True):
                expected = sum(pub["per_session"][s] for s in share)
                res = child.call(
                    cmd="collect",
                    expected=expected,
                    wait=30,
                    t0=pub["t_start"] + cfg.warmup,
                    t1=pub["t_end"],
                    samples=True,
                    timeout=600,
                )
                lat += res["samples"]
                received += res["received"]
                missing += res["missing"] or 0
                gaps += res["gaps"]
                dups += res["duplicates"]
                ended += res["ended"]
            lat.sort()
            run.publisher.call(cmd="finish", sessions=sessions, timeout=120)
            gc_end = gc_pauses(f"http://127.0.0.1:{server.port}/metrics")
            # The collections while events flowed (those of the opening burst left out).
            out["gc"] = {
                gen: {k: v[k] - gc_open.get(gen, {}).get(k, 0.0) for k in ("count", "sum_s")}
                for gen, v in gc_end.items()
            }
            out.update(
                {
                    "viewers": cfg.live_viewers,
                    "sessions": cfg.live_sessions,
                    "rate": cfg.live_rate,
                    "seconds": cfg.live_seconds,
                    "load_processes": cfg.live_procs,
                    "open_seconds": open_s,
                    "failed_opens": failed,
                    "open_errors": open_errors,
                    "ended_streams": ended,
                    "published": pub["published"],
                    "publisher_max_lag_s": pub["max_lag_s"],
                    "received": received,
                    "missing": missing,
                    "gaps": gaps,
                    "duplicates": dups,
                    "n": len(lat),
                    "p50_ms": _pct(lat, 50),
                    "p90_ms": _pct(lat, 90),
                    "p99_ms": _pct(lat, 99),
                    "p999_ms": _pct(lat, 99.9),
                    "max_ms": lat[-1] if lat else 0.0,
                    "quantiles": [_pct(lat, q) for q in range(101)] if lat else [],
                    "server_cpu": cpu,
                    "rss_before": rss0,
                    "rss_open": rss_open,
                    "rss_live": rss_live,
                    "rss_per_viewer_kib": (rss_live - rss0)
                    / max(1, cfg.live_viewers - failed)
                    / 1024,
                    "redis_clients": clients,
                }
            )
        finally:
            server.stop()
            lines = server.log.splitlines()
            out["server_log_problems"] = sum("Traceback" in ln or "ERROR" in ln for ln in lines)
            out["log_no_connection"] = sum("No connection available" in ln for ln in lines)
    finally:
        for child in children:
            child.stop()
        redis.stop()
    out["load_after"] = os.getloadavg()[0]
    run.say(
        f"  live {cfg.live_viewers:,} viewers: p50 {out['p50_ms']:.2f} ms, p99 "
        f"{out['p99_ms']:.2f} ms (n={out['n']:,}, missing {out['missing']}, gaps "
        f"{out['gaps']}, dups {out['duplicates']}, failed opens {out['failed_opens']}, ended "
        f"{out['ended_streams']}), server cpu {out['server_cpu']:.0%}, "
        f"RSS +{out['rss_per_viewer_kib']:.1f} KiB/viewer, Redis clients {out['redis_clients']},"
        f" publisher lag max {out['publisher_max_lag_s'] * 1000:.0f} ms; GC pauses "
        + ", ".join(
            f"gen {g}: {v['count']:.0f} ({v['sum_s'] * 1000:.0f} ms)"
            for g, v in sorted(out.get("gc", {}).items())
        )
    )
    return out


def gc_pauses(metrics_url: str) -> dict[str, dict[str, float]]:
    """The gateway's ``gateway_gc_pause_seconds`` by generation since it started:
    ``{"count": collections, "sum_s": seconds in all}`` (empty if the scrape fails)."""
    try:
        text = httpx.get(metrics_url, timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for suffix, key in (("_count{", "count"), ("_sum{", "sum_s")):
            if line.startswith("gateway_gc_pause_seconds" + suffix):
                name, _, value = line.rpartition(" ")
                gen = name.split('generation="', 1)[1].split('"', 1)[0]
                out.setdefault(gen, {"count": 0.0, "sum_s": 0.0})[key] = float(value)
    return out


class Workers:
    """``gateway serve --insecure --workers N`` on a free port; CPU and RSS summed over the
    uvicorn supervisor and its worker processes."""

    def __init__(self, redis_url: str, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "gateway", "serve", "--insecure", "--port",
                str(self.port), "--log-level", "warning", "--workers", str(workers)]  # fmt: skip
        self.proc = Proc(args, _env(redis_url), f"gateway-w{workers}")
        wait_until(
            lambda: httpx.get(self.url + "/readyz", timeout=1).status_code == 200,
            timeout=30,
            what=f"gateway --workers {workers}",
        )
        self.ps = psutil.Process(self.proc.proc.pid)
        wait_until(lambda: len(self.ps.children()) >= workers or workers == 1, timeout=30)

    def stream_path(self, sid: str) -> str:
        return f"/v1/sessions/{sid}/events?from=live"

    def cpu(self) -> float:
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        self.proc.stop()


def cores(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    run.say(
        f"== cores: --workers 1 vs 2, fan-out to {cfg.cores_viewers} viewers "
        f"(load average {os.getloadavg()[0]:.2f})"
    )
    out: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": psutil.cpu_count()}
    redis = RedisServer()
    try:
        run.publisher.call(cmd="setup", system="gateway", redis=redis.url)
        for workers in (1, 2):
            server = Workers(redis.url, workers)
            reps = []
            try:
                for rep in range(cfg.repeats):
                    reps.append(_fanout_workers(run, server, f"cores{workers}-{rep}"))
            finally:
                server.stop()
            reps.sort(key=lambda r: r["deliveries_per_s"])
            out[str(workers)] = {**reps[(len(reps) - 1) // 2], "reps": reps}
            run.say(
                f"  --workers {workers}: {out[str(workers)]['deliveries_per_s']:,.0f} "
                f"deliveries/s (each run "
                + ", ".join(f"{r['deliveries_per_s']:,.0f}" for r in reps)
                + f"), server cpu {out[str(workers)]['server_cpu']:.0%}"
            )
    finally:
        redis.stop()
    out["ratio"] = out["2"]["deliveries_per_s"] / out["1"]["deliveries_per_s"]
    out["load_after"] = os.getloadavg()[0]
    run.say(f"  ratio --workers 2 / --workers 1: {out['ratio']:.2f}x")
    return out


def _fanout_workers(run: Run, server: Workers, sid: str) -> dict[str, Any]:
    cfg = run.cfg
    run.publisher.call(cmd="prepare", sessions=[sid])
    paths = [server.stream_path(sid) for _ in range(cfg.cores_viewers)]
    opened = run.viewers.call(
        cmd="open", host="127.0.0.1", port=server.port, paths=paths, mode="count"
    )
    if opened["failed"]:
        raise RuntimeError(f"cores: {opened['failed']} viewers failed: {opened['errors']}")
    time.sleep(0.3)
    cpu0 = server.cpu()
    pub = run.publisher.call(
        cmd="flood",
        session=sid,
        seconds=cfg.warmup + cfg.cores_seconds,
        inflight=cfg.publish_concurrency,
    )
    t0, t1 = pub["t_start"] + cfg.warmup, pub["t_end"]
    cpu = (server.cpu() - cpu0) / (t1 - pub["t_start"])
    res = run.viewers.call(cmd="collect", t0=t0, t1=t1)
    time.sleep(cfg.settle)
    run.publisher.call(cmd="finish", sessions=[sid])
    return {
        "viewers": cfg.cores_viewers,
        "deliveries_per_s": res["rate"],
        "publish_rate": pub["rate"],
        "server_cpu": cpu,
        "seconds": t1 - t0,
    }


def scale(run: Run) -> dict[str, Any] | None:
    """Idle viewers up to ``scale_counts`` via ``loadtests.scale_probe.run_scale``; None
    (and a line saying so) when that module is not in this tree."""
    cfg = run.cfg
    try:
        probe = importlib.import_module("loadtests.scale_probe")
    except ImportError:
        run.say("== scale: unavailable (loadtests/scale_probe.py is not in this tree): skipped")
        return None
    counts = [c for c in cfg.scale_counts if c <= nofile_note()["max_viewers_one_process"]]
    run.say(
        f"== scale: idle viewers {', '.join(f'{c:,}' for c in counts)}, heartbeat "
        f"{cfg.scale_heartbeat:g} s  (load average {os.getloadavg()[0]:.2f})"
    )
    with tempfile.TemporaryDirectory(prefix="gw-scale-") as tmp:
        from pathlib import Path

        result: dict[str, Any] = probe.run_scale(counts, cfg.scale_heartbeat, Path(tmp))
    result = dict(result)
    result.update(nofile_note())
    result["extrapolated"] = extrapolate(result.get("levels") or [], result.get("baseline_rss"))
    return result


def extrapolate(levels: list[dict[str, Any]], baseline: int | None) -> dict[str, Any] | None:
    """RSS at ``TARGET_VIEWERS`` from a least-squares line through the measured levels
    (RSS against viewers): what one process would need, had it the file descriptors."""
    pts = [(lv["viewers"], lv["rss"]) for lv in levels if "rss" in lv and lv.get("viewers")]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    rss = my + slope * (TARGET_VIEWERS - mx)
    return {
        "viewers": TARGET_VIEWERS,
        "slope_kib_per_viewer": slope / 1024,
        "rss_mib": rss / 2**20,
        "rss_per_viewer_kib": (rss - baseline) / TARGET_VIEWERS / 1024 if baseline else None,
        "from_levels": [x for x, _ in pts],
    }
