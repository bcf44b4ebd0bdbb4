"""Publish probe: events/s of the gateway's Publisher against plain XADD, on a throw-away
redis-server, in one run (the figures of one machine at one moment compare; runs do not).

    python -m loadtests.publish_probe [--seconds 5] [--repeats 3] [--callers 4]

Rows (best and median of ``--repeats`` runs of ``--seconds`` seconds, interleaved, on
uvloop as the benchmark's load processes; CPU is the probe's own per event):

- ``xadd single``: plain XADD, ``--callers`` callers each awaiting one XADD at a time;
- ``publish single, N sessions``: ``Publisher.publish``, one event per call, the same callers,
  each on its own session; ``1 session``: all of them on one session;
- ``publish_batch 100`` against ``xadd pipelined 100``: one caller, 100 events per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.agent.publisher import EventIn, Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.support import RedisServer

TEXT = "lorem ipsum dolor sit amet, " * 2


def _data(i: int) -> dict[str, Any]:
    return {"text": TEXT, "t_ns": time.time_ns(), "i": i}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def _timed(
    seconds: float, callers: int, step: Callable[[int], Awaitable[int]]
) -> tuple[float, float]:
    """Events/s of ``callers`` concurrent loops of ``step(caller)`` (which returns its events),
    and this process's CPU time per event in microseconds."""
    stop = time.perf_counter() + seconds
    counts = [0] * callers

    async def loop(j: int) -> None:
        while time.perf_counter() < stop:
            counts[j] += await step(j)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(j) for j in range(callers)))
    n = sum(counts)
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def probe(seconds: float, repeats: int, callers: int) -> dict[str, list[tuple[float, float]]]:
    server = RedisServer()
    try:
        redis = connect(Settings(redis_url=server.url), role="probe")
        store = Store(redis)
        pub = Publisher(store)
        seq = iter(range(1, 1 << 62))
        rows: dict[str, list[tuple[float, float]]] = {}

        async def run_started(sids: list[str]) -> None:
            for sid in sids:
                await pub.publish(sid, "run.started", {"input": "probe"}, run_id="r1")

        async def xadd(j: int) -> int:
            await redis.xadd(
                f"raw:{{x{j}}}:log",
                {"t": "message.delta", "r": "r1", "d": _dumps(_data(next(seq))), "ts": 1},
                maxlen=20_000,
                approximate=True,
            )
            return 1

        async def xadd_100(j: int) -> int:
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(100):
                    d = _dumps(_data(next(seq)))
                    pipe.xadd(
                        "raw:{p}:log",
                        {"t": "message.delta", "r": "r1", "d": d, "ts": 1},
                        maxlen=20_000,
                        approximate=True,
                    )
                await pipe.execute()
            return 100

        def publish_on(sids: list[str]) -> Callable[[int], Awaitable[int]]:
            async def step(j: int) -> int:
                await pub.publish(
                    sids[j % len(sids)], "message.delta", _data(next(seq)), run_id="r1"
                )
                return 1

            return step

        async def batch_100(j: int) -> int:
            await pub.publish_batch(
                "b-0", [EventIn("message.delta", _data(next(seq)), "r1") for _ in range(100)]
            )
            return 100

        many = [f"s-{j}" for j in range(callers)]
        await run_started([*many, "one", "b-0"])
        cases: list[tuple[str, int, Callable[[int], Awaitable[int]]]] = [
            (f"xadd single x{callers}", callers, xadd),
        ]
        for label, sids in ((f"{callers} sessions", many), ("1 session", ["one"])):
            cases.append((f"publish single x{callers}, {label}", callers, publish_on(sids)))
        cases += [
            ("xadd pipelined 100", 1, xadd_100),
            ("publish_batch 100", 1, batch_100),
        ]
        for _ in range(repeats):  # interleaved, so that a busy moment hits every row alike
            for label, n, step in cases:
                await step(0)  # warm: connections, script cache
                rows.setdefault(label, []).append(await _timed(seconds, n, step))
        await redis.aclose()
        return rows
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--callers", type=int, default=4)
    args = ap.parse_args()
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    rows = runner(probe(args.seconds, args.repeats, args.callers))
    width = max(map(len, rows))
    print(f"{args.repeats} runs of {args.seconds:g} s each; CPU: this process, per event")
    print(f"{'case':<{width}}  {'best/s':>8}  {'median/s':>8}  {'CPU us':>6}")
    for label, runs in rows.items():
        rates = sorted(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"{label:<{width}}  {rates[-1]:>8,.0f}  {statistics.median(rates):>8,.0f}  {cpu:>6.1f}"
        )


if __name__ == "__main__":
    main()
