"""Publish→SSE latency: N viewers of one session, E events at a fixed rate.

Starts its own redis-server and gateway process on free loopback ports (or uses
``--gateway``/``--redis`` to measure running ones), publishes with the asyncio publisher,
stamps each event with the publish time, and prints p50/p99/max latency as seen by the
viewers, plus a gap/duplicate check.

    python -m loadtests.latency --viewers 10 --events 1000 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import httpx

from gateway.agent.publisher import Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.support import Gateway, RedisServer, sse


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(
    gateway_url: str, redis_url: str, viewers: int, events: int, rate: float
) -> dict[str, float]:
    sid = "lat-" + uuid.uuid4().hex[:8]
    redis = connect(Settings(redis_url=redis_url), role="bench")
    pub = Publisher(Store(redis))
    await pub.publish(sid, "run.started", {"input": "latency"}, run_id="r1")
    latencies: list[float] = []
    problems = 0
    limits = httpx.Limits(max_connections=viewers + 10)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        ready = asyncio.Barrier(viewers + 1)

        async def viewer() -> None:
            nonlocal problems
            async with sse(client, f"{gateway_url}/v1/sessions/{sid}/events?from=live") as s:
                await ready.wait()
                last = 1
                for _ in range(events):
                    frame = await s.next(timeout=30)
                    now = time.time_ns()
                    seq = int(frame.id.split("_")[1])
                    problems += seq != last + 1
                    last = seq
                    latencies.append((now - frame.json()["data"]["t_ns"]) / 1e6)

        tasks = [asyncio.create_task(viewer()) for _ in range(viewers)]
        await ready.wait()
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        for i in range(events):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await pub.publish(
                sid, "message.delta", {"text": f"{i} ", "t_ns": time.time_ns()}, run_id="r1"
            )
        await asyncio.gather(*tasks)
    await redis.aclose()
    return {
        "viewers": viewers,
        "events": events,
        "deliveries": len(latencies),
        "gaps_or_duplicates": problems,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--gateway", help="base URL of a running gateway (default: start one)")
    parser.add_argument("--redis", help="Redis URL the gateway uses (required with --gateway)")
    args = parser.parse_args()
    procs: list[Gateway | RedisServer] = []
    try:
        if args.gateway:
            url, redis_url = args.gateway, args.redis
        else:
            server = RedisServer()
            gw = Gateway(server.url)
            procs = [gw, server]
            url, redis_url = gw.url, server.url
            print(f"started redis-server :{server.port} and gateway {gw.url}")
        res = asyncio.run(measure(url, redis_url, args.viewers, args.events, args.rate))
    finally:
        for p in procs:
            p.stop()
    print(
        f"{res['viewers']} viewers x {res['events']} events at {args.rate:.0f}/s: "
        f"{res['deliveries']} deliveries, gaps/duplicates {res['gaps_or_duplicates']}\n"
        f"publish->SSE latency  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
        f"max {res['max_ms']:.2f} ms  mean {res['mean_ms']:.2f} ms"
    )


if __name__ == "__main__":
    main()
