"""The system under test: redis-server (AOF ``always``) or a 6-node Redis Cluster, a TCP
proxy in front of the single node, gateways and workers as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from loadtests.chaos.proxy import RedisProxy
from tests.cluster import RedisCluster
from tests.support import Proc, RedisServer, free_port

# Short timeouts so that faults resolve within a chaos run (issue 11's schedule).
SETTINGS: dict[str, Any] = {
    "run_lease_ttl": 2,
    "run_pickup_timeout": 6,
    "command_claim_idle": 3,
    "heartbeat_interval": 1,
    "auto_commit_interval": 0.1,
    "retention_after_run": 0,  # keep every event: the invariants read whole logs
    "retention_maxlen": 10_000_000,
    "worker_drain_timeout": 1,
    "drain_timeout": 3,
    "drain_spread": 0.2,
    "sse_retry_ms": 300,
    "connection_rate": 100_000,
}


def _env(redis_url: str, extra: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    for key, value in {**SETTINGS, **extra}.items():
        env[f"GATEWAY_{key.upper()}"] = str(value)
    return env


@dataclass
class Node:
    """One gateway or worker process that faults may kill, freeze or stop gracefully."""

    kind: str  # "gateway" | "worker"
    index: int
    proc: Proc
    port: int = 0
    state: str = "up"  # "up" | "down" | "frozen"
    restarts: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)  # a frozen process must be able to die
        self.signal(signal.SIGKILL)
        self.proc.proc.wait(10)
        self.state = "down"

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)
        self.state = "frozen"

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.state = "up"

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM (a planned restart: drain), SIGKILL if it is not gone in ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.state = "down"

    def start(self) -> None:
        self.proc.proc = self.proc._spawn()
        self.restarts += 1
        self.state = "up"


@dataclass
class Topology:
    """Everything a chaos run starts; ``stop()`` tears it all down."""

    cluster: bool
    redis: RedisServer | None = None
    redis_cluster: RedisCluster | None = None
    proxy: RedisProxy | None = None
    gateways: list[Node] = field(default_factory=list)
    workers: list[Node] = field(default_factory=list)
    logdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="gw-chaos-"))

    @classmethod
    def start(
        cls, *, cluster: bool, gateways: int, workers: int, tokens_per_second: float
    ) -> Topology:
        top = cls(cluster)
        try:
            if cluster:
                top.redis_cluster = RedisCluster("--appendonly", "yes", "--appendfsync", "always")
                url = top.redis_cluster.url
            else:
                top.redis = RedisServer("--appendonly", "yes", "--appendfsync", "always")
                top.proxy = RedisProxy(top.redis.port)
                url = top.proxy.url
            for i in range(gateways):
                port = free_port()
                args = [sys.executable, "-m", "gateway", "serve", "--insecure", "--port",
                        str(port), "--log-level", "warning"]  # fmt: skip
                proc = Proc(args, _env(url, {}), f"chaos-gateway-{i}")
                top.gateways.append(Node("gateway", i, proc, port))
            for i in range(workers):
                args = [sys.executable, "-m", "gateway", "worker", "--log-level", "warning"]
                extra = {"tokens_per_second": tokens_per_second}
                proc = Proc(args, _env(url, extra), f"chaos-worker-{i}")
                top.workers.append(Node("worker", i, proc))
        except BaseException:
            top.stop()
            raise
        return top

    @property
    def direct_url(self) -> str:
        """Redis as the checker sees it: never through the proxy."""
        if self.redis_cluster is not None:
            return self.redis_cluster.url
        assert self.redis is not None
        return self.redis.url

    def stop(self) -> None:
        for node in [*self.gateways, *self.workers]:
            node.signal(signal.SIGCONT)
            node.proc.stop(signal.SIGKILL)
        if self.proxy is not None:
            self.proxy.close()
        if self.redis is not None:
            self.redis.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
