"""Scale probe: idle viewers on one real gateway process, what each costs and whether its
heartbeats stay on time.

    python -m loadtests.scale_probe --counts 2000,6000,12000,18000 --heartbeat 5

Starts a throw-away redis-server and ``python -m gateway serve --insecure`` on free loopback
ports, then opens idle SSE viewers (one session each) from separate load processes (this
module's ``load`` subcommand: raw asyncio sockets, each process bound to its own loopback
source address 127.0.0.x, its RLIMIT_NOFILE soft limit raised to the hard limit). At each
level it prints:

- gateway RSS above the same process before any viewer (after a warm-up), per viewer;
- Redis connections of the gateway (``CLIENT LIST``, client name ``gateway:<host>:<pid>``),
  the most seen while sampling during the heartbeat window;
- heartbeat lateness: the time between two consecutive ``: hb`` comments of a viewer minus
  the interval, on a sample of viewers, p50 / p99 / max;
- viewers whose stream ended, and warnings/errors in the gateway log.

Everything is on loopback, bounded in count (``--counts``) and in time (each level waits a
fixed number of heartbeat intervals); the processes it starts are stopped at the end.
:func:`run_scale` is the entry point for the benchmark's scale phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PER_PROCESS = 5000  # viewers per load process (each process stays far below RLIMIT_NOFILE)
SAMPLE_PER_PROCESS = 250  # viewers per load process whose heartbeats are timed
OPEN_CONCURRENCY = 48  # opens in flight per load process


def pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the load process -------------------------------------------------------------------------


class LoadState:
    def __init__(self, host: str, port: int, source: str, kind: str) -> None:
        self.host, self.port, self.source, self.kind = host, port, source, kind
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.hb: dict[int, list[float]] = {}  # sampled viewer -> heartbeat arrival times
        self.ended = 0
        self.errors: list[str] = []


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _open_one(st: LoadState, index: int, sampled: bool) -> None:
    sid = f"scale-{index}"
    reader, writer = await asyncio.open_connection(
        st.host, st.port, local_addr=(st.source, 0), limit=1 << 16
    )
    host = f"Host: {st.host}:{st.port}\r\n"
    if st.kind == "connection":
        body = b'{"from":"live"}'
        writer.write(
            f"POST /v1/sessions/{sid}/connections HTTP/1.1\r\n{host}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers = await _read_head(reader)
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
        if status != 201:
            raise RuntimeError(f"create connection: {status} {payload[:200]!r}")
        cid = json.loads(payload)["connection_id"]
        path = f"/v1/sessions/{sid}/connections/{cid}/events"
    else:
        path = f"/v1/sessions/{sid}/events?from=live"
    writer.write(f"GET {path} HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n".encode())
    status, _ = await _read_head(reader)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status}")
    st.writers.append(writer)
    times = st.hb.setdefault(index, []) if sampled else None
    task = asyncio.create_task(_drain(st, reader, times))
    st.tasks.add(task)


async def _drain(st: LoadState, reader: asyncio.StreamReader, times: list[float] | None) -> None:
    """Read and discard the stream; a sampled viewer notes when each heartbeat arrives."""
    try:
        while True:
            data = await reader.read(1 << 14)
            if not data:
                st.ended += 1
                return
            if times is not None and b": hb" in data:
                times.append(time.monotonic())
    except (ConnectionError, OSError):
        st.ended += 1


async def _open(st: LoadState, first: int, count: int, sample: int) -> dict[str, Any]:
    t0 = time.monotonic()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    failed = 0
    every = max(1, count // max(1, sample))

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                await _open_one(st, first + i, sample > 0 and i % every == 0)
            except Exception as exc:
                failed += 1
                if len(st.errors) < 5:
                    st.errors.append(repr(exc))

    await asyncio.gather(*(one(i) for i in range(count)))
    return {"opened": count - failed, "failed": failed, "seconds": time.monotonic() - t0}


async def load_main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    st: LoadState | None = None
    while line := await reader.readline():
        cmd = json.loads(line)
        out: dict[str, Any] = {}
        if cmd["cmd"] == "init":
            st = LoadState(cmd["host"], cmd["port"], cmd["source"], cmd["kind"])
        elif cmd["cmd"] == "open":
            assert st is not None
            out = await _open(st, cmd["first"], cmd["count"], cmd["sample"])
        elif cmd["cmd"] == "hb_reset":
            assert st is not None
            for times in st.hb.values():
                times.clear()
        elif cmd["cmd"] == "hb":
            assert st is not None
            gaps = [b - a for t in st.hb.values() for a, b in itertools.pairwise(t)]
            silent = sum(1 for t in st.hb.values() if not t)
            out = {"gaps": gaps, "silent": silent, "ended": st.ended, "errors": st.errors}
        elif cmd["cmd"] == "close":
            if st is not None:
                for w in st.writers:
                    w.close()
                for task in st.tasks:
                    task.cancel()
            sys.stdout.write(json.dumps({}) + "\n")
            sys.stdout.flush()
            return
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class LoadProcess:
    """One ``load`` subprocess, driven by one JSON line per command."""

    def __init__(self, host: str, port: int, source: str, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.scale_probe", "load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
        )
        self.send(cmd="init", host=host, port=port, source=source, kind=kind)
        self.recv()

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load process died")
        return dict(json.loads(line))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send(cmd="close")
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --- the orchestrator -------------------------------------------------------------------------


def _redis_clients(redis: Any, pid: int) -> int:
    name = f"name=gateway:{socket.gethostname()}:{pid} "
    return sum(name in line + " " for line in redis.cli("CLIENT", "LIST").splitlines())


def _log_problems(text: str) -> dict[str, int]:
    lines = text.splitlines()
    return {
        "errors": sum(("ERROR" in ln or "Traceback" in ln) for ln in lines),
        "warnings": sum("WARNING" in ln for ln in lines),
        "no_connection": sum("No connection available" in ln for ln in lines),
    }


def run_scale(
    counts: list[int],
    heartbeat_s: float,
    out_dir: Path,
    *,
    kind: str = "connection",
    intervals: int = 4,
    settings: dict[str, Any] | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """Open idle viewers up to each of ``counts`` on one gateway process; returns the
    figures per level (also written to ``out_dir/scale.json``).

    ``kind``: ``connection`` (stored consumers: every heartbeat refreshes the consumer's TTL
    and re-checks the log's head) or ``plain`` (``?from=live``; the head check only).
    ``intervals``: heartbeat intervals timed at each level.
    """
    import psutil

    from tests.support import Gateway, RedisServer

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = sorted(counts)
    redis = RedisServer("--maxclients", "1000")
    gw: Gateway | None = None
    loads: list[LoadProcess] = []
    result: dict[str, Any] = {
        "heartbeat_s": heartbeat_s,
        "kind": kind,
        "levels": [],
        "load_before": os.getloadavg()[0],
    }
    try:
        gw = Gateway(redis.url, heartbeat_interval=heartbeat_s, **(settings or {}))
        ps = psutil.Process(gw.proc.pid)
        nproc = max(1, -(-counts[-1] // PER_PROCESS))
        loads = [LoadProcess("127.0.0.1", gw.port, f"127.0.0.{2 + k}", kind) for k in range(nproc)]
        # Warm up: a few viewers opened and closed, so imports, pools and caches are loaded.
        warm = LoadProcess("127.0.0.1", gw.port, "127.0.0.1", kind)
        warm.send(cmd="open", first=10_000_000, count=50, sample=0)
        warm.recv()
        warm.stop()
        time.sleep(2.0)
        rss0 = ps.memory_info().rss
        result["baseline_rss"] = rss0
        result["baseline_redis_clients"] = _redis_clients(redis, gw.proc.pid)
        opened = 0
        log_seen = 0
        for count in counts:
            add = count - opened
            share = [add // nproc + (1 if k < add % nproc else 0) for k in range(nproc)]
            first = opened
            t0 = time.monotonic()
            for k, n in enumerate(share):
                sample = min(SAMPLE_PER_PROCESS, n) if count == counts[0] else 0
                loads[k].send(cmd="open", first=first, count=n, sample=sample)
                first += n
            replies = [lp.recv() for lp in loads]
            open_s = time.monotonic() - t0
            failed = sum(r["failed"] for r in replies)
            opened = count
            # Let every viewer pass its first heartbeat (random in 0.5-1 x the interval).
            time.sleep(heartbeat_s * 1.2 + 1.0)
            for lp in loads:
                lp.send(cmd="hb_reset")
                lp.recv()
            clients: list[int] = []
            deadline = time.monotonic() + heartbeat_s * intervals + 0.5
            cpu0 = sum(ps.cpu_times()[:2])
            while time.monotonic() < deadline:
                clients.append(_redis_clients(redis, gw.proc.pid))
                time.sleep(0.5)
            cpu = (sum(ps.cpu_times()[:2]) - cpu0) / (heartbeat_s * intervals + 0.5)
            rss = ps.memory_info().rss
            gaps: list[float] = []
            silent = ended = 0
            errors: list[str] = []
            for lp in loads:
                lp.send(cmd="hb")
                r = lp.recv()
                gaps += r["gaps"]
                silent += r["silent"]
                ended += r["ended"]
                errors += r["errors"]
            late = sorted(g - heartbeat_s for g in gaps)
            text = gw.output()
            problems = _log_problems(text[log_seen:])
            log_seen = len(text)
            level = {
                "viewers": count,
                "failed_opens": failed,
                "open_seconds": open_s,
                "rss": rss,
                "rss_per_viewer_kib": (rss - rss0) / count / 1024,
                "redis_clients": clients[-1] if clients else 0,
                "redis_clients_max": max(clients, default=0),
                "hb_gaps": len(gaps),
                "hb_late_p50_ms": pct(late, 50) * 1000,
                "hb_late_p99_ms": pct(late, 99) * 1000,
                "hb_late_max_ms": (late[-1] * 1000) if late else 0.0,
                "hb_silent_viewers": silent,
                "ended_streams": ended,
                "cpu": cpu,
                "load_errors": errors[:5],
                **problems,
            }
            result["levels"].append(level)
            say(
                f"  {count:>6,} viewers: {level['rss_per_viewer_kib']:5.1f} KiB/viewer, "
                f"RSS {rss / 2**20:6.1f} MiB, Redis conns {level['redis_clients_max']}, "
                f"hb late p50 {level['hb_late_p50_ms']:.0f} ms p99 "
                f"{level['hb_late_p99_ms']:.0f} ms max {level['hb_late_max_ms']:.0f} ms "
                f"({len(gaps)} gaps, {silent} silent), cpu {cpu:.0%}, ended {ended}, "
                f"failed {failed}, log errors {problems['errors']} "
                f"(no-connection {problems['no_connection']}), warnings {problems['warnings']}, "
                f"opened in {open_s:.1f}s"
            )
    finally:
        for lp in loads:
            lp.stop()
        if gw is not None:
            gw.stop()
            (out_dir / "scale-gateway.log").write_text(gw.output())
        redis.stop()
    (out_dir / "scale.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    hb = result["heartbeat_s"]
    rows = [
        f"idle viewers ({result['kind']}), heartbeat {hb:g} s",
        "| viewers | KiB/viewer | RSS MiB | Redis conns (max) | hb late p50 / p99 / max ms "
        "| ended | log errors |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for lv in result["levels"]:
        rows.append(
            f"| {lv['viewers']:,} | {lv['rss_per_viewer_kib']:.1f} | {lv['rss'] / 2**20:.0f} "
            f"| {lv['redis_clients_max']} | {lv['hb_late_p50_ms']:.0f} / "
            f"{lv['hb_late_p99_ms']:.0f} / {lv['hb_late_max_ms']:.0f} | {lv['ended_streams']} "
            f"| {lv['errors']} |"
        )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["load"]:
        try:
            import uvloop

            uvloop.run(load_main())
        except ImportError:
            asyncio.run(load_main())
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="2000,6000,12000,18000")
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--kind", choices=("connection", "plain"), default="connection")
    p.add_argument("--intervals", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("/tmp/scale-probe"))
    p.add_argument(
        "--set", action="append", default=[], help="gateway setting NAME=VALUE (GATEWAY_NAME)"
    )
    a = p.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    if counts[-1] > 19_000:
        sys.exit("at most ~19,000 viewers fit under this machine's RLIMIT_NOFILE (20,000)")
    settings = dict(s.split("=", 1) for s in a.set)
    res = run_scale(
        counts, a.heartbeat, a.out, kind=a.kind, intervals=a.intervals, settings=settings
    )
    print(table(res))


if __name__ == "__main__":
    main()
