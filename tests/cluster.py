"""A throw-away Redis Cluster for tests: 3 masters + 3 replicas on free loopback ports.

Nodes run with ``--cluster-node-timeout 2000`` so a killed master is replaced in 3-5 s.
Ready means: ``cluster_state:ok`` with all 16384 slots on every node, every replica's link
up, and every node holding the same view of the topology (without the last, a manual
``CLUSTER FAILOVER`` right after start times out; see docs/design/redis-cluster.md).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster-bus ports (+10000) are free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 < 65536 and _free(port + 10000) and port not in out:
            out.append(port)
    return out


class RedisCluster:
    """Six ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster
    create --cluster-replicas 1``. ``url`` is the gateway's ``redis+cluster://`` URL."""

    def __init__(self, *extra: str, node_timeout_ms: int = 2000) -> None:
        """``extra``: more redis-server arguments for every node (persistence, say)."""
        t0 = time.monotonic()
        self.extra = extra
        self.ports = _pick_ports(6)
        self.dir = Path(tempfile.mkdtemp(prefix="gw-cluster-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.node_timeout_ms = node_timeout_ms
        try:
            for port in self.ports:
                self.start_node(port)
            for i, port in enumerate(self.ports):
                if not self._up(port):
                    # Another process took the port between the pick and the bind (parallel
                    # test runs): start this node on a fresh pair of ports.
                    self.procs.pop(port).kill()
                    self.ports[i] = port = _pick_ports(1)[0]
                    self.start_node(port)
                    self._wait(lambda p=port: self._up(p), 30, f"node {port} up")
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in self.ports],
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - t0

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--repl-diskless-sync-delay",
                "0",
                "--logfile",
                str(self.dir / f"{port}.log"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _up(self, port: int, timeout: float = 20.0) -> bool:
        """Whether the node on ``port`` answers PING within ``timeout`` (False if it died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[port].poll() is not None:
                return False
            with contextlib.suppress(Exception):
                if self.cli(port, "PING").strip() == "PONG":
                    return True
            time.sleep(0.05)
        return False

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    @staticmethod
    def _wait(pred: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if pred():  # type: ignore[operator]
                    return
            time.sleep(0.05)
        raise TimeoutError(f"cluster: timed out waiting for {what}")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def role(self, port: int) -> str:
        return self.cli(port, "ROLE").split("\n")[0].strip()

    def masters(self) -> list[int]:
        return [p for p in self.live_ports() if self.role(p) == "master"]

    def replica_of(self, master: int) -> int:
        for p in self.live_ports():
            info = self.cli(p, "INFO", "replication")
            if "role:slave" in info and f"master_port:{master}" in info.split():
                return p
        raise LookupError(f"no replica of {master}")

    def master_of_slot(self, slot: int) -> int:
        for line in self.cli(self.live_ports()[0], "CLUSTER", "NODES").splitlines():
            f = line.split()
            if "master" not in f[2] or "fail" in f[2]:
                continue
            for rng in f[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(f[1].split(":")[1].split("@")[0])
        raise LookupError(f"slot {slot}")

    def _converged(self, ports: list[int]) -> bool:
        views = set()
        for p in ports:
            info = self.cli(p, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
            view = set()
            for line in self.cli(p, "CLUSTER", "NODES").strip().splitlines():
                f = line.split()
                flags = set(f[2].split(","))
                if flags & {"fail", "fail?", "handshake", "noaddr"} and f[1].split(":")[1].split(
                    "@"
                )[0] in map(str, ports):
                    return False
                if f[7] != "connected" and "fail" not in f[2]:
                    return False
                view.add((f[0], "master" in flags, f[3]))
            views.add(frozenset(view))
        return len(views) == 1

    def _replicas_linked(self, ports: list[int]) -> bool:
        infos = [self.cli(p, "INFO", "replication") for p in ports]
        replicas = [i for i in infos if "role:slave" in i]
        return len(replicas) >= len(ports) // 2 and all(
            "master_link_status:up" in i for i in replicas
        )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """All slots served, replicas linked, one topology view on every live node."""
        ports = self.live_ports()
        self._wait(lambda: self._replicas_linked(ports), timeout, "replicas linked")
        self._wait(lambda: self._converged(ports), timeout, "topology converged")

    def failover(self, replica: int) -> None:
        """``CLUSTER FAILOVER`` on ``replica``: a lossless, coordinated promotion."""
        self.cli(replica, "CLUSTER", "FAILOVER")
        self._wait(lambda: self.role(replica) == "master", 15, f"{replica} promoted")

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
