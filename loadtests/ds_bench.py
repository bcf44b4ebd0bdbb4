"""Durable Store: the gateway's ``/ds`` endpoint against the Node reference server, side by
side in one run, on the same workload.

Starts a throw-away redis-server and one gateway process (uvicorn, one worker), and the
reference server ``@durable-streams/server`` (in memory, one Node process), on free loopback
ports; then runs the same Node load generator (``loadtests/ds_bench/bench.mjs``) against each:

- append rate: ``--writers`` concurrent writers on ``--streams`` JSON store, ~100-byte
  messages, for ``--seconds``;
- (calibration) the append phase against a no-op Node HTTP server: the load generator's own
  ceiling on this machine;
- SSE read latency: ``--readers`` SSE readers of one JSON stream, one writer appending
  ``--events`` messages at ``--rate`` per second; latency from the append call to the reader
  (p50/p99), and a gap/duplicate check.

Each phase alternates between the two servers ``--repeat`` times; the best append rate and
the median of the latency percentiles are reported, with the gateway/reference ratio.
The Node packages are installed into ``loadtests/ds_bench/node_modules`` (git-ignored).

    python -m loadtests.ds_bench --readers 100 --events 1000 --rate 100 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from tests.support import ROOT, Gateway, RedisServer, free_port, wait_until

BENCH_DIR = ROOT / "loadtests" / "ds_bench"


def npm_install() -> None:
    """Install the reference server into loadtests/ds_bench/node_modules when missing."""
    if (BENCH_DIR / "node_modules" / "@durable-streams" / "server").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is needed for the reference server and the load generator")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BENCH_DIR, check=True)


class NodeServer:
    """``node <script> PORT``: the reference server (``ref-server.mjs``, in memory) or the
    no-op calibration server (``noop-server.mjs``)."""

    def __init__(self, script: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["node", script, str(self.port)],
            cwd=BENCH_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, timeout=20, what=script)

    def _up(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        """Stop the Node process."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run(base_url: str, phase: str, options: dict[str, Any]) -> dict[str, Any]:
    """One phase of bench.mjs against ``base_url``: its JSON result."""
    out = subprocess.run(
        ["node", "bench.mjs", base_url, phase, json.dumps(options)],
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.mjs {phase} against {base_url} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def compare(
    *,
    writers: int = 32,
    streams: int = 8,
    seconds: float = 10,
    readers: int = 100,
    events: int = 1000,
    rate: float = 100,
    repeat: int = 2,
    say: Any = print,
) -> dict[str, Any]:
    """Both servers, both phases, ``repeat`` times, alternating; the comparison.

    Returns ``{"summary": {"gateway"|"reference": {...}}, "ratio_gateway_over_reference":
    {...}, "load_generator_ceiling_appends_per_s": float, "runs": {...}, "node": str}``;
    rates in appends/s, latencies in ms (best append rate, median of the percentiles).
    """
    npm_install()
    redis = RedisServer()
    gateway = Gateway(redis.url)
    ref = NodeServer("ref-server.mjs")
    noop = NodeServer("noop-server.mjs")
    targets = {"gateway": gateway.url + "/ds", "reference": ref.url}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"append": [], "sse": []} for name in targets
    }
    ceiling: list[dict[str, Any]] = []
    try:
        append_opts = {"writers": writers, "streams": streams, "seconds": seconds}
        sse_opts = {"readers": readers, "events": events, "rate": rate}
        for _ in range(repeat):
            ceiling.append(run(noop.url, "append", append_opts))
            say(f"  no-op server append {ceiling[-1]}")
            for name, url in targets.items():
                results[name]["append"].append(run(url, "append", append_opts))
                say(f"  {name} append {results[name]['append'][-1]}")
            for name, url in targets.items():
                results[name]["sse"].append(run(url, "sse", sse_opts))
                say(f"  {name} sse {results[name]['sse'][-1]}")
    finally:
        noop.stop()
        ref.stop()
        gateway.stop()
        redis.stop()

    summary = {}
    for name, phases in results.items():
        summary[name] = {
            "appends_per_s": max(r["appends_per_s"] for r in phases["append"]),
            "append_p50_ms": statistics.median(r["request_p50_ms"] for r in phases["append"]),
            "append_p99_ms": statistics.median(r["request_p99_ms"] for r in phases["append"]),
            "sse_p50_ms": statistics.median(r["p50_ms"] for r in phases["sse"]),
            "sse_p99_ms": statistics.median(r["p99_ms"] for r in phases["sse"]),
            "sse_rate": statistics.median(r["rate_per_s"] for r in phases["sse"]),
            "deliveries": sum(r["deliveries"] for r in phases["sse"]),
            "expected": sum(r["expected_deliveries"] for r in phases["sse"]),
            "gaps": sum(r["gaps_or_duplicates"] for r in phases["sse"]),
        }
    g, r = summary["gateway"], summary["reference"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "summary": summary,
        "ratio_gateway_over_reference": {
            "appends_per_s": g["appends_per_s"] / r["appends_per_s"],
            "sse_p50_ms": g["sse_p50_ms"] / r["sse_p50_ms"],
            "sse_p99_ms": g["sse_p99_ms"] / r["sse_p99_ms"],
        },
        "load_generator_ceiling_appends_per_s": max(c["appends_per_s"] for c in ceiling),
        "runs": results,
        "node": node,
        "options": {**append_opts, **sse_opts, "repeat": repeat},
    }


def main() -> None:
    """Run both servers, both phases, ``--repeat`` times; print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writers", type=int, default=32)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--readers", type=int, default=100)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    res = compare(
        writers=args.writers,
        streams=args.streams,
        seconds=args.seconds,
        readers=args.readers,
        events=args.events,
        rate=args.rate,
        repeat=args.repeat,
    )
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    summary, ratios = res["summary"], res["ratio_gateway_over_reference"]
    g, r = summary["gateway"], summary["reference"]
    top = res["load_generator_ceiling_appends_per_s"]
    if args.markdown:
        node = res["node"]
        redis_v = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True
        ).stdout.split()[2]
        print(
            f"\n{os.cpu_count()} cores, Python {platform.python_version()}, Node {node.strip()}, "
            f"Redis {redis_v.removeprefix('v=')}; {time.strftime('%Y-%m-%d')}\n"
        )
        print(
            "| metric | gateway `/ds` (Redis) | reference (Node, in memory) | gateway / reference |"
        )
        print("| --- | --- | --- | --- |")
        print(
            f"| appends/s ({args.writers} writers, {args.streams} store) | "
            f"{g['appends_per_s']:,.0f} | {r['appends_per_s']:,.0f} | {ratios['appends_per_s']:.2f} |"
        )
        print(
            f"| append request p50 / p99 | {g['append_p50_ms']:.1f} / {g['append_p99_ms']:.1f} ms | "
            f"{r['append_p50_ms']:.1f} / {r['append_p99_ms']:.1f} ms | "
            f"{g['append_p50_ms'] / r['append_p50_ms']:.2f} / {g['append_p99_ms'] / r['append_p99_ms']:.2f} |"
        )
        print(f"| (load generator alone, against a no-op server) | | | {top:,.0f} requests/s |")
        print(
            f"| SSE latency p50 ({args.readers} readers, {args.rate:g}/s) | {g['sse_p50_ms']:.1f} ms | "
            f"{r['sse_p50_ms']:.1f} ms | {ratios['sse_p50_ms']:.2f} |"
        )
        print(
            f"| SSE latency p99 | {g['sse_p99_ms']:.1f} ms | {r['sse_p99_ms']:.1f} ms | "
            f"{ratios['sse_p99_ms']:.2f} |"
        )
        print(
            f"| appends/s the SSE writer achieved (target {args.rate:g}) | {g['sse_rate']:.0f} | "
            f"{r['sse_rate']:.0f} | |"
        )
        print(
            f"| SSE deliveries (gaps/duplicates) | {g['deliveries']:,}/{g['expected']:,} ({g['gaps']}) | "
            f"{r['deliveries']:,}/{r['expected']:,} ({r['gaps']}) | |"
        )


if __name__ == "__main__":
    main()
