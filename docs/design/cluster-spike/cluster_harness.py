"""Start/stop a throwaway 6-node (3 masters + 3 replicas) Redis Cluster.

Usable as a library (pytest fixture below) or CLI:
    python cluster_harness.py start   -> prints JSON {ports, dir, pids, ready_s}
    python cluster_harness.py stop <state.json>
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

PORT_RANGE = range(17000, 18000)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_ports(n: int = 6, start: int | None = None) -> list[int]:
    """n consecutive free ports in 17000-17999 whose cluster-bus port (+10000) is free too."""
    first = start if start is not None else 17000 + (os.getpid() % 90) * 10
    candidates = list(range(first, 18000 - n)) + list(range(17000, first))
    for base in candidates:
        ports = list(range(base, base + n))
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free port block")


@dataclass
class Cluster:
    ports: list[int]
    dir: str
    pids: dict[int, int] = field(default_factory=dict)
    ready_s: float = 0.0

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def cli(self, port: int, *args: str, check=True) -> str:
        r = subprocess.run(["redis-cli", "-p", str(port), *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode:
            raise RuntimeError(r.stderr)
        return r.stdout

    def start_node(self, port: int, node_timeout_ms: int = 2000) -> None:
        p = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(node_timeout_ms),
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--repl-diskless-sync-delay", "0",
             "--logfile", os.path.join(self.dir, f"{port}.log"),
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.pids[port] = p.pid
        self._procs = getattr(self, "_procs", {})
        self._procs[port] = p

    def roles(self) -> dict[int, str]:
        out = {}
        for p in self.ports:
            try:
                out[p] = self.cli(p, "ROLE").split("\n")[0]
            except Exception:
                out[p] = "down"
        return out

    def masters(self) -> list[int]:
        return [p for p, r in self.roles().items() if r == "master"]

    def replica_of(self, master_port: int) -> int:
        for p in self.ports:
            try:
                info = self.cli(p, "INFO", "replication")
            except Exception:
                continue
            if "role:slave" in info and f"master_port:{master_port}" in info:
                return p
        raise LookupError(master_port)

    def wait_ok(self, timeout: float = 30.0, ports=None) -> None:
        ports = ports or self.ports
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO") for p in ports):
                    # also every node must agree that 16384 slots are assigned
                    if all("cluster_slots_ok:16384" in self.cli(p, "CLUSTER", "INFO") for p in ports):
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise TimeoutError("cluster not ok")

    def topology_view(self, port: int) -> frozenset:
        """{(node_id, role, master_id)} as seen by one node (flags like myself stripped)."""
        view = set()
        for line in self.cli(port, "CLUSTER", "NODES").strip().splitlines():
            f = line.split()
            flags = set(f[2].split(","))
            if flags & {"handshake", "noaddr", "fail", "fail?"} or f[7] != "connected":
                raise RuntimeError("not converged")
            role = "master" if "master" in flags else "slave"
            view.add((f[0], role, f[3]))
        return frozenset(view)

    def wait_converged(self, timeout: float = 30.0, ports=None) -> None:
        """Every node sees the same masters/replicas (needed e.g. before CLUSTER FAILOVER:
        a master that does not yet know its replica ignores the manual-failover request
        and the replica logs 'Manual failover timed out' after 5 s)."""
        ports = ports or self.ports
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                views = {self.topology_view(p) for p in ports}
                if len(views) == 1:
                    v = next(iter(views))
                    if len(v) == len(ports) and sum(r == "slave" for _, r, _ in v) == len(ports) // 2:
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise TimeoutError("cluster topology did not converge")

    def kill(self, port: int, sig=signal.SIGKILL) -> None:
        os.kill(self.pids[port], sig)
        try:
            self._procs[port].wait(5)
        except Exception:
            pass

    def stop(self) -> None:
        for port, pid in self.pids.items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in getattr(self, "_procs", {}).values():
            try:
                p.wait(5)
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(node_timeout_ms: int = 2000) -> Cluster:
    t0 = time.monotonic()
    ports = pick_ports(6)
    c = Cluster(ports=ports, dir=tempfile.mkdtemp(prefix="rcluster-", dir="/tmp/cluster-spike"))
    for p in ports:
        c.start_node(p, node_timeout_ms)
    # wait for every server to accept connections
    deadline = time.monotonic() + 10
    for p in ports:
        while True:
            try:
                if c.cli(p, "PING", check=False).strip() == "PONG":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {p} did not start")
            time.sleep(0.02)
    subprocess.run(["redis-cli", "--cluster", "create",
                    *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, capture_output=True, text=True, timeout=60)
    c.wait_ok()
    # replicas attached & synced (needed for failover experiments)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = [c.cli(p, "INFO", "replication") for p in ports]
        if sum("role:slave" in i and "master_link_status:up" in i for i in infos) == 3:
            break
        time.sleep(0.05)
    c.wait_converged()
    c.ready_s = time.monotonic() - t0
    return c


# ---- pytest fixture -------------------------------------------------------
try:
    import pytest

    @pytest.fixture(scope="session")
    def redis_cluster():
        c = start_cluster()
        try:
            yield c
        finally:
            c.stop()
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    if sys.argv[1] == "start":
        c = start_cluster()
        d = asdict(c)
        print(json.dumps(d))
    elif sys.argv[1] == "stop":
        d = json.load(open(sys.argv[2]))
        for pid in d["pids"].values():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(d["dir"], ignore_errors=True)
