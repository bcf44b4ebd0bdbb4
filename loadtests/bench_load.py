"""Load processes of the benchmark (``loadtests/bench.py``), driven over stdin/stdout.

    python -m loadtests.bench_load viewers      # SSE viewers (raw asyncio sockets)
    python -m loadtests.bench_load publisher    # publishes to Redis like an agent worker

Each reads one JSON command per line on stdin and answers with one JSON line on stdout, so
the orchestrator can hold viewers open in one process while another publishes. They run on
uvloop, apart from the orchestrator and the servers, so that the load generator's own work
is not charged to the server (the machine has 2 cores, so they still share them).

The viewer is a minimal HTTP/1.1 client on ``asyncio.Protocol``: it sends one GET, checks the
status line, and then scans the (chunked) body by whole lines: every event carries
``"t_ns":<publish time>,"i":<per-session index>`` in its data, so the latency (receive time
minus publish time, same host clock) and gaps or duplicates (``i`` must grow by one) are read
without decoding the chunked framing (a server writes each SSE frame within one chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

EVENT_RE = re.compile(rb'"t_ns":(\d+),"i":(\d+)')
T_NS = b'"t_ns"'
TEXT = "token "


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- viewers ---------------------------------------------------------------------------------


class Group:
    """Counters shared by every viewer of a process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.gaps = 0
        self.duplicates = 0
        self.sent_ns = array("q")  # publish time of each event received (check mode)
        self.lat_ms = array("d")
        self.samples: list[tuple[float, int]] = []
        self.viewers: list[Viewer] = []


class Viewer(asyncio.Protocol):
    """One SSE response. ``mode``: ``check`` records latency and checks ``i`` per event;
    ``count`` only counts events (cheap enough for the fan-out flood)."""

    def __init__(self, group: Group, request: bytes, mode: str) -> None:
        self.group = group
        self.request = request
        self.mode = mode
        self.buf = b""
        self.headers_done = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.last_i = -1
        self.count = 0
        self.first_ns = 0
        self.on_event: Callable[[Viewer], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the body: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.headers_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            self.headers_done = True
            if not head.startswith(b"HTTP/1.1 200"):
                self.ready.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                assert self.transport is not None
                self.transport.close()
                return
        if not data:
            return
        if not self.ready.done():
            self.ready.set_result(None)  # the first body bytes: the stream is subscribed
        buf = self.buf + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.buf = buf
            return
        lines, self.buf = buf[: cut + 1], buf[cut + 1 :]
        g = self.group
        if self.mode == "count":
            n = lines.count(T_NS)
            self.count += n
            g.total += n
            return
        n = 0
        for m in EVENT_RE.finditer(lines):
            sent, i = int(m.group(1)), int(m.group(2))
            n += 1
            if self.last_i >= 0:
                if i <= self.last_i:
                    g.duplicates += 1
                elif i != self.last_i + 1:
                    g.gaps += 1
            self.last_i = max(self.last_i, i)
            g.sent_ns.append(sent)
            g.lat_ms.append((now - sent) / 1e6)
        if n:
            if not self.count:
                self.first_ns = now
            self.count += n
            g.total += n
            if self.on_event is not None:
                self.on_event(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Cache-Control: no-cache\r\n{extra}\r\n"
    ).encode()


async def _open(group: Group, cmd: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port, mode = cmd["host"], cmd["port"], cmd.get("mode", "check")
    headers = cmd.get("headers") or {}
    # ``source``: a loopback source address (127.0.0.x) of this process's sockets, so that
    # many viewers do not run out of ephemeral ports towards one server port.
    local = (cmd["source"], 0) if cmd.get("source") else None
    sem = asyncio.Semaphore(cmd.get("concurrency", 100))
    failed: list[str] = []
    start = time.perf_counter()

    async def one(path: str) -> None:
        async with sem:
            viewer = Viewer(group, _request(host, port, path, headers), mode)
            try:
                await loop.create_connection(lambda: viewer, host, port, local_addr=local)
                await asyncio.wait_for(viewer.ready, cmd.get("timeout", 60))
                group.viewers.append(viewer)
            except (OSError, TimeoutError) as exc:
                failed.append(f"{path}: {exc!r}")
                viewer.close()

    await asyncio.gather(*(one(p) for p in cmd["paths"]))
    return {
        "opened": len(cmd["paths"]) - len(failed),
        "failed": len(failed),
        "errors": failed[:5],
        "failed_paths": [f.split(": ", 1)[0] for f in failed] if cmd.get("report_failed") else [],
        "seconds": time.perf_counter() - start,
        "viewers": len(group.viewers),
    }


def _rate(samples: list[tuple[float, int]], t0: float, t1: float) -> float:
    inside = [(t, n) for t, n in samples if t0 <= t <= t1]
    if len(inside) < 2:
        return 0.0
    (ta, na), (tb, nb) = inside[0], inside[-1]
    return (nb - na) / (tb - ta) if tb > ta else 0.0


async def _collect(group: Group, cmd: dict[str, Any]) -> dict[str, Any]:
    expected = cmd.get("expected")
    deadline = time.monotonic() + cmd.get("wait", 5.0)
    while expected is not None and group.total < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    t0_ns = int(cmd.get("t0", 0) * 1e9)
    t1_ns = int(cmd.get("t1", 1e12) * 1e9)
    lat = sorted(
        lat for sent, lat in zip(group.sent_ns, group.lat_ms, strict=True) if t0_ns <= sent <= t1_ns
    )
    out = {
        "viewers": len(group.viewers),
        # streams the server ended before the orchestrator closed them
        "ended": sum(v.closed.done() for v in group.viewers),
        "received": group.total,
        "expected": expected,
        "missing": max(0, expected - group.total) if expected is not None else None,
        "gaps": group.gaps,
        "duplicates": group.duplicates,
        "rate": _rate(group.samples, cmd.get("t0", 0), cmd.get("t1", 1e12)),
        "latency": {
            "n": len(lat),
            "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "p999_ms": pct(lat, 99.9),
            "max_ms": lat[-1] if lat else 0.0,
            "mean_ms": sum(lat) / len(lat) if lat else 0.0,
            # 101 quantiles, for the plots
            "quantiles": [pct(lat, q) for q in range(101)] if lat else [],
        },
    }
    if cmd.get("samples"):  # every latency (ms, rounded to µs): merged across processes
        out["samples"] = [round(x, 3) for x in lat]
    await _close(group)
    return out


async def _close(group: Group) -> dict[str, Any]:
    viewers, group.viewers = group.viewers, []
    for v in viewers:
        v.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            for v in viewers:
                await v.closed
    group.reset()
    return {"closed": len(viewers)}


async def _reattach(cmd: dict[str, Any]) -> dict[str, Any]:
    """One stream resuming a backlog: time to its first event and to the last one."""
    loop = asyncio.get_running_loop()
    group = Group()
    host, port, expected = cmd["host"], cmd["port"], cmd["expected"]
    viewer = Viewer(group, _request(host, port, cmd["path"], cmd.get("headers") or {}), "check")
    done: asyncio.Future[int] = loop.create_future()

    def on_event(v: Viewer) -> None:
        if v.count >= expected and not done.done():
            done.set_result(time.time_ns())

    viewer.on_event = on_event
    start = time.time_ns()
    await loop.create_connection(lambda: viewer, host, port)
    try:
        end = await asyncio.wait_for(done, cmd.get("timeout", 30))
    finally:
        viewer.close()
        await viewer.closed
    return {
        "first_ms": (viewer.first_ns - start) / 1e6,
        "all_ms": (end - start) / 1e6,
        "received": viewer.count,
        "gaps": group.gaps,
        "duplicates": group.duplicates,
    }


async def _sampler(group: Group) -> None:
    while True:
        group.samples.append((time.time(), group.total))
        if len(group.samples) > 200_000:
            del group.samples[:100_000]
        await asyncio.sleep(0.02)


async def viewers_main() -> None:
    group = Group()
    sampler = asyncio.create_task(_sampler(group))
    await _serve(
        {
            "open": lambda c: _open(group, c),
            "collect": lambda c: _collect(group, c),
            "close": lambda c: _close(group),
            "reattach": _reattach,
        }
    )
    sampler.cancel()


# --- publisher -------------------------------------------------------------------------------


def _data(t_ns: int, i: int) -> dict[str, Any]:
    return {"text": TEXT, "t_ns": t_ns, "i": i}


class Publishing:
    """Publishes like an agent worker of one of the systems: ``gateway`` (the gateway's
    Publisher), ``xread`` (plain XADD) or ``channels`` (the channels backend's script)."""

    def __init__(self, system: str, redis_url: str) -> None:
        from redis.asyncio import Redis

        self.system = system
        self.index: dict[str, int] = {}
        if system == "gateway":
            from gateway.agent.publisher import Publisher
            from gateway.settings import Settings
            from gateway.store import Store
            from gateway.store.client import connect

            self.redis = connect(Settings(redis_url=redis_url), role="bench")
            self.streams = Store(self.redis)
            self.publisher = Publisher(self.streams)
        elif system == "xread":
            import loadtests.baselines.xread_per_viewer  # noqa: F401  (imported before timing)

            self.redis = Redis.from_url(redis_url, decode_responses=True)
        elif system == "channels":
            from loadtests.baselines.litestar_channels import make_backend

            self.redis = Redis.from_url(redis_url)
            self.backend = make_backend(self.redis)
        else:
            raise ValueError(system)

    def next_i(self, sid: str) -> int:
        i = self.index.get(sid, 0) + 1
        self.index[sid] = i
        return i

    async def one(self, sid: str) -> str:
        """Publish the next event of ``sid``; returns its id (offset, entry ID or seq)."""
        i = self.next_i(sid)
        if self.system == "gateway":
            return await self.publisher.publish(
                sid, "message.delta", _data(time.time_ns(), i), run_id="r1"
            )
        body = {"session_id": sid, "run_id": "r1", "type": "message.delta"}
        if self.system == "xread":
            from loadtests.baselines.xread_per_viewer import publish

            body["data"] = _data(time.time_ns(), i)
            return await publish(self.redis, sid, "message.delta", _dumps(body))
        from loadtests.baselines.litestar_channels import publish as ch_publish

        message = {"seq": i, **body, "data": _data(time.time_ns(), i)}
        await ch_publish(self.backend, sid, _dumps(message).encode())
        return str(i)

    async def batch(self, sid: str, n: int) -> None:
        """Publish ``n`` events of ``sid`` in one round trip where the system can."""
        if self.system == "gateway":
            from gateway.agent.publisher import EventIn

            batch = [
                EventIn("message.delta", _data(time.time_ns(), self.next_i(sid)), "r1")
                for _ in range(n)
            ]
            await self.publisher.publish_batch(sid, batch)
        elif self.system == "xread":
            from loadtests.baselines.xread_per_viewer import MAXLEN, stream_key

            async with self.redis.pipeline(transaction=False) as pipe:
                for _ in range(n):
                    body = {"session_id": sid, "run_id": "r1", "type": "message.delta"}
                    body["data"] = _data(time.time_ns(), self.next_i(sid))
                    pipe.xadd(
                        stream_key(sid),
                        {"type": "message.delta", "data": _dumps(body)},
                        maxlen=MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        else:  # no batch API: one script call per message, in order (``seq`` is the id)
            for _ in range(n):
                await self.one(sid)

    async def raw_pipeline(self, sid: str, n: int) -> None:
        """The reference: ``n`` pipelined XADDs of the fields the gateway stores, on the
        gateway publisher's own client."""
        async with self.redis.pipeline(transaction=False) as pipe:
            now_ms = time.time_ns() // 1_000_000
            for _ in range(n):
                d = _dumps(_data(time.time_ns(), self.next_i(sid)))
                pipe.xadd(
                    f"raw:{{{sid}}}:log",
                    {"t": "message.delta", "r": "r1", "d": d, "ts": now_ms},
                    maxlen=20_000,
                    approximate=True,
                )
            await pipe.execute()

    async def raw_single(self, sid: str) -> None:
        d = _dumps(_data(time.time_ns(), self.next_i(sid)))
        await self.redis.xadd(
            f"raw:{{{sid}}}:log",
            {"t": "message.delta", "r": "r1", "d": d, "ts": time.time_ns() // 1_000_000},
            maxlen=20_000,
            approximate=True,
        )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class PublisherProc:
    def __init__(self) -> None:
        self.pub: Publishing | None = None

    async def setup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.pub is not None:
            await self.pub.redis.aclose()
        self.pub = Publishing(cmd["system"], cmd["redis"])
        return {"ok": True}

    async def prepare(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Create the sessions (the gateway: a ``run.started`` each, which also indexes them)."""
        assert self.pub is not None
        if self.pub.system == "gateway":
            for sid in cmd["sessions"]:
                await self.pub.publisher.publish(
                    sid, "run.started", {"input": "bench"}, run_id="r1"
                )
        return {"ok": True}

    async def finish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """End the runs ``prepare`` started (the gateway), so that its lease reaper does not
        keep checking them for the rest of the benchmark."""
        assert self.pub is not None
        if self.pub.system == "gateway":
            for sid in cmd["sessions"]:
                await self.pub.publisher.publish(sid, "run.completed", {}, run_id="r1")
        return {"ok": True}

    async def paced(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``rate`` events/s in all, round robin over ``sessions``, for ``seconds``."""
        assert self.pub is not None
        sessions, rate, seconds = cmd["sessions"], cmd["rate"], cmd["seconds"]
        total = int(rate * seconds)
        per: dict[str, int] = dict.fromkeys(sessions, 0)
        lag = 0.0
        t_start = time.time()
        start = time.perf_counter()
        for k in range(total):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            sid = sessions[k % len(sessions)]
            await self.pub.one(sid)
            per[sid] += 1
        return {
            "published": total,
            "per_session": per,
            "t_start": t_start,
            "t_end": time.time(),
            "seconds": time.perf_counter() - start,
            "max_lag_s": lag,
        }

    async def flood(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One session, one event per call, ``inflight`` calls at a time, for ``seconds``."""
        assert self.pub is not None
        pub, sid = self.pub, cmd["session"]
        stop = time.perf_counter() + cmd["seconds"]
        count = 0

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await pub.one(sid)
                count += 1

        cpu0 = time.process_time()
        t_start = time.time()
        await asyncio.gather(*(loop() for _ in range(cmd.get("inflight", 1))))
        t_end = time.time()
        return {
            "published": count,
            "t_start": t_start,
            "t_end": t_end,
            "rate": count / (t_end - t_start),
            "cpu_s": time.process_time() - cpu0,
        }

    async def backlog(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``events`` + 1 events on one session; returns the id of the first (the resume
        point: a viewer that saw it has ``events`` to catch up)."""
        assert self.pub is not None
        sid = cmd["session"]
        first = await self.pub.one(sid)
        left = cmd["events"]
        while left:
            n = min(100, left)
            await self.pub.batch(sid, n)
            left -= n
        return {"first": first}

    async def throughput(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Events/s of one way of publishing ``events`` events over ``sessions`` sessions.

        ``how``: ``batch`` (``batch`` events per call, one call at a time), ``single`` (one
        event per call, ``concurrency`` callers), ``raw_pipeline``, ``raw_single``."""
        assert self.pub is not None
        pub, how, n = self.pub, cmd["how"], cmd["events"]
        sessions = [f"{cmd['prefix']}-{k}" for k in range(cmd.get("sessions", 100))]
        if pub.system == "gateway" and how in ("batch", "single") and not cmd.get("prepared"):
            for sid in sessions:  # as a worker would have: the run started, session indexed
                await pub.publisher.publish(sid, "run.started", {"input": "bench"}, run_id="r1")
        size = cmd.get("batch", 100)
        # Warm up (connections, caches), untimed: one call of each kind.
        if how in ("batch", "raw_pipeline"):
            await (pub.batch if how == "batch" else pub.raw_pipeline)(f"{sessions[0]}-w", size)
        else:
            await (pub.one if how == "single" else pub.raw_single)(f"{sessions[0]}-w")
        start = time.perf_counter()
        cpu0 = time.process_time()
        if how in ("batch", "raw_pipeline"):
            step = pub.batch if how == "batch" else pub.raw_pipeline
            for k in range(n // size):
                await step(sessions[k % len(sessions)], size)
            done = n // size * size
        else:
            per_task = n // cmd.get("concurrency", 16)

            async def caller(j: int) -> None:
                for k in range(per_task):
                    sid = sessions[(j + k) % len(sessions)]
                    if how == "single":
                        await pub.one(sid)
                    else:
                        await pub.raw_single(sid)

            await asyncio.gather(*(caller(j) for j in range(cmd.get("concurrency", 16))))
            done = per_task * cmd.get("concurrency", 16)
        seconds = time.perf_counter() - start
        return {
            "events": done,
            "seconds": seconds,
            "rate": done / seconds,
            "cpu_s": time.process_time() - cpu0,
        }


async def publisher_main() -> None:
    p = PublisherProc()
    await _serve(
        {
            "setup": p.setup,
            "prepare": p.prepare,
            "finish": p.finish,
            "paced": p.paced,
            "flood": p.flood,
            "backlog": p.backlog,
            "throughput": p.throughput,
        }
    )
    if p.pub is not None:
        await p.pub.redis.aclose()


# --- the command loop ------------------------------------------------------------------------


async def _serve(handlers: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            result = await handlers[cmd["cmd"]](cmd)
        except Exception as exc:  # reported to the orchestrator, which raises it
            result = {"error": f"{cmd['cmd']}: {exc!r}"}
        print(json.dumps(result), flush=True)


def main() -> None:
    raise_nofile()
    role = sys.argv[1]
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(viewers_main() if role == "viewers" else publisher_main())


if __name__ == "__main__":
    main()
