"""Report of the benchmark's ``peers``, ``live``, ``cores`` and ``scale`` phases: their flat
metrics, targets, the gateway/resumable-stream ratios, the README sections and the plots
(memory and latency against viewers, the peer comparison). ``loadtests/bench.py`` calls these
from its ``report``; each piece is empty when its phase has no results in ``results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.bench import Config

RS = "resumable-stream"
PLOTS = ("peers.png", "scale-memory.png", "scale-latency.png")


def _fmt(value: float, unit: str = "") -> str:
    from loadtests.bench_report import fmt

    return fmt(value, unit)


def metrics(results: dict[str, Any], cfg: Config) -> dict[str, float]:
    out: dict[str, float] = {}
    peers = results.get("peers") or {}
    for s in ("gateway", RS):
        r = peers.get(s)
        if not r:
            continue
        out[f"peers.{s}.publish_events_per_s"] = r["publish"]["rate"]
        out[f"peers.{s}.publish_followed_events_per_s"] = r["publish_followed"]["rate"]
        for key in ("first_ms", "all_ms", "events_per_s"):
            out[f"peers.{s}.reattach_running.{key}"] = r["reattach_running"][key]
        out[f"peers.{s}.reattach_ended.status"] = r["reattach_ended"]["status"]
        if "all_ms" in r["reattach_ended"]:
            out[f"peers.{s}.reattach_ended.first_ms"] = r["reattach_ended"]["first_ms"]
            out[f"peers.{s}.reattach_ended.all_ms"] = r["reattach_ended"]["all_ms"]
    live = results.get("live")
    if live:
        for key in ("p50_ms", "p99_ms", "p999_ms", "rss_per_viewer_kib", "server_cpu"):
            out[f"live.{key}"] = live[key]
        out["live.redis_clients"] = live["redis_clients"]
    cores = results.get("cores")
    if cores:
        out["cores.1.deliveries_per_s"] = cores["1"]["deliveries_per_s"]
        out["cores.2.deliveries_per_s"] = cores["2"]["deliveries_per_s"]
        out["cores.ratio"] = cores["ratio"]
    scale = results.get("scale")
    if scale:
        for lv in scale.get("levels", []):
            n = lv["viewers"]
            out[f"scale.{n}.rss_per_viewer_kib"] = lv["rss_per_viewer_kib"]
            out[f"scale.{n}.redis_clients_max"] = lv["redis_clients_max"]
            out[f"scale.{n}.hb_late_p99_ms"] = lv["hb_late_p99_ms"]
        ex = scale.get("extrapolated")
        if ex:
            out[f"scale.{ex['viewers']}.rss_mib_extrapolated"] = ex["rss_mib"]
    return out


def targets(m: dict[str, float], cfg: Config) -> list[dict[str, Any]]:
    from loadtests.bench_report import target_row

    out = []
    if "live.p99_ms" in m:
        where = (
            f"{cfg.live_viewers:,} live viewers, {cfg.live_sessions:,} sessions, "
            f"{cfg.live_rate:,.0f} events/s"
        )
        out.append(target_row("latency p99, live viewers", where, m["live.p99_ms"], "<=", 50, "ms"))
    if "cores.ratio" in m:
        out.append(
            target_row("--workers 2 / --workers 1", "fan-out", m["cores.ratio"], ">=", 1.7, "x")
        )
    levels = sorted(
        int(k.split(".")[1])
        for k in m
        if k.endswith(".rss_per_viewer_kib") and k.startswith("scale.")
    )
    if levels:
        n = levels[-1]
        where = f"at {n:,} idle viewers (50,000 not measurable here)"
        out.append(
            target_row(
                "RSS per idle viewer", where, m[f"scale.{n}.rss_per_viewer_kib"], "<=", 20, "KiB"
            )
        )
        out.append(
            target_row(
                "Redis connections (scale)", where, m[f"scale.{n}.redis_clients_max"], "<=", 8, ""
            )
        )
        out.append(
            target_row(
                "heartbeat lateness p99",
                where,
                max(m[f"scale.{n}.hb_late_p99_ms"], 0.0),
                "<=",
                1000,
                "ms",
            )
        )
    return out


def peer_ratios(results: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    """The gateway against resumable-stream, per row, as "times better" (above 1: the
    gateway wins)."""
    peers = results.get("peers") or {}
    g, p = peers.get("gateway"), peers.get(RS)
    if not g or not p:
        return []
    rows = [
        (
            f"publish, {cfg.peer_streams} streams (events/s)",
            g["publish"]["rate"],
            p["publish"]["rate"],
            "/s",
            True,
        ),
        (
            "publish, a viewer following each stream (events/s)",
            g["publish_followed"]["rate"],
            p["publish_followed"]["rate"],
            "/s",
            True,
        ),
        (
            "reattach to a running stream: first replayed event",
            g["reattach_running"]["first_ms"],
            p["reattach_running"]["first_ms"],
            "ms",
            False,
        ),
        (
            f"reattach to a running stream: {cfg.peer_backlog:,} events replayed",
            g["reattach_running"]["all_ms"],
            p["reattach_running"]["all_ms"],
            "ms",
            False,
        ),
        (
            "reattach to a running stream: replay throughput",
            g["reattach_running"]["events_per_s"],
            p["reattach_running"]["events_per_s"],
            "/s",
            True,
        ),
    ]
    out = []
    for label, gv, pv, unit, higher in rows:
        ratio = (gv / pv if higher else pv / gv) if gv > 0 and pv > 0 else None
        out.append({"metric": label, "gateway": gv, RS: pv, "unit": unit, "ratio": ratio})
    e = g["reattach_ended"]
    out.append(
        {
            "metric": "reattach after the stream ended",
            "gateway_text": f"{e['answer']}: first event {e['first_ms']:.1f} ms, all "
            f"{e['all_ms']:.1f} ms",
            f"{RS}_text": p["reattach_ended"]["answer"],
            "ratio": None,
        }
    )
    return out


def readme_sections(results: dict[str, Any], data: dict[str, Any], cfg: Config) -> list[str]:
    L: list[str] = []
    add = L.append
    for later in data["meta"].get("later_phases", []):
        add(
            f"Phases {', '.join(later['phases'])}: measured later and merged into these "
            f"results (`{later['command']}`, {later['started']}, {later['duration_s']:.0f} s; "
            f"load average {later['load_before'][0]:.2f} → {later['load_after'][0]:.2f}; "
            f"{later['machine_text']}).\n"
        )
    rows = data.get("peer_ratios") or []
    if rows:
        node = results["peers"][RS].get("node", "")
        add("## Against resumable-stream\n")
        add(
            "Vercel's [`resumable-stream`](https://www.npmjs.com/package/resumable-stream) "
            "(what an AI SDK app uses to resume a chat answer) in a small Node server "
            "([`peers/resumable_stream/server.mjs`](../../loadtests/peers/resumable_stream/"
            f"server.mjs), Node {node}, packages pinned in its `package-lock.json`), on the "
            "same redis-server build and the same Python viewers. It keeps a running stream's "
            "chunks in the producing process's memory and touches Redis once per chunk per "
            "resumed listener (Pub/Sub); the gateway writes every event to a Redis Stream. "
            f"Publish: {cfg.peer_events:,} events over {cfg.peer_streams} streams at once, one "
            "event at a time (the gateway: the Publisher, one event per call, "
            f"{cfg.peer_streams} callers). Reattach: a stream with {cfg.peer_backlog:,} events "
            "produced and still running, read from its start by a new SSE client (median of "
            f"{cfg.peer_reps}); then the same after the stream ended.\n"
        )
        add("| row | gateway | resumable-stream | gateway advantage |")
        add("| --- | ---: | ---: | ---: |")
        for r in rows:
            if r["ratio"] is None and "gateway_text" in r:
                add(
                    f"| {r['metric']} | {r['gateway_text']} | {r[RS + '_text']} | "
                    "only the gateway can |"
                )
                continue
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            add(
                f"| {r['metric']} | {_fmt(r['gateway'], r['unit'])} | "
                f"{_fmt(r[RS], r['unit'])} | {ratio} |"
            )
        add("")
        if "peers.png" in data["plots"]:
            add("![peers](peers.png)\n")
    live = results.get("live")
    if live:
        add("## Live viewers\n")
        add(
            f"{live['viewers']:,} viewers over {live['sessions']:,} sessions of one gateway "
            f"process, {live['rate']:,.0f} events/s in all for {live['seconds']:g} s, viewers "
            f"in {live['load_processes']} load processes on source addresses 127.0.0.2 to "
            f"127.0.0.{1 + live['load_processes']}: p50 **{live['p50_ms']:.2f} ms**, p99 "
            f"**{live['p99_ms']:.2f} ms**, p99.9 {live['p999_ms']:.2f} ms, max "
            f"{live['max_ms']:.1f} ms over {live['n']:,} deliveries (missing "
            f"{live['missing']}, gaps {live['gaps']}, duplicates {live['duplicates']}); "
            f"viewers refused at open {live.get('failed_opens', 0):,}"
            + (f" (e.g. `{live['open_errors'][0]}`)" if live.get("open_errors") else "")
            + f", streams ended by the server {live.get('ended_streams', 0):,}, "
            f"'No connection available' in its log {live.get('log_no_connection', 0):,} times; "
            f"server CPU {live['server_cpu']:.0%}, RSS +{live['rss_per_viewer_kib']:.1f} KiB "
            f"per viewer, {live['redis_clients']} Redis connections.\n"
        )
    cores = results.get("cores")
    if cores:
        add("## Cores\n")
        add(
            f"`gateway serve --workers 2` against `--workers 1`, fan-out of one session to "
            f"{cores['1']['viewers']} viewers, the publisher as fast as it goes "
            f"({cores['cpus']} CPUs, shared with the load generator, the publisher and "
            f"redis-server): {cores['1']['deliveries_per_s']:,.0f} → "
            f"{cores['2']['deliveries_per_s']:,.0f} deliveries/s, **{cores['ratio']:.2f}x** "
            f"(server CPU {cores['1']['server_cpu']:.0%} → {cores['2']['server_cpu']:.0%}; "
            f"published {cores['1']['publish_rate']:,.0f} and {cores['2']['publish_rate']:,.0f} "
            f"events/s, so a viewer that kept up would get that many deliveries/s).\n"
        )
    scale = results.get("scale")
    if scale and scale.get("levels"):
        add("## Scale: idle viewers on one process\n")
        add(
            f"Idle viewers (`{scale.get('kind', '')}`, heartbeat every "
            f"{scale['heartbeat_s']:g} s), one gateway process; RSS per viewer above the same "
            "process before any viewer.\n"
        )
        add(
            "| viewers | RSS per viewer | RSS | Redis connections (max) | heartbeat late "
            "p50 / p99 / max | ended streams |"
        )
        add("| ---: | ---: | ---: | ---: | --- | ---: |")
        for lv in scale["levels"]:
            add(
                f"| {lv['viewers']:,} | {lv['rss_per_viewer_kib']:.1f} KiB | "
                f"{lv['rss'] / 2**20:.0f} MiB | {lv['redis_clients_max']} | "
                f"{lv['hb_late_p50_ms']:.0f} / {lv['hb_late_p99_ms']:.0f} / "
                f"{lv['hb_late_max_ms']:.0f} ms | {lv.get('ended_streams', 0)} |"
            )
        add("")
    note = (scale or live or {}).get("rlimit_nofile_hard")
    if note:
        ex = (scale or {}).get("extrapolated")
        add(
            f"**50,000 viewers per process**: not measurable on this machine: its "
            f"RLIMIT_NOFILE hard limit is {note:,} and cannot be raised here, so one process "
            f"holds at most about {note - 500:,} sockets."
            + (
                f" A straight line through the measured levels gives "
                f"{ex['slope_kib_per_viewer']:.1f} KiB per viewer and "
                f"{ex['rss_mib']:,.0f} MiB of RSS at 50,000"
                + (
                    f", {ex['rss_per_viewer_kib']:.1f} KiB per viewer above the empty process"
                    if ex.get("rss_per_viewer_kib")
                    else ""
                )
                + " (extrapolated, not measured)."
                if ex
                else ""
            )
            + "\n"
        )
    for name in ("scale-memory.png", "scale-latency.png"):
        if name in data["plots"]:
            add(f"![{name}]({name})\n")
    return L


def plots(results: dict[str, Any], cfg: Config, out: Path, desc: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtests.bench import COLOR

    names: list[str] = []

    def finish(fig: Any, name: str) -> None:
        fig.text(0.01, 0.005, "Machine: " + desc, fontsize=6, color="#555555", wrap=True)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

    peers = results.get("peers") or {}
    if "gateway" in peers and RS in peers:
        g, p = peers["gateway"], peers[RS]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        panels = (
            (
                "publish (events/s)",
                [g["publish"]["rate"], g["publish_followed"]["rate"]],
                [p["publish"]["rate"], p["publish_followed"]["rate"]],
                ["alone", "followed"],
            ),
            (
                "reattach, running: first event (ms)",
                [g["reattach_running"]["first_ms"]],
                [p["reattach_running"]["first_ms"]],
                ["first event"],
            ),
            (
                "reattach, running: replay (events/s)",
                [g["reattach_running"]["events_per_s"]],
                [p["reattach_running"]["events_per_s"]],
                ["replay"],
            ),
        )
        for ax, (title, gv, pv, ticks) in zip(axes, panels, strict=True):
            xs = range(len(ticks))
            for off, vals, s in ((-0.2, gv, "gateway"), (0.2, pv, RS)):
                b = ax.bar([x + off for x in xs], vals, 0.4, color=COLOR[s], label=s)
                ax.bar_label(
                    b, labels=[f"{v:,.1f}" if v < 100 else f"{v:,.0f}" for v in vals], fontsize=7
                )
            ax.set_xticks(list(xs))
            ax.set_xticklabels(ticks)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"gateway vs resumable-stream (after the stream ended: resumable-stream answers "
            f"HTTP {p['reattach_ended']['status']})",
            fontsize=9,
        )
        finish(fig, "peers.png")

    scale, live = results.get("scale") or {}, results.get("live")
    levels = scale.get("levels") or []
    if levels or live:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        if levels:
            xs = [lv["viewers"] for lv in levels]
            axes[0].plot(
                xs,
                [lv["rss_per_viewer_kib"] for lv in levels],
                "o-",
                color=COLOR["gateway"],
                label="idle viewers (scale phase)",
            )
            axes[1].plot(
                xs,
                [lv["rss"] / 2**20 for lv in levels],
                "o-",
                color=COLOR["gateway"],
                label="idle viewers (measured)",
            )
            ex = scale.get("extrapolated")
            if ex:
                x0, y0 = xs[-1], levels[-1]["rss"] / 2**20
                axes[1].plot(
                    [x0, ex["viewers"]],
                    [y0, ex["rss_mib"]],
                    "--",
                    color=COLOR["gateway"],
                    label="extrapolated",
                )
                if ex.get("rss_per_viewer_kib"):
                    axes[0].plot(
                        [ex["viewers"]],
                        [ex["rss_per_viewer_kib"]],
                        "o",
                        mfc="none",
                        color=COLOR["gateway"],
                        label="50,000 (extrapolated)",
                    )
        idle = (results.get("gateway") or {}).get("idle") or {}
        pts = [(int(k), v["rss_per_viewer_kib"]) for k, v in idle.items() if k.isdigit()]
        if pts:
            axes[0].plot(
                *zip(*sorted(pts), strict=True),
                "s",
                color="#aec7e8",
                label="idle viewers (systems phase, 15 s heartbeat)",
            )
        if live:
            axes[0].plot(
                [live["viewers"]],
                [live["rss_per_viewer_kib"]],
                "D",
                color="#ff7f0e",
                label="live viewers (live phase)",
            )
            axes[1].plot(
                [live["viewers"]],
                [live["rss_live"] / 2**20],
                "D",
                color="#ff7f0e",
                label="live viewers",
            )
        axes[0].axhline(20, color="black", ls=":", lw=1, label="target ≤ 20 KiB")
        hard = (scale or live or {}).get("rlimit_nofile_hard")
        for ax in axes:
            if hard:
                ax.axvline(
                    hard - 500,
                    color="#d62728",
                    ls=":",
                    lw=1,
                    label=f"RLIMIT_NOFILE {hard:,}: one process's limit here",
                )
            ax.set_xlabel("viewers on one gateway process")
            ax.set_xlim(0, 52_000)  # the target's range: 1k to 50k viewers
            ax.axvline(50_000, color="black", ls=":", lw=1)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("RSS per viewer (KiB)")
        axes[0].set_title("memory per viewer")
        axes[1].set_ylabel("gateway RSS (MiB)")
        axes[1].set_title("memory of the process")
        finish(fig, "scale-memory.png")

    lat = (results.get("gateway") or {}).get("latency") or {}
    if live or levels:
        fig, axes = plt.subplots(1, 2 if levels else 1, figsize=(11 if levels else 6.5, 4.2))
        ax0 = axes[0] if levels else axes
        for key, style, color in (("p50_ms", "o", "#1f77b4"), ("p99_ms", "s", "#ff7f0e")):
            name = key.replace("_ms", "")
            pts = sorted((int(v), r[key]) for v, r in lat.items())
            if pts:
                ax0.plot(
                    *zip(*pts, strict=True),
                    style + "-",
                    color=color,
                    label=f"{name}, systems phase",
                )
            if live:
                ax0.plot(
                    [live["viewers"]],
                    [live[key]],
                    style,
                    color=color,
                    markersize=10,
                    markeredgecolor="black",
                    label=f"{name}, live phase",
                )
        ax0.axhline(50, color="black", ls=":", lw=1, label="target p99 ≤ 50 ms (10k live)")
        ax0.set_xscale("log")
        ax0.set_yscale("log")
        ax0.set_xlabel("live viewers on one gateway process")
        ax0.set_ylabel("publish→SSE latency (ms)")
        ax0.set_title("latency against viewers")
        ax0.grid(True, which="both", alpha=0.3)
        ax0.legend(fontsize=7)
        if levels:
            xs = [lv["viewers"] for lv in levels]
            axes[1].plot(xs, [lv["hb_late_p99_ms"] for lv in levels], "o-", label="p99")
            axes[1].plot(xs, [lv["hb_late_max_ms"] for lv in levels], "^-", label="max")
            axes[1].axhline(1000, color="black", ls=":", lw=1, label="target p99 ≤ 1 s")
            axes[1].set_xlabel("idle viewers on one gateway process")
            axes[1].set_ylabel("heartbeat lateness (ms)")
            axes[1].set_title("heartbeats against viewers")
            axes[1].grid(True, alpha=0.3)
            axes[1].legend(fontsize=7)
        finish(fig, "scale-latency.png")
    return names
