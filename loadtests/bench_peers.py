"""The benchmark's ``peers`` phase: the gateway against Vercel's ``resumable-stream``.

``resumable-stream`` (npm) is what a team on the AI SDK reaches for to make a chat answer
resumable: the request that runs the model creates the stream and keeps its chunks in that
process's memory; a reconnecting client asks the producer over Redis Pub/Sub for what it has
so far and then follows it. It runs here in a small Node server
(``loadtests/peers/resumable_stream/server.mjs``, its packages pinned in
``package-lock.json`` and installed by ``npm ci``), on the same redis-server as the gateway,
driven by the same Python viewers (``loadtests/bench_load.py``). Rows:

- publish: events/s into streams, 4 streams at once, one event at a time (the gateway: the
  Publisher, one event per call, 4 callers on 4 sessions); and the same with one resumed
  viewer following each stream;
- reattach to a running stream: time to the first replayed event and to the end of a
  backlog of ``peer_backlog`` events (replay throughput), from the start of the stream;
- reattach after the stream ended: the gateway replays it from Redis; ``resumable-stream``
  answers what the AI SDK documents (``resumeExistingStream`` returns null: HTTP 204, no
  body), reported as its result.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any

import httpx

from tests.support import ROOT, RedisServer, free_port, wait_until

if TYPE_CHECKING:
    from loadtests.bench import Run

PEER_DIR = ROOT / "loadtests" / "peers" / "resumable_stream"
RS = "resumable-stream"


def npm_ci() -> str:
    """Install the peer's pinned packages (``npm ci``) unless the installed tree is the
    lock's; returns ``node --version``. Raises when Node or npm is missing: the peer is a
    system of the benchmark, not optional."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(
            "the resumable-stream peer needs Node 22 and npm on the PATH "
            f"(node: {node}, npm: {npm})"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        raise RuntimeError(f"the resumable-stream peer needs Node 20+ (found {version})")
    installed = PEER_DIR / "node_modules" / ".package-lock.json"
    lock = PEER_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"], cwd=PEER_DIR, check=True
        )
    return version


class PeerServer:
    """``node server.mjs PORT`` with ``REDIS_URL``: resumable-stream behind Node's http."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="gw-resumable-stream-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            ["node", "server.mjs", str(self.port)],
            cwd=PEER_DIR,
            env={**os.environ, "REDIS_URL": redis_url},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, timeout=20, what=f"resumable-stream server on {self.port}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"resumable-stream server exited: {self.output()[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def post(self, path: str, timeout: float = 120) -> dict[str, Any]:
        r = httpx.post(self.url + path, timeout=timeout)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def output(self) -> str:
        return open(self.log.name, errors="replace").read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _reattach_summary(reps: list[dict[str, Any]], backlog: int) -> dict[str, Any]:
    all_ms = statistics.median(r["all_ms"] for r in reps)
    return {
        "backlog": backlog,
        "first_ms": statistics.median(r["first_ms"] for r in reps),
        "all_ms": all_ms,
        "events_per_s": backlog / (all_ms / 1000) if all_ms > 0 else 0.0,
        "first_ms_each": [r["first_ms"] for r in reps],
        "all_ms_each": [r["all_ms"] for r in reps],
        "gaps": sum(r["gaps"] for r in reps),
        "duplicates": sum(r["duplicates"] for r in reps),
    }


def _gateway(run: Run, redis: RedisServer) -> dict[str, Any]:
    from loadtests.bench_procs import Server

    cfg = run.cfg
    out: dict[str, Any] = {}
    run.publisher.call(cmd="setup", system="gateway", redis=redis.url)
    server = Server("gateway", redis)
    try:
        res = run.publisher.call(
            cmd="throughput",
            how="single",
            events=cfg.peer_events,
            concurrency=cfg.peer_streams,
            sessions=cfg.peer_streams,
            prefix="pp",
        )
        out["publish"] = {"rate": res["rate"], "events": res["events"], "seconds": res["seconds"]}
        # The same with one viewer following each session.
        sessions = [f"pl-{k}" for k in range(cfg.peer_streams)]
        run.publisher.call(cmd="prepare", sessions=sessions)
        paths = [server.stream_path(s) for s in sessions]
        run.viewers.call(cmd="open", host="127.0.0.1", port=server.port, paths=paths, mode="count")
        res = run.publisher.call(
            cmd="throughput",
            how="single",
            events=cfg.peer_events,
            concurrency=cfg.peer_streams,
            sessions=cfg.peer_streams,
            prefix="pl",
            prepared=True,  # the runs were started before the viewers attached
        )
        got = run.viewers.call(cmd="collect", expected=res["events"], wait=20)
        out["publish_followed"] = {"rate": res["rate"], "received": got["received"]}
        run.publisher.call(cmd="finish", sessions=sessions)
        run.say(
            f"  publish: {out['publish']['rate']:,.0f} events/s; with a viewer on each "
            f"session {res['rate']:,.0f} events/s ({got['received']:,} delivered)"
        )
        # Reattach to a running stream (the run started and not ended), from its start.
        running, ended = [], []
        for rep in range(cfg.peer_reps):
            sid = f"rr-{rep}"
            run.publisher.call(cmd="prepare", sessions=[sid])
            run.publisher.call(cmd="backlog", session=sid, events=cfg.peer_backlog - 1)
            running.append(_reattach(run, server.port, f"/v1/sessions/{sid}/events?from=start"))
            run.publisher.call(cmd="finish", sessions=[sid])
            ended.append(_reattach(run, server.port, f"/v1/sessions/{sid}/events?from=start"))
        out["reattach_running"] = _reattach_summary(running, cfg.peer_backlog)
        out["reattach_ended"] = {
            **_reattach_summary(ended, cfg.peer_backlog),
            "status": 200,
            "answer": f"200, the whole stream replayed ({cfg.peer_backlog:,} events)",
        }
    finally:
        server.stop()
    return out


def _reattach(run: Run, port: int, path: str) -> dict[str, Any]:
    return run.viewers.call(
        cmd="reattach",
        host="127.0.0.1",
        port=port,
        path=path,
        expected=run.cfg.peer_backlog,
        timeout=60,
    )


def _resumable_stream(run: Run, redis: RedisServer) -> dict[str, Any]:
    cfg = run.cfg
    out: dict[str, Any] = {"node": npm_ci()}
    server = PeerServer(redis.url)
    try:
        server.post("/publish?streams=1&events=100&prefix=warm")  # untimed warm-up
        q = f"streams={cfg.peer_streams}&events={cfg.peer_events}"
        out["publish"] = server.post(f"/publish?{q}&listeners=0&prefix=pp")
        out["publish_followed"] = server.post(f"/publish?{q}&listeners=1&prefix=pl")
        run.say(
            f"  publish: {out['publish']['rate']:,.0f} events/s; with a resumed viewer on "
            f"each stream {out['publish_followed']['rate']:,.0f} events/s "
            f"({out['publish_followed']['received']:,} delivered)"
        )
        running = []
        for rep in range(cfg.peer_reps):
            sid = f"rr-{rep}"
            server.post(f"/start/{sid}?backlog={cfg.peer_backlog}")
            running.append(_reattach(run, server.port, f"/streams/{sid}"))
            server.post(f"/end/{sid}")
        out["reattach_running"] = _reattach_summary(running, cfg.peer_backlog)
        # Reattach after the stream ended: what the library answers.
        server.post(f"/start/re-0?backlog={cfg.peer_backlog}")
        server.post("/end/re-0")
        t0 = time.perf_counter()
        r = httpx.get(f"{server.url}/streams/re-0", timeout=30)
        ms = (time.perf_counter() - t0) * 1000
        out["reattach_ended"] = {
            "status": r.status_code,
            "body_bytes": len(r.content),
            "answer_ms": ms,
            "answer": f"HTTP {r.status_code}, {len(r.content)}-byte body: nothing to replay "
            "(`resumeExistingStream` returns null once the stream is done)",
        }
        problems = [ln for ln in server.output().splitlines() if "Error" in ln]
        out["server_log_problems"] = len(problems)
    finally:
        server.stop()
    return out


def peers(run: Run, systems: list[str]) -> dict[str, Any]:
    """Each selected system (``gateway``, ``resumable-stream``) on its own redis-server."""
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    for system in ("gateway", RS):
        if system not in systems:
            continue
        run.say(f"== peers: {system}  (load average {os.getloadavg()[0]:.2f})")
        redis = RedisServer()
        try:
            out[system] = (_gateway if system == "gateway" else _resumable_stream)(run, redis)
        finally:
            redis.stop()
        r = out[system]
        run.say(
            f"  reattach to a running stream: first event {r['reattach_running']['first_ms']:.1f}"
            f" ms, {run.cfg.peer_backlog:,} events in {r['reattach_running']['all_ms']:.1f} ms"
            f"; after it ended: {r['reattach_ended']['answer']}"
        )
    out["load_after"] = os.getloadavg()[0]
    return out
