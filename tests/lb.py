"""Test support for replica tests: nginx in front of several gateway processes, gateway
replicas that can be killed, drained and restarted on the same port, resilient SSE viewers
that resume from their server-side stored offset, and a steady publisher.

The nginx configuration is generated from ``deploy/nginx.conf`` (the deployed one): only
the upstream servers, the listen address and the process's file paths are replaced, and one
response header naming the upstream that answered (``X-Upstream-Addr``) is added so a test
can tell which replica served each stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.agent.publisher import Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.support import ROOT, Gateway, free_port, wait_until

DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # Debian: /usr/sbin may be off PATH


# --- nginx ----------------------------------------------------------------------------------
def render_nginx_conf(
    src: str,
    upstream_ports: Sequence[int],
    port: int,
    workdir: Path,
    server_params: str | None = None,
) -> str:
    """``src`` (deploy/nginx.conf) with its upstream servers replaced by ``upstream_ports`` on
    loopback, its ``listen`` replaced by ``127.0.0.1:<port>``, and pid, logs and temp paths
    in ``workdir``. Each server keeps the parameters of the first server line (``max_fails``,
    ``fail_timeout``…) unless ``server_params`` replaces them. Raises ValueError when the
    file no longer has the expected shape."""
    up = re.search(r"upstream\s+[\w.-]+\s*\{([^}]*)\}", src)
    if up is None:
        raise ValueError("deploy/nginx.conf: no upstream block")
    servers = re.findall(r"^\s*server\s+\S+([^;]*);", up.group(1), flags=re.M)
    if not servers:
        raise ValueError("deploy/nginx.conf: the upstream block has no server line")
    params = servers[0].strip() if server_params is None else server_params
    others = re.sub(r"^\s*server\s+[^;]*;[ \t]*\n?", "", up.group(1), flags=re.M)
    ours = "".join(f"\n        server 127.0.0.1:{p} {params};" for p in upstream_ports)
    src = src[: up.start(1)] + ours + "\n" + others.lstrip("\n") + src[up.end(1) :]
    src, n = re.subn(r"^(\s*)listen\s+[^;]+;", rf"\g<1>listen 127.0.0.1:{port};", src, flags=re.M)
    if n != 1:
        raise ValueError(f"deploy/nginx.conf: expected one listen directive, found {n}")
    paths = "".join(
        f"\n    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    src, n = re.subn(
        r"^(\s*)http\s*\{",
        lambda m: f"{m.group(0)}\n    access_log {workdir / 'access.log'};{paths}",
        src,
        count=1,
        flags=re.M,
    )
    if n != 1:
        raise ValueError("deploy/nginx.conf: no http block")
    src, n = re.subn(
        r"location\s+/\s*\{",
        lambda m: m.group(0) + "\n            add_header X-Upstream-Addr $upstream_addr always;",
        src,
        count=1,
    )
    if n != 1:
        raise ValueError("deploy/nginx.conf: no `location /` block")
    src = re.sub(r"^\s*(pid|daemon|error_log)\s+[^;]*;", "", src, flags=re.M)
    main = f"pid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'} warn;\n"
    return main + src


class Nginx:
    """Debian's nginx as a non-daemon child process in front of ``upstream_ports``, with the
    configuration of ``deploy/nginx.conf`` (see :func:`render_nginx_conf`)."""

    def __init__(
        self,
        upstream_ports: Sequence[int],
        conf: Path = DEPLOY_CONF,
        server_params: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="gw-nginx-"))
        self.dir.chmod(0o755)  # worker processes drop root (to nobody) and need to traverse
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            render_nginx_conf(conf.read_text(), upstream_ports, self.port, self.dir, server_params)
        )
        self.log = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._listening, timeout=10, what=f"nginx on {self.port}: {self.errors()}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.errors()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def errors(self) -> str:
        """nginx's error log (and anything it printed)."""
        out = []
        for name in ("stdout.log", "error.log"):
            with contextlib.suppress(OSError):
                out.append((self.dir / name).read_text(errors="replace"))
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: open streams are cut
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# --- gateway replicas -----------------------------------------------------------------------
class Replica(Gateway):
    """A gateway process that can be SIGKILLed, drained (SIGTERM) and started again on the
    same port. The blocking waits run in a thread so viewers in the event loop keep going.

    Unlike Gateway, constructing one does not wait: call :meth:`ready` (so a caller holds
    the process, to stop it, even when it never gets ready)."""

    def __init__(self, redis_url: str, **settings: Any) -> None:
        self._spawning = True
        super().__init__(redis_url, **settings)
        self._spawning = False

    def wait_ready(self) -> None:
        if not self._spawning:
            super().wait_ready()

    async def ready(self) -> None:
        await asyncio.to_thread(self.wait_ready)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    async def drain(self, timeout: float) -> tuple[float, int]:
        """SIGTERM and wait (at most ``timeout``) for the process to exit: (seconds, code)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, timeout)
        return time.monotonic() - t0, code

    async def start_again(self) -> float:
        """Spawn the process again on the same port; seconds until /readyz answers 200."""
        assert not self.alive()
        t0 = time.monotonic()
        self.proc = self._spawn()
        await self.ready()
        return time.monotonic() - t0


# --- viewers --------------------------------------------------------------------------------
# The viewers speak plain HTTP; one shared context spares each client loading the CA bundle.
_SSL_CONTEXT = ssl.create_default_context()


@dataclass
class StreamAttempt:
    """One GET of a connection's events: who answered, what it delivered, how it ended."""

    t_request: float
    status: int = 0
    upstream: str = ""
    t_open: float = 0.0
    t_first: float = 0.0  # first event received
    events: int = 0
    end: str = ""  # close:<reason>, eof, http_<status>, or an exception name
    t_end: float = 0.0
    retry_ms: int | None = None  # the retry hint that came with the close frame


class Viewer:
    """A resilient SSE viewer of one session through the load balancer.

    Creates a connection (``POST …/connections`` with ``from``), then streams its events
    until cancelled, reconnecting after every end of stream (server close, error, non-200)
    after the server's last ``retry`` hint capped at ``retry_cap`` seconds. It never sends
    ``Last-Event-ID`` unless ``last_event_id`` is set: resume comes from the offset the
    gateway stored for the connection. Every event's sequence number and receive time are
    recorded; ``gaps`` and ``dups`` are counted as events arrive.

    Each viewer has its own httpx client, like a browser tab its own connection: one client
    shared by hundreds of long streams spends its time in httpcore's pool bookkeeping, which
    scans every pooled connection on each request and response (quadratic), and then the
    test client, not the gateway, sets the reconnect times. The read timeout is above the
    gateway's default 15 s heartbeat.
    """

    TIMEOUT = httpx.Timeout(30, connect=5)
    LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=1)

    def __init__(
        self,
        base: str,
        sid: str,
        *,
        start: str = "start",
        commit: str = "auto",
        last_event_id: bool = False,
        retry_cap: float = 0.5,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.base, self.sid = base, sid
        self.gate = gate  # when given, the first stream waits for it (after the POST)
        self.start, self.commit = start, commit
        self.send_last_event_id = last_event_id
        self.retry_cap = retry_cap
        self.cid = ""
        self.epoch = ""
        self.start_seq = 0
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.max_seq = 0
        self.last_id = ""
        self.gaps = 0  # events missing between two received ones
        self.dups = 0  # events received again
        self.foreign = 0  # events of another epoch
        self.resets = 0
        self.attempts: list[StreamAttempt] = []
        self.retry_ms = 2000
        self.retry_after: float | None = None

    @property
    def reconnects(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def current(self) -> StreamAttempt | None:
        return self.attempts[-1] if self.attempts else None

    async def run(self) -> None:
        async with httpx.AsyncClient(
            timeout=self.TIMEOUT, limits=self.LIMITS, verify=_SSL_CONTEXT
        ) as client:
            await self._create(client)
            if self.gate is not None:
                await self.gate.wait()
            while True:
                await self._stream_once(client)
                if self.retry_after is not None:
                    delay, self.retry_after = self.retry_after, None
                else:
                    delay = self.retry_ms / 1000
                await asyncio.sleep(min(delay, self.retry_cap))

    async def _create(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = await client.post(
                    f"{self.base}/v1/sessions/{self.sid}/connections",
                    json={"from": self.start, "commit": self.commit},
                )
                if resp.status_code == 201:
                    body = resp.json()
                    self.cid = body["connection_id"]
                    self.epoch, seq = body["offset"].split("_")
                    self.start_seq = self.max_seq = int(seq)
                    return
                problem = f"{resp.status_code} {resp.text}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot create a connection for {self.sid}: {problem}")
            await asyncio.sleep(0.2)

    async def _stream_once(self, client: httpx.AsyncClient) -> None:
        attempt = StreamAttempt(time.monotonic())
        self.attempts.append(attempt)
        headers = {"Accept": "text/event-stream"}
        if self.send_last_event_id and self.last_id:
            headers["Last-Event-ID"] = self.last_id
        url = f"{self.base}/v1/sessions/{self.sid}/connections/{self.cid}/events"
        try:
            async with client.stream("GET", url, headers=headers) as resp:
                attempt.status = resp.status_code
                attempt.upstream = resp.headers.get("x-upstream-addr", "").split(", ")[-1]
                attempt.t_open = time.monotonic()
                if resp.status_code != 200:
                    await resp.aread()
                    attempt.end = f"http_{resp.status_code}"
                    with contextlib.suppress(ValueError):
                        self.retry_after = float(resp.headers.get("retry-after", ""))
                    return
                buf = b""
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    *frames, buf = buf.split(b"\n\n")
                    for frame in frames:
                        self._frame(frame, attempt)
                if not attempt.end:
                    attempt.end = "eof"
                else:
                    attempt.end += "+eof"  # the server ended the response cleanly after it
        except httpx.HTTPError as exc:
            attempt.end = (attempt.end + "+" if attempt.end else "") + type(exc).__name__
        finally:
            attempt.t_end = time.monotonic()

    def _frame(self, frame: bytes, attempt: StreamAttempt) -> None:
        fid = event = data = None
        retry = None
        for line in frame.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"id":
                fid = value.decode()
            elif name == b"event":
                event = value.decode()
            elif name == b"data":
                data = value if data is None else data + b"\n" + value
            elif name == b"retry":
                retry = int(value)
        if retry is not None:
            self.retry_ms = retry
        if data is None:
            return  # a retry-only frame or a heartbeat
        if event == "close":
            attempt.end = "close:" + str(json.loads(data).get("reason"))
            attempt.retry_ms = retry
            return
        if event == "reset":
            self.resets += 1
            return
        assert fid is not None
        self.last_id = fid
        epoch, _, seq_text = fid.partition("_")
        if epoch != self.epoch:
            self.foreign += 1
            return
        seq = int(seq_text)
        now = time.monotonic()
        if attempt.events == 0:
            attempt.t_first = now
        attempt.events += 1
        self.seqs.append(seq)
        self.times.append(now)
        if seq <= self.max_seq:
            self.dups += 1
        else:
            self.gaps += seq - self.max_seq - 1
            self.max_seq = seq

    def problems(self, last_seq: int) -> list[str]:
        """What is wrong with what this viewer received, compared with a log whose events
        are ``start_seq + 1 … last_seq`` (empty when it is exactly that, in order, once)."""
        want = list(range(self.start_seq + 1, last_seq + 1))
        out = []
        if self.seqs != want:
            missing = sorted(set(want) - set(self.seqs))
            extra = [s for s, n in Counter(self.seqs).items() if n > 1]
            out.append(
                f"{self.sid}/{self.cid}: got {len(self.seqs)} events, want {len(want)}; "
                f"missing {missing[:10]}, repeated {sorted(extra)[:10]}"
            )
        if self.foreign or self.resets:
            out.append(f"{self.sid}/{self.cid}: {self.foreign} foreign, {self.resets} resets")
        return out

    def duplicates(self) -> list[tuple[int, float, float]]:
        """(seq, first receipt, second receipt) of every event received more than once."""
        first: dict[int, float] = {}
        out = []
        for seq, t in zip(self.seqs, self.times, strict=True):
            if seq in first:
                out.append((seq, first[seq], t))
            else:
                first[seq] = t
        return out


async def start_viewers(
    base: str,
    sessions: Sequence[str],
    per_session: int,
    *,
    together: bool = False,
    **kwargs: Any,
) -> tuple[list[Viewer], list[asyncio.Task[None]]]:
    """``per_session`` viewers of every session, running; returns once each has a stream.
    ``together``: all connections are created first, then all streams opened at once (a
    reconnect wave)."""
    gate = asyncio.Event() if together else None
    viewers = [
        Viewer(base, sid, gate=gate, **kwargs) for _ in range(per_session) for sid in sessions
    ]
    tasks = [asyncio.create_task(v.run()) for v in viewers]
    deadline = time.monotonic() + 60

    async def until(done: Any, what: str) -> None:
        while not done():
            for t in tasks:
                if t.done():
                    t.result()  # raises what killed it
            if time.monotonic() > deadline:
                raise TimeoutError(f"viewers did not all {what}")
            await asyncio.sleep(0.02)

    try:
        if gate is not None:
            await until(lambda: all(v.cid for v in viewers), "create a connection")
            gate.set()
        await until(
            lambda: all(v.current is not None and v.current.status == 200 for v in viewers),
            "open a stream",
        )
    except BaseException:
        await stop_viewers(tasks)
        raise
    return viewers, tasks


async def stop_viewers(tasks: Iterable[asyncio.Task[None]]) -> None:
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_caught_up(viewers: Sequence[Viewer], last: dict[str, int], timeout: float) -> float:
    """Wait until every viewer got its session's last event; returns seconds waited."""
    t0 = time.monotonic()
    while any(v.max_seq < last[v.sid] for v in viewers):
        if time.monotonic() - t0 > timeout:
            behind = [
                (v.sid, v.cid, v.max_seq, last[v.sid]) for v in viewers if v.max_seq < last[v.sid]
            ]
            raise TimeoutError(f"{len(behind)} viewers behind: {behind[:5]}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


# --- publishing -----------------------------------------------------------------------------
class PublisherProcess:
    """A steady publisher in its own process (``python -m tests.lb publish``), so that the
    viewers' busy event loop cannot slow it down: one ``message.delta`` to every session in
    turn, ``rate`` events/s in total, until :meth:`stop`; then it reports the offset the log
    returned for every event it published."""

    def __init__(self, redis_url: str, sessions: Sequence[str], rate: float) -> None:
        self.sessions, self.rate = list(sessions), rate
        self.offsets: dict[str, list[str]] = {}
        self.seconds = 0.0
        self.max_late = 0.0  # the worst lag of a tick behind its schedule
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lb", "publish", redis_url, str(rate), *self.sessions],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )

    async def stop(self) -> None:
        """Stop publishing (closes the child's stdin) and collect its report."""
        out, _ = await asyncio.to_thread(self.proc.communicate, b"", 30)
        assert self.proc.returncode == 0, f"publisher exited with {self.proc.returncode}"
        report = json.loads(out.decode().splitlines()[-1])
        self.offsets, self.seconds = report["offsets"], report["seconds"]
        self.max_late = report["max_late"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def published(self) -> int:
        return sum(len(o) for o in self.offsets.values())

    @property
    def last_seqs(self) -> dict[str, int]:
        return {sid: int(o[-1].split("_")[1]) if o else 0 for sid, o in self.offsets.items()}

    @property
    def actual_rate(self) -> float:
        return self.published / max(1e-9, self.seconds)


async def _publish_main(redis_url: str, rate: float, sessions: list[str]) -> None:
    redis = connect(Settings(redis_url=redis_url), role="test-publisher")
    pub = Publisher(Store(redis))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_eof() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_eof, daemon=True).start()
    offsets: dict[str, list[str]] = {sid: [] for sid in sessions}
    tick = len(sessions) / rate  # one event per session per tick
    t0 = next_t = time.monotonic()
    late = 0.0
    n = 0
    while not stop.is_set():
        for sid in sessions:
            offsets[sid].append(
                await pub.publish(sid, "message.delta", {"text": f"{n} "}, run_id="r1")
            )
        n += 1
        next_t += tick
        delay = next_t - time.monotonic()
        late = max(late, -delay)
        await asyncio.sleep(max(0.0, delay))
    seconds = time.monotonic() - t0
    await redis.aclose()
    print(json.dumps({"offsets": offsets, "seconds": seconds, "max_late": late}))


async def log_matches(store: Store, offsets: dict[str, list[str]]) -> None:
    """Assert that each session's log in Redis (XRANGE) holds exactly the events the
    publisher got offsets for: seq 1…n, in order, of one epoch."""
    for sid, offs in offsets.items():
        events = await store.sessions.read(sid, 0, len(offs) + 10)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(offs) + 1)), f"{sid}: log {seqs[:5]}… != publisher"
        assert [int(o.split("_")[1]) for o in offs] == seqs
        assert len({o.split("_")[0] for o in offs}) == 1, f"{sid}: several epochs"


# --- figures --------------------------------------------------------------------------------
def quantiles(values: Sequence[float]) -> str:
    """``p50 … max …`` of a list of durations in seconds."""
    if not values:
        return "n/a"
    v = sorted(values)
    return (
        f"p50 {statistics.median(v) * 1000:.0f} ms, max {v[-1] * 1000:.0f} ms, "
        f"min {v[0] * 1000:.0f} ms"
    )


def upstream_counts(viewers: Iterable[Viewer]) -> Counter[str]:
    """How many viewers each upstream serves right now (their current stream)."""
    return Counter(v.current.upstream for v in viewers if v.current and v.current.status == 200)


if __name__ == "__main__":  # python -m tests.lb publish <redis_url> <rate> <session>...
    assert sys.argv[1] == "publish", sys.argv
    asyncio.run(_publish_main(sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
