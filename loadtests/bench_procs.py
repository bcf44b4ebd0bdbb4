"""Processes of the benchmark (``loadtests/bench.py``): the load processes it drives
(``Child``: ``loadtests/bench_load.py`` over stdin/stdout) and the system under test
(``Server``: a gateway or a baseline app, one uvicorn process, its RSS, CPU and Redis
connections)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
from typing import Any

import psutil

from tests.support import ROOT, Gateway, Proc, RedisServer, free_port, wait_until


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
