"""Report of the benchmark (``loadtests/bench.py``): the machine, the flat metrics, the
targets and the ratios against the alternatives, ``README.md`` and the console table, and
``report``, which writes them with ``results.json`` and the plots into the output directory.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from loadtests.bench import LABEL, SYSTEMS, Config

# --- results -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    versions = {}
    for pkg in ("litestar", "uvicorn", "redis", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_version.split(" sha=")[0],
        "packages": versions,
    }


def describe(m: dict[str, Any]) -> str:
    pk = m["packages"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; "
        f"Python {m['python']}; {m['redis_server']}; litestar {pk.get('litestar')}, "
        f"uvicorn {pk.get('uvicorn')}, redis-py {pk.get('redis')}"
    )


def flat_metrics(results: dict[str, Any], cfg: Config) -> dict[str, float]:
    """The headline numbers, one flat name each (what the test checks)."""
    out: dict[str, float] = {}
    for s in SYSTEMS:
        r = results[s]
        pub = r["publish"]
        out[f"{s}.publish.single_events_per_s"] = pub["single"]["rate"]
        if "batch" in pub:
            out[f"{s}.publish.batch_events_per_s"] = pub["batch"]["rate"]
        for v in cfg.latency_viewers:
            out[f"{s}.latency.{v}.p50_ms"] = r["latency"][str(v)]["p50_ms"]
            out[f"{s}.latency.{v}.p99_ms"] = r["latency"][str(v)]["p99_ms"]
        out[f"{s}.fanout.deliveries_per_s"] = r["fanout"]["deliveries_per_s"]
        for n in cfg.idle_viewers:
            out[f"{s}.idle.{n}.rss_per_viewer_kib"] = r["idle"][str(n)]["rss_per_viewer_kib"]
            out[f"{s}.idle.{n}.redis_clients"] = r["idle"][str(n)]["redis_clients"]
        head = r["reattach"][r["reattach"]["headline"]]
        out[f"{s}.reattach.first_ms"] = head["first_ms"]
        out[f"{s}.reattach.backlog_ms"] = head["all_ms"]
    g = results["gateway"]["publish"]
    out["gateway.publish.raw_pipeline_events_per_s"] = g["raw_pipeline"]["rate"]
    out["gateway.publish.ratio_to_raw_pipeline"] = g["batch"]["rate"] / g["raw_pipeline"]["rate"]
    out["raw.fanout.deliveries_per_s"] = results["raw"]["fanout"]["deliveries_per_s"]
    for s in (*SYSTEMS, "raw"):
        out[f"{s}.fanout.deliveries_per_cpu_s"] = results[s]["fanout"]["deliveries_per_cpu_s"]
    out["gateway.fanout.ratio_to_raw"] = (
        out["gateway.fanout.deliveries_per_s"] / out["raw.fanout.deliveries_per_s"]
    )
    for n in cfg.idle_viewers:
        out[f"raw.idle.{n}.rss_per_viewer_kib"] = results["raw"]["idle"][str(n)][
            "rss_per_viewer_kib"
        ]
    return out


BASELINES = ("xread", "channels")


def best_baseline(m: dict[str, float], key: str, higher_is_better: bool) -> tuple[str, float]:
    """(system, value) of the best baseline on ``key`` (the highest rate, the lowest time)."""
    vals = [(s, m[f"{s}.{key}"]) for s in BASELINES if m.get(f"{s}.{key}", 0) > 0]
    return (max if higher_is_better else min)(vals, key=lambda sv: sv[1])


def targets(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    """The issue's targets against this run's numbers (``<=`` or ``>=``). Comparisons with a
    baseline are "times better" ratios (the best baseline's time over the gateway's, the
    gateway's rate over plain XADD's): 1.0 or more meets them."""
    top = cfg.idle_viewers[-1]
    rows = []
    for v in cfg.latency_viewers:
        for q in ("p50", "p99"):
            key = f"latency.{v}.{q}_ms"
            system, best = best_baseline(m, key, higher_is_better=False)
            rows.append((f"latency {q} vs the best baseline",
                         f"at {v:,} viewers (best: {LABEL[system]}, {fmt(best, 'ms')})",
                         best / m[f"gateway.{key}"], ">=", 1.0, "x"))  # fmt: skip
    rows += [
        ("one event per call vs plain XADD",
         f"{cfg.publish_concurrency} callers (XADD {fmt(m['xread.publish.single_events_per_s'], '/s')})",
         m["gateway.publish.single_events_per_s"] / m["xread.publish.single_events_per_s"],
         ">=", 1.0, "x"),
        ("publisher vs raw pipelined XADD", f"batches of {cfg.publish_batch}",
         m["gateway.publish.ratio_to_raw_pipeline"], ">=", 0.80, "x"),
        ("Redis client connections per process", f"at {top:,} idle viewers",
         m[f"gateway.idle.{top}.redis_clients"], "<=", 8, ""),
        ("fan-out", "deliveries/s, one process",
         m["gateway.fanout.deliveries_per_s"], ">=", 50_000, "/s"),
        ("fan-out vs raw ASGI writer", "ratio",
         m["gateway.fanout.ratio_to_raw"], ">=", 0.60, "x"),
        ("reattach: first replayed event", "", m["gateway.reattach.first_ms"], "<=", 20, "ms"),
        ("reattach: end of the backlog", f"{cfg.backlog:,} events",
         m["gateway.reattach.backlog_ms"], "<=", 500, "ms"),
    ]  # fmt: skip
    return [target_row(*row) for row in rows]


def target_row(
    name: str, where: str, value: float, op: str, limit: float, unit: str
) -> dict[str, Any]:
    """One target against its measured ``value`` (``op`` ``<=`` or ``>=`` ``limit``), as the
    report and ``results.json`` carry it."""
    met = value <= limit if op == "<=" else value >= limit
    # how far from the target, as a share of it (positive: room left; negative: missed by)
    margin = (limit - value) / limit if op == "<=" else (value - limit) / limit
    return {
        "target": name,
        "where": where,
        "value": value,
        "op": op,
        "limit": limit,
        "unit": unit,
        "met": met,
        "margin": margin,
    }


def ratios(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    """The gateway against each alternative, per metric, as "times better"."""
    lv, top = cfg.latency_viewers, cfg.idle_viewers
    rows: list[tuple[str, str, bool]] = [
        ("publish, one event per call (events/s)", "publish.single_events_per_s", True),
    ]
    for v in lv:
        rows.append((f"latency p50 at {v:,} viewers", f"latency.{v}.p50_ms", False))
        rows.append((f"latency p99 at {v:,} viewers", f"latency.{v}.p99_ms", False))
    rows.append(("fan-out (deliveries/s)", "fanout.deliveries_per_s", True))
    for n in top:
        rows.append((f"RSS per idle viewer at {n:,}", f"idle.{n}.rss_per_viewer_kib", False))
        rows.append((f"Redis connections at {n:,}", f"idle.{n}.redis_clients", False))
    rows.append(("reattach: first event", "reattach.first_ms", False))
    rows.append((f"reattach: {cfg.backlog:,}-event backlog", "reattach.backlog_ms", False))
    out = []
    for label, key, higher_better in rows:
        g = m[f"gateway.{key}"]
        row: dict[str, Any] = {"metric": label, "key": key, "higher_is_better": higher_better}
        for s in ("xread", "channels"):
            b = m[f"{s}.{key}"]
            row[s] = (g / b if higher_better else b / g) if g > 0 and b > 0 else None
        out.append(row)
    return out


def fmt(value: float, unit: str = "") -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "KiB":
        return f"{value:.1f} KiB"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"


# --- README ----------------------------------------------------------------------------------


def readme(results: dict[str, Any], data: dict[str, Any], cfg: Config, out: Path) -> str:
    m, meta = data["metrics"], data["meta"]
    lv, top = cfg.latency_viewers, cfg.idle_viewers
    L: list[str] = []
    add = L.append
    add("# Benchmarks\n")
    add(
        "The gateway against the two designs teams usually reach for first, on real Redis, in "
        "one run of one command. Generated by `loadtests/bench.py`; every number below comes "
        "from `results.json` of the same run.\n"
    )
    add("```bash")
    add(f"{meta['command']}")
    add("```\n")
    add(
        f"Run {meta['started']} ({meta['duration_s']:.0f} s{' , QUICK: reduced counts' if meta['quick'] else ''}). "
        f"Load average (1 min) before {meta['load_before'][0]:.2f}, after {meta['load_after'][0]:.2f}.\n"
    )
    add(f"**Machine**: {meta['machine_text']}.\n")
    add(
        "Load average (1 min) when each system's turn began and ended: "
        + "; ".join(
            f"{LABEL[s]} {results[s]['load_before']:.2f} → {results[s]['load_after']:.2f}"
            for s in (*SYSTEMS, "raw")
            if "load_before" in results[s]
        )
        + ". The machine is shared with other engineers' test runs; their load is included.\n"
    )
    met = [t for t in data["targets"] if t["met"]]
    missed = [t for t in data["targets"] if not t["met"]]
    add(
        f"**Targets**: {len(met)} of {len(data['targets'])} met in this run"
        + (
            "; missed: "
            + "; ".join(
                f"{t['target']} ({fmt(t['value'], t['unit'])} against {t['op']} "
                f"{fmt(t['limit'], t['unit'])}, by {abs(t['margin']):.0%})"
                for t in missed
            )
            if missed
            else ""
        )
        + ". What limits them, with profiles: [Analysis](#analysis).\n"
    )
    add("## Systems\n")
    add("| system | what it is |")
    add("| --- | --- |")
    add(
        "| **gateway** | `gateway serve --insecure`, one uvicorn process, default settings; "
        "published to with `gateway.publisher.Publisher` (one Lua script per call: sequence, "
        "XADD, metadata, PUBLISH); viewers on `GET /v1/sessions/{id}/events?from=live` |"
    )
    add(
        "| **XREAD per viewer** | [`baselines/xread_per_viewer.py`](../../loadtests/baselines/"
        "xread_per_viewer.py): Litestar SSE route, one `XREAD BLOCK` loop per viewer on its own "
        "Redis connection, resume by `Last-Event-ID`; published to by plain `XADD` |"
    )
    add(
        "| **Litestar channels** | [`baselines/litestar_channels.py`](../../loadtests/baselines/"
        "litestar_channels.py): `ChannelsPlugin` + `RedisChannelsStreamBackend` (one XREAD loop "
        "per process), SSE route over a subscriber, resume from the backend's history; "
        "published to with the backend's script |"
    )
    add(
        "| raw ASGI writer | [`baselines/raw_asgi.py`](../../loadtests/baselines/raw_asgi.py): "
        "pre-built SSE frames of the same size under the same uvicorn, one `send` per frame: "
        "the server's own fan-out limit and idle-memory floor |"
    )
    add("")
    add(
        "Each system gets its own `redis-server` on a free loopback port. Viewers (raw asyncio "
        "sockets on uvloop) and publishers run in two separate processes "
        "(`loadtests/bench_load.py`); latency is the viewer's receive time minus the publish "
        "time stamped into each event's data, on the same clock.\n"
    )

    add("## Results\n")
    head = "| metric | " + " | ".join(LABEL[s] for s in SYSTEMS) + " | target (gateway) |"
    add(head)
    add("| --- |" + " ---: |" * len(SYSTEMS) + " --- |")

    def row(label: str, key: str, unit: str, target: str = "") -> None:
        cells = []
        for s in SYSTEMS:
            v = m.get(f"{s}.{key}")
            cells.append(fmt(v, unit) if v is not None else "-")
        add(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    g = results["gateway"]["publish"]
    add(
        f"| publish, batches of {cfg.publish_batch} (events/s) | "
        f"{fmt(g['batch']['rate'], '/s')} (raw pipelined XADD {fmt(g['raw_pipeline']['rate'], '/s')}: "
        f"**{m['gateway.publish.ratio_to_raw_pipeline']:.0%}**) | "
        f"{fmt(results['xread']['publish']['batch']['rate'], '/s')} (pipelined XADD) | no batch API | "
        f"≥ 80% of raw pipelined XADD |"
    )
    row(
        f"publish, one event per call, {cfg.publish_concurrency} callers",
        "publish.single_events_per_s",
        "/s",
        "≥ plain XADD (XREAD per viewer's column)",
    )
    for v in lv:
        row(f"latency p50, {v:,} viewers", f"latency.{v}.p50_ms", "ms", "≤ best baseline")
        row(f"latency p99, {v:,} viewers", f"latency.{v}.p99_ms", "ms", "≤ best baseline")
    row(
        f"fan-out, {cfg.fanout_viewers} viewers (deliveries/s)",
        "fanout.deliveries_per_s",
        "/s",
        "≥ 50,000/s",
    )
    add(
        f"| fan-out / raw ASGI writer ({fmt(m['raw.fanout.deliveries_per_s'], '/s')}) | "
        + " | ".join(
            f"{m[f'{s}.fanout.deliveries_per_s'] / m['raw.fanout.deliveries_per_s']:.0%}"
            for s in SYSTEMS
        )
        + " | ≥ 60% |"
    )
    row(
        "fan-out per CPU-second the server process got "
        f"(raw writer {fmt(m['raw.fanout.deliveries_per_cpu_s'], '/s')})",
        "fanout.deliveries_per_cpu_s",
        "/s",
    )
    for n in top:
        row(
            f"RSS per idle viewer, {n:,} viewers (raw floor {m[f'raw.idle.{n}.rss_per_viewer_kib']:.1f} KiB)",
            f"idle.{n}.rss_per_viewer_kib",
            "KiB",
            "≤ 20 KiB (scale phase)" if n == top[-1] else "",
        )
        row(
            f"Redis connections, {n:,} viewers",
            f"idle.{n}.redis_clients",
            "",
            "≤ 8" if n == top[-1] else "",
        )
    row("reattach: first replayed event", "reattach.first_ms", "ms", "≤ 20 ms")
    row(
        f"reattach: end of a {cfg.backlog:,}-event backlog", "reattach.backlog_ms", "ms", "≤ 500 ms"
    )
    add("")
    add(
        f"Latency and fan-out: {cfg.repeats} runs each, the median reported (every run in "
        "Details below). Latency: percentiles over every delivery after a warm-up of "
        f"{cfg.warmup:g} s, {cfg.latency_seconds:g} s at {cfg.rate:,.0f} events/s round robin "
        f"over {cfg.sessions} sessions, viewers spread evenly over the sessions. Fan-out: "
        f"{cfg.fanout_seconds:g} s after {cfg.warmup:g} s of warm-up; the publisher is one "
        "process calling one event per call as fast as it goes (4 calls in flight; 1 for "
        "channels, whose route needs the messages in order). Idle: one viewer per "
        f"session; RSS per viewer = (RSS with N viewers - RSS after a warm-up with none) / N. "
        f"Reattach: median of {cfg.reattach_reps}; the gateway's headline is a stored "
        "connection (`GET …/connections/{id}/events`, its offset stored in Redis), the "
        "baselines resume by `Last-Event-ID`.\n"
    )
    from loadtests import bench_durable, bench_extra

    for name in data["plots"]:
        if name not in bench_extra.PLOTS:  # those go with their own sections
            add(f"![{name}]({name})\n")

    L.extend(bench_extra.readme_sections(results, data, cfg))
    L.extend(bench_durable.readme_section(results, cfg))
    add("## Targets\n")
    add("| target | where | measured | limit | result |")
    add("| --- | --- | ---: | ---: | --- |")
    for t in data["targets"]:
        res = (
            f"met ({abs(t['margin']):.0%} to spare)"
            if t["met"]
            else f"**missed by {abs(t['margin']):.0%}**"
        )
        add(
            f"| {t['target']} | {t['where']} | {fmt(t['value'], t['unit'])} | "
            f"{t['op']} {fmt(t['limit'], t['unit'])} | {res} |"
        )
    add("")

    add("## Against the alternatives\n")
    add(
        "How many times better the gateway is (above 1: the gateway wins; below 1: the "
        "alternative does). For latency, memory, connections and times that is the "
        "alternative's number divided by the gateway's; for rates the gateway's divided by "
        "the alternative's.\n"
    )
    add("| metric | vs XREAD per viewer | vs Litestar channels |")
    add("| --- | ---: | ---: |")
    for r in data["ratios"]:
        cells = [f"{r[s]:.2f}x" if r[s] is not None else "-" for s in ("xread", "channels")]
        add(f"| {r['metric']} | " + " | ".join(cells) + " |")
    add("")

    add("## Details\n")
    add("| system | phase | numbers |")
    add("| --- | --- | --- |")
    for s in SYSTEMS:
        for v in lv:
            r = results[s]["latency"][str(v)]
            add(
                f"| {LABEL[s]} | latency {v:,} | n={r['n']:,}, p90 {r['p90_ms']:.2f} ms, "
                f"p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.1f} ms; missing {r['missing']}, "
                f"gaps {r['gaps']}, duplicates {r['duplicates']}; server CPU {r['server_cpu']:.0%}; "
                "each run p50/p99 "
                + ", ".join(f"{x['p50_ms']:.2f}/{x['p99_ms']:.1f} ms" for x in r.get("reps", []))
                + " |"
            )
        f = results[s]["fanout"]
        add(
            f"| {LABEL[s]} | fan-out | published {f['publish_rate']:,.0f} events/s "
            f"(publisher CPU {f['publisher_cpu']:.0%}), server CPU {f['server_cpu']:.0%}; "
            "each run "
            + ", ".join(f"{x['deliveries_per_s']:,.0f}/s" for x in f.get("reps", []))
            + " |"
        )
        for n in top:
            i = results[s]["idle"][str(n)]
            add(
                f"| {LABEL[s]} | idle {n:,} | RSS {i['rss'] / 2**20:.1f} MiB "
                f"(baseline {results[s]['idle']['baseline']['rss'] / 2**20:.1f} MiB), "
                f"idle CPU {i['idle_cpu']:.0%}, opened {i['opens_per_s']:,.0f} streams/s |"
            )
        for variant in ("connection", "last_event_id"):
            r = results[s]["reattach"].get(variant)
            if r:
                add(
                    f"| {LABEL[s]} | reattach ({variant.replace('_', '-')}) | first "
                    + ", ".join(f"{x:.1f}" for x in r["first_ms_each"])
                    + " ms; all "
                    + ", ".join(f"{x:,.0f}" for x in r["all_ms_each"])
                    + f" ms; gaps {r['gaps']}, duplicates {r['duplicates']} |"
                )
    f = results["raw"]["fanout"]
    add(
        f"| raw ASGI writer | fan-out | server CPU {f['server_cpu']:.0%}; each run "
        + ", ".join(f"{x['deliveries_per_s']:,.0f}/s" for x in f.get("reps", []))
        + " |"
    )
    add("")

    extra = sorted(p.name for p in out.glob("*.md") if p.name not in ("README.md", "analysis.md"))
    analysis = out / "analysis.md"
    if analysis.exists():
        add(analysis.read_text().strip() + "\n")
    add("## Other benchmarks\n")
    add(
        "- Durable Store (`/ds`) against the Node reference server: "
        "`python -m loadtests.ds_bench`" + "".join(f"; [{name}]({name})" for name in extra) + "."
    )
    add("- Connection-leak soak (Locust): [docs/loadtests.md](../loadtests.md).")
    add("")
    return "\n".join(L)


def print_table(data: dict[str, Any]) -> None:
    m = data["metrics"]
    width = max(len(k) for k in m)
    print()
    for key, value in m.items():
        print(f"{key:<{width}}  {value:>14,.2f}")
    print()
    for t in data["targets"]:
        verdict = "met" if t["met"] else f"MISSED by {abs(t['margin']):.0%}"
        print(
            f"target {t['target']:<36} {t['where']:<26} {fmt(t['value'], t['unit']):>14} "
            f"{t['op']} {fmt(t['limit'], t['unit']):<10} {verdict}"
        )
    print()
    for r in data["ratios"]:
        cells = "  ".join(
            f"vs {s} {r[s]:.2f}x" if r[s] is not None else f"vs {s} -"
            for s in ("xread", "channels")
        )
        print(f"gateway {r['metric']:<42} {cells}")
    for r in data.get("peer_ratios", []):
        if r["ratio"] is None:
            print(f"resumable-stream: {r['metric']}: {r.get('resumable-stream_text', '-')}")
        else:
            print(
                f"gateway {r['metric']:<52} {fmt(r['gateway'], r['unit']):>12}  vs "
                f"resumable-stream {fmt(r['resumable-stream'], r['unit']):>12}  {r['ratio']:.2f}x"
            )


def report(data: dict[str, Any], cfg: Config, out: Path) -> None:
    """Derive metrics, targets and ratios; write results.json, the plots and README.md."""
    from loadtests import bench_durable, bench_extra

    results = data["results"]
    data["metrics"] = (
        flat_metrics(results, cfg)
        | bench_extra.metrics(results, cfg)
        | bench_durable.metrics(results)
    )
    data["targets"] = (
        targets(data["metrics"], cfg)
        + bench_extra.targets(data["metrics"], cfg)
        + bench_durable.targets(data["metrics"], cfg)
    )
    data["ratios"] = ratios(data["metrics"], cfg)
    data["peer_ratios"] = bench_extra.peer_ratios(results, cfg)
    from loadtests.bench_plots import plots

    data["plots"] = plots(results, cfg, out, data["meta"]["machine_text"])
    later = data["meta"].get("later_phases") or [data["meta"]]
    data["plots"] += bench_extra.plots(results, cfg, out, later[-1]["machine_text"])
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "README.md").write_text(readme(results, data, cfg, out))
    print_table(data)
    print(f"\nwrote {out / 'results.json'}, {out / 'README.md'} and {len(data['plots'])} plots")
