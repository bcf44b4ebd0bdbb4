"""Test support: real processes (redis-server, gateway, worker) on free loopback ports,
and a minimal SSE reader for black-box tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or pred}")


class RedisServer:
    """A throw-away redis-server on a free port (no persistence unless ``extra`` asks).

    ``kill()`` then ``start_again()`` restarts it on the same port and directory (with AOF
    on, the data survives).
    """

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.extra = extra
        self.start_again()

    def start_again(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, what="redis-server")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed beyond what its persistence settings already wrote."""
        self.proc.kill()
        self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=True
        ).stdout

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Proc:
    """A gateway or worker subprocess with its log in a temp file."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"gw-{name}-", suffix=".log", delete=False
        )
        self.args, self.env, self.name = args, env, name
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def restart(self) -> None:
        self.stop()
        self.proc = self._spawn()

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def _env(redis_url: str, **settings: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    for key, value in settings.items():
        env[f"GATEWAY_{key.upper()}"] = str(value)
    return env


class Gateway(Proc):
    """``gateway serve`` (real uvicorn) on a free port; ``--insecure`` (no token checks)
    unless a token key is among ``settings`` (``jwt_secret``, ``jwt_public_key``, …)."""

    def __init__(self, redis_url: str, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if not any(k.startswith("jwt_") for k in settings):
            args.append("--insecure")
        super().__init__(args, _env(redis_url, **settings), f"gateway-{self.port}")
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_until(
            lambda: httpx.get(self.url + "/readyz", timeout=1).status_code == 200,
            timeout=20,
            what=f"gateway on {self.port}: {self.output()[-2000:]}",
        )

    def restart(self) -> None:
        super().restart()
        self.wait_ready()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample of this process (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


class Worker(Proc):
    """``gateway worker`` (the demo agent worker); ``args`` are extra CLI options
    (``--agui-url URL``: the AG-UI relay)."""

    def __init__(self, redis_url: str, *args: str, **settings: Any) -> None:
        cmd = [sys.executable, "-m", "gateway", "worker", "--log-level", "warning", *args]
        super().__init__(cmd, _env(redis_url, **settings), "worker")


@dataclass
class Frame:
    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSE:
    """An open SSE response read by a background task: ``await sse.next()`` returns the
    next event frame; the stream's end raises StopAsyncIteration."""

    _END = object()

    def __init__(self, response: httpx.Response, paused: bool = False) -> None:
        self.response = response
        self.comments: list[str] = []
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        if not paused:
            self.resume()

    def resume(self) -> None:
        """Start reading the socket (a paused stream reads nothing until then)."""
        if self.task is None:
            self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for frame in _parse(self.response, self.comments):
                self.queue.put_nowait(frame)
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            self.queue.put_nowait(self._END)

    async def next(self, timeout: float = 10.0) -> Frame:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is self._END:
            self.queue.put_nowait(self._END)
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def take(self, n: int, timeout: float = 10.0) -> list[Frame]:
        return [await self.next(timeout) for _ in range(n)]

    async def nothing_for(self, seconds: float) -> bool:
        try:
            frame = await self.next(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected frame {frame}")


async def _parse(resp: httpx.Response, comments: list[str]) -> AsyncIterator[Frame]:
    frame = Frame()
    seen = False
    async for line in resp.aiter_lines():
        if line == "":
            # A frame of only `retry:` sets the reconnect delay; one that also names an event
            # (the drain's `retry` + `event: close`) is a frame like any other.
            if seen and (frame.retry is None or frame.event != "message" or frame.data):
                yield frame
            frame, seen = Frame(), False
            continue
        if line.startswith(":"):
            comments.append(line)
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        seen = True
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data = value if not frame.data else frame.data + "\n" + value
        elif name == "retry":
            frame.retry = int(value)


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str] | None = None,
    paused: bool = False,
) -> AsyncIterator[SSE]:
    """Open an SSE stream; asserts 200 and text/event-stream. ``paused``: see SSE.resume."""
    async with client.stream("GET", url, headers=headers or {}, timeout=None) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise AssertionError(f"{url}: {resp.status_code} {resp.text}")
        assert resp.headers["content-type"].startswith("text/event-stream")
        stream = SSE(resp, paused)
        try:
            yield stream
        finally:
            if stream.task is not None:
                stream.task.cancel()
                with contextlib.suppress(BaseException):
                    await stream.task


def seqs(frames: list[Frame]) -> list[int]:
    """Sequence numbers from frames' ids."""
    return [int(f.id.split("_")[1]) for f in frames if f.id]


@contextlib.contextmanager
def processes(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()
