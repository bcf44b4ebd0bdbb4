"""Redis memory per session: publish realistic runs, then measure every key of a session.

Starts a throw-away ``redis-server`` on a free loopback port (no persistence; never the
machine's shared Redis), publishes ``--events`` events into each of ``--sessions`` sessions
with the project's :class:`gateway.publisher.Publisher` at the retention of the settings
(``GATEWAY_RETENTION_MAXLEN``, default 20,000), creates ``--connections`` consumer offsets per
session, folds and stores each session's snapshot once (what ``GET …/snapshot`` does), and
prints ``MEMORY USAGE`` (exact, ``SAMPLES 0``) per kind of key plus the ``INFO memory``
delta.

The runs mirror the demo worker: ``run.started`` with a prompt, a title on the first run,
reasoning and answer streamed about 4 characters per ``message.delta``/``reasoning.delta``
(one event per token, as the worker publishes them), a ``tool.started``/``tool.completed``
with a few hundred bytes of output, then ``run.completed``.

    python -m loadtests.redis_memory --sessions 20 --events 1000
    python -m loadtests.redis_memory --sessions 5 --events 25000     # past the retention cap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis

from gateway.agent.publisher import EventIn, Publisher
from gateway.settings import Settings
from gateway.store import Store, snapshots
from gateway.store.client import connect

_TEXT = (
    "the gateway resumes each viewer from the offset stored in Redis so a reconnect "
    "replays exactly the events it missed in order with no duplicates and no silent gaps "
    "replicas are stateless any replica serves any connection id heartbeats keep idle "
    "streams open through proxies and the log is trimmed to the configured retention"
)
WORDS = _TEXT.split(" ")

PROMPTS = (
    "How does reconnect resume from the stored offset?",
    "What happens to my stream when a replica restarts during a rolling update?",
    "Explain why the load balancer must not buffer Server-Sent Events.",
    "Which Redis settings does production need, and why noeviction?",
)


def tokens(rng: random.Random, count: int) -> Iterator[str]:
    """``count`` LLM-sized pieces of text (about 4 characters, like the demo worker's)."""
    for _ in range(count):
        word = rng.choice(WORDS)
        yield " " + word[:4] if len(word) > 4 and rng.random() < 0.5 else " " + word


def run_events(rng: random.Random, first: bool) -> list[EventIn]:
    """One realistic run: about 150-300 events, nearly all small deltas."""
    run_id = "r-" + uuid.uuid4().hex[:12]
    prompt = rng.choice(PROMPTS)
    out = [EventIn("run.started", {"input": prompt}, run_id)]
    if first:
        out.append(EventIn("session.title", {"title": " ".join(prompt.split()[:6])}, run_id))
    out += [
        EventIn("reasoning.delta", {"text": t}, run_id) for t in tokens(rng, rng.randint(20, 50))
    ]
    call = f"call-{run_id[2:]}-1"
    out.append(
        EventIn(
            "tool.started",
            {"tool_call_id": call, "name": "search_docs", "args": {"query": prompt}},
            run_id,
        )
    )
    output = "\n".join(
        f"docs/operations.md:{rng.randint(1, 400)}: " + " ".join(rng.choices(WORDS, k=25))
        for _ in range(3)
    )
    out.append(
        EventIn(
            "tool.completed",
            {"tool_call_id": call, "output": output, "is_error": False, "duration_ms": 212.4},
            run_id,
        )
    )
    out += [
        EventIn("message.delta", {"text": t}, run_id) for t in tokens(rng, rng.randint(120, 250))
    ]
    out.append(EventIn("run.completed", {}, run_id))
    return out


def session_events(rng: random.Random, count: int) -> Iterator[EventIn]:
    """Exactly ``count`` events of consecutive runs (the last run may be cut short)."""
    produced, first = 0, True
    while True:
        for ev in run_events(rng, first):
            if produced == count:
                return
            yield ev
            produced += 1
        first = False


NO_PERSISTENCE = ("--save", "", "--appendonly", "no", "--dir")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """A redis-server on a free loopback port with persistence off; stopped by :meth:`stop`."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on the PATH (Debian package redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-mem-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", *NO_PERSISTENCE, self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def key_kind(key: str, prefix: str) -> str:
    """``log``, ``meta``, ``snap``, ``conn`` … for a session key; ``global:<name>`` otherwise."""
    rest = key[len(prefix) + 1 :]
    if rest.startswith("{_global}:"):
        return "global:" + rest.split(":", 1)[1]
    part = rest.split("}:", 1)[1] if "}:" in rest else rest
    return part.split(":", 1)[0]


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def measure(
    redis_url: str, sessions: int, events: int, connections: int, batch: int, seed: int
) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url)
    prefix = "mem" + uuid.uuid4().hex[:6]
    redis = connect(settings, role="memtest")
    store = Store(redis, prefix)
    publisher = Publisher.from_settings(store, settings)
    rng = random.Random(seed)
    # Warm up (scripts loaded, connections open, allocator arenas in use) before the baseline.
    await publisher.publish_batch("mem-warmup", list(session_events(rng, 50)))
    await snapshots.load(store, "mem-warmup")
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        await redis.unlink(key)
    publisher = Publisher.from_settings(store, settings)  # forgets the warm-up session
    before = await used_memory(redis)
    sids = [f"mem-{i:04d}" for i in range(sessions)]
    data_bytes = 0
    t0 = time.perf_counter()
    for sid in sids:
        pending: list[EventIn] = []
        for ev in session_events(rng, events):
            data_bytes += len(json.dumps(ev.data, separators=(",", ":")))
            pending.append(ev)
            if len(pending) == batch:
                await publisher.publish_batch(sid, pending)
                pending = []
        if pending:
            await publisher.publish_batch(sid, pending)
        meta = await store.sessions.meta(sid)
        assert meta is not None
        for _ in range(connections):
            cid = "c-" + uuid.uuid4().hex[:16]
            offset = f"{meta.epoch}_{meta.seq:012d}"
            await store.consumers.create(sid, cid, offset, "manual", settings.connection_ttl)
        await snapshots.load(store, sid)  # folds and stores the snapshot, as GET …/snapshot
    publish_s = time.perf_counter() - t0
    after = await used_memory(redis)

    per_kind: dict[str, int] = defaultdict(int)
    keys = 0
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        usage = await redis.memory_usage(key, samples=0) or 0
        per_kind[key_kind(key, prefix)] += int(usage)
        keys += 1
    log_entries = [await redis.xlen(f"{prefix}:{{{sid}}}:log") for sid in sids]
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        await redis.unlink(key)
    await redis.aclose()

    session_kinds = {k: v for k, v in per_kind.items() if not k.startswith("global:")}
    session_total = sum(session_kinds.values())
    kept = sum(log_entries)
    return {
        "redis_url": redis_url,
        "retention_maxlen": settings.retention_maxlen,
        "sessions": sessions,
        "events_per_session": events,
        "connections_per_session": connections,
        "keys": keys,
        "entries_kept_per_session": kept / sessions,
        "mean_event_data_bytes": data_bytes / (sessions * events),
        "per_session_bytes": {k: v / sessions for k, v in sorted(session_kinds.items())},
        "per_session_total_bytes": session_total / sessions,
        "log_bytes_per_kept_event": per_kind.get("log", 0) / kept if kept else 0.0,
        "global_bytes": {k: v for k, v in sorted(per_kind.items()) if k.startswith("global:")},
        "used_memory_delta_per_session": (after - before) / sessions,
        "publish_seconds": publish_s,
    }


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def report(res: dict[str, Any]) -> str:
    lines = [
        f"{res['sessions']} sessions x {res['events_per_session']} events "
        f"(retention {res['retention_maxlen']}, {res['connections_per_session']} consumer "
        f"offsets each, snapshot stored), published in {res['publish_seconds']:.1f} s",
        f"  mean event data (JSON)         {res['mean_event_data_bytes']:.0f} B",
        f"  log entries kept per session   {res['entries_kept_per_session']:.0f}",
    ]
    for kind, size in res["per_session_bytes"].items():
        lines.append(f"  MEMORY USAGE {kind:<17} {fmt_bytes(size)} per session")
    lines += [
        f"  MEMORY USAGE all session keys  {fmt_bytes(res['per_session_total_bytes'])} per session",
        f"  log bytes per kept event       {res['log_bytes_per_kept_event']:.0f} B",
        f"  INFO used_memory delta         {fmt_bytes(res['used_memory_delta_per_session'])} per session",
    ]
    for kind, size in res["global_bytes"].items():
        lines.append(f"  shared key {kind:<19} {fmt_bytes(size)} (all sessions)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--events", type=int, default=1000, help="events published per session")
    parser.add_argument("--connections", type=int, default=2, help="consumer offsets per session")
    parser.add_argument("--batch", type=int, default=20, help="events per publish call")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--redis",
        help="measure this Redis instead of a throw-away one (keys use a unique prefix and "
        "are deleted afterwards; the INFO delta is then only indicative)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    server = None if args.redis else ThrowawayRedis()
    url = server.url if server is not None else args.redis
    try:
        res = asyncio.run(
            measure(url, args.sessions, args.events, args.connections, args.batch, args.seed)
        )
    finally:
        if server is not None:
            server.stop()
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
