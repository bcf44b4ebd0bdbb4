"""The benchmark's ``durable`` phase and its report: the gateway's Durable Streams endpoint
(``/ds``, stored in Redis) against the protocol's Node reference server (in memory), the
same Node load generator against each (``loadtests/ds_bench.py`` runs both and alternates
them ``ds_repeats`` times). Its flat metrics, targets (appends ≥ 1.0x the reference, SSE
p99 no worse) and README section; each piece is empty when the phase has no results.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.bench import Config, Run


def durable(run: Run) -> dict[str, Any]:
    """Run the comparison with the config's ``ds_*`` counts; ``ds_bench.compare``'s result
    plus the load average before and after."""
    from loadtests import ds_bench

    cfg = run.cfg
    run.say(
        f"== durable: /ds vs the Node reference server, {cfg.ds_writers} writers on "
        f"{cfg.ds_streams} streams for {cfg.ds_seconds:g} s; {cfg.ds_readers} SSE readers at "
        f"{cfg.ds_rate:g}/s  (load average {os.getloadavg()[0]:.2f})"
    )
    before = os.getloadavg()[0]
    out = ds_bench.compare(
        writers=cfg.ds_writers,
        streams=cfg.ds_streams,
        seconds=cfg.ds_seconds,
        readers=cfg.ds_readers,
        events=cfg.ds_events,
        rate=cfg.ds_rate,
        repeat=cfg.ds_repeats,
        say=run.say,
    )
    out["load_before"], out["load_after"] = before, os.getloadavg()[0]
    g, r = out["summary"]["gateway"], out["summary"]["reference"]
    ratio = out["ratio_gateway_over_reference"]
    run.say(
        f"  appends/s gateway {g['appends_per_s']:,.0f} vs reference {r['appends_per_s']:,.0f} "
        f"({ratio['appends_per_s']:.2f}x); SSE p99 {g['sse_p99_ms']:.1f} vs "
        f"{r['sse_p99_ms']:.1f} ms"
    )
    return out


def metrics(results: dict[str, Any]) -> dict[str, float]:
    """``durable.<server>.<figure>`` and the two ratios the targets read."""
    d = results.get("durable")
    if not d:
        return {}
    out: dict[str, float] = {}
    for server, fig in d["summary"].items():
        for key in ("appends_per_s", "append_p99_ms", "sse_p50_ms", "sse_p99_ms"):
            out[f"durable.{server}.{key}"] = fig[key]
    out["durable.appends_ratio"] = d["ratio_gateway_over_reference"]["appends_per_s"]
    # A latency ratio the other way round: above 1, the gateway is faster.
    out["durable.sse_p99_advantage"] = 1 / d["ratio_gateway_over_reference"]["sse_p99_ms"]
    return out


def targets(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    """Appends ≥ 1.0x the reference server's rate; SSE p99 no worse than its."""
    from loadtests.bench_report import target_row

    if "durable.appends_ratio" not in m:
        return []
    where = "Durable Streams, vs the Node reference server"
    return [
        target_row("appends/s", where, m["durable.appends_ratio"], ">=", 1.0, "x"),
        target_row(
            "SSE p99 (reference / gateway)", where, m["durable.sse_p99_advantage"], ">=", 1.0, "x"
        ),
    ]


def readme_section(results: dict[str, Any], cfg: Config) -> list[str]:
    """The README's "Durable Streams" section (empty without the phase)."""
    d = results.get("durable")
    if not d:
        return []
    g, r = d["summary"]["gateway"], d["summary"]["reference"]
    ratio = d["ratio_gateway_over_reference"]
    o = d["options"]
    lines = [
        "## Durable Streams: the gateway against the reference server\n",
        f"The gateway's `/ds` endpoint (stored in Redis) and `@durable-streams/server` (Node "
        f"{d['node']}, in memory), the same Node load generator "
        "([`ds_bench/bench.mjs`](../../loadtests/ds_bench/bench.mjs)) against each, "
        f"alternating, {o['repeat']} times: appends by {o['writers']} keep-alive writers on "
        f"{o['streams']} JSON streams for {o['seconds']:g} s (best run); SSE latency of "
        f"{o['readers']} readers of one stream, {o['events']:,} appends at {o['rate']:g}/s "
        "(median of the runs). More in [durable-streams.md](durable-streams.md).\n",
        "| metric | gateway `/ds` | reference server | gateway / reference |",
        "| --- | ---: | ---: | ---: |",
        f"| appends/s | {g['appends_per_s']:,.0f} | {r['appends_per_s']:,.0f} | "
        f"**{ratio['appends_per_s']:.2f}** |",
        f"| append request p99 | {g['append_p99_ms']:.1f} ms | {r['append_p99_ms']:.1f} ms | "
        f"{g['append_p99_ms'] / r['append_p99_ms']:.2f} |",
        f"| SSE latency p50 | {g['sse_p50_ms']:.1f} ms | {r['sse_p50_ms']:.1f} ms | "
        f"{ratio['sse_p50_ms']:.2f} |",
        f"| SSE latency p99 | {g['sse_p99_ms']:.1f} ms | {r['sse_p99_ms']:.1f} ms | "
        f"**{ratio['sse_p99_ms']:.2f}** |",
        f"| SSE deliveries (gaps or duplicates) | {g['deliveries']:,}/{g['expected']:,} "
        f"({g['gaps']}) | {r['deliveries']:,}/{r['expected']:,} ({r['gaps']}) | |",
        f"| the load generator alone (no-op server) | | | "
        f"{d['load_generator_ceiling_appends_per_s']:,.0f} requests/s |",
        "",
    ]
    return lines
