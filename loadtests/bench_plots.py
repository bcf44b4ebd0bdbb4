"""Plots of the benchmark's systems phase (``loadtests/bench.py``): latency against viewers,
the latency distribution, fan-out, idle memory and Redis connections, reattach and publish
throughput, as PNGs into the output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.bench import COLOR, LABEL, SYSTEMS, Config


def plots(results: dict[str, Any], cfg: Config, out: Path, desc: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    footer = "Machine: " + desc

    def finish(fig: Any, name: str) -> None:
        fig.text(0.01, 0.005, footer, fontsize=6, color="#555555", wrap=True, va="bottom")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

    # latency vs viewers
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for s in SYSTEMS:
        xs = list(cfg.latency_viewers)
        for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            ys = [results[s]["latency"][str(v)][key] for v in xs]
            ax.plot(xs, ys, "o-", color=COLOR[s], label=LABEL[s])
    for ax, key, target in zip(axes, ("p50", "p99"), (3, 15), strict=True):
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target {key} ≤ {target} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"viewers ({cfg.sessions} sessions, {cfg.rate:,.0f} events/s in all)")
        ax.set_ylabel(f"publish→SSE latency {key} (ms)")
        ax.set_title(f"latency {key}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    finish(fig, "latency.png")

    # latency distribution at the largest viewer count
    top = str(cfg.latency_viewers[-1])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in SYSTEMS:
        q = results[s]["latency"][top]["quantiles"]
        if q:
            ax.plot(q, range(len(q)), color=COLOR[s], label=LABEL[s])
    ax.set_xscale("log")
    ax.set_xlabel("publish→SSE latency (ms)")
    ax.set_ylabel("percentile")
    ax.set_title(f"latency distribution at {int(top):,} viewers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    finish(fig, "latency-cdf.png")

    # fan-out
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = [*SYSTEMS, "raw"]
    vals = [results[s]["fanout"]["deliveries_per_s"] for s in order]
    bars = ax.bar([LABEL[s] for s in order], vals, color=[COLOR[s] for s in order])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax.axhline(50_000, color="black", ls=":", lw=1, label="target ≥ 50,000/s")
    raw = results["raw"]["fanout"]["deliveries_per_s"]
    ax.axhline(0.6 * raw, color="#7f7f7f", ls="--", lw=1, label="target ≥ 60% of raw")
    ax.set_ylabel("event deliveries per second")
    ax.set_title(f"fan-out: one session, {cfg.fanout_viewers} viewers, one process")
    ax.legend(fontsize=8)
    finish(fig, "fanout.png")

    # RSS per idle viewer and Redis connections
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.8 / 4
    for i, s in enumerate(order):
        xs = [k + i * width for k in range(len(cfg.idle_viewers))]
        ys = [results[s]["idle"][str(n)]["rss_per_viewer_kib"] for n in cfg.idle_viewers]
        b = axes[0].bar(xs, ys, width, color=COLOR[s], label=LABEL[s])
        axes[0].bar_label(b, labels=[f"{y:.0f}" for y in ys], fontsize=7)
    axes[0].axhline(32, color="black", ls=":", lw=1, label="target ≤ 32 KiB")
    axes[0].set_xticks([k + 1.5 * width for k in range(len(cfg.idle_viewers))])
    axes[0].set_xticklabels([f"{n:,} viewers" for n in cfg.idle_viewers])
    axes[0].set_ylabel("RSS per idle viewer (KiB)")
    axes[0].set_title("memory per idle viewer")
    axes[0].legend(fontsize=8)
    width = 0.8 / 3
    for i, s in enumerate(SYSTEMS):
        xs = [k + i * width for k in range(len(cfg.idle_viewers))]
        ys = [max(results[s]["idle"][str(n)]["redis_clients"], 0.5) for n in cfg.idle_viewers]
        b = axes[1].bar(xs, ys, width, color=COLOR[s], label=LABEL[s])
        axes[1].bar_label(b, labels=[f"{y:.0f}" for y in ys], fontsize=7)
    axes[1].axhline(8, color="black", ls=":", lw=1, label="target ≤ 8")
    axes[1].set_yscale("log")
    axes[1].set_xticks([k + width for k in range(len(cfg.idle_viewers))])
    axes[1].set_xticklabels([f"{n:,} viewers" for n in cfg.idle_viewers])
    axes[1].set_ylabel("Redis client connections of the process")
    axes[1].set_title("Redis connections")
    axes[1].legend(fontsize=8)
    finish(fig, "idle.png")

    # reattach
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, target, title in (
        (axes[0], "first_ms", 20, "time to the first replayed event"),
        (axes[1], "all_ms", 500, f"time to the end of a {cfg.backlog:,}-event backlog"),
    ):
        labels, vals, colors = [], [], []
        for s in SYSTEMS:
            r = results[s]["reattach"]
            for variant in ("connection", "last_event_id"):
                if variant in r:
                    tag = (
                        ""
                        if s != "gateway"
                        else (" (stored offset)" if variant == "connection" else " (Last-Event-ID)")
                    )
                    labels.append(LABEL[s] + tag)
                    vals.append(r[variant][key])
                    colors.append(COLOR[s])
        b = ax.bar(labels, vals, color=colors)
        ax.bar_label(b, labels=[f"{v:.1f}" if v < 100 else f"{v:,.0f}" for v in vals], fontsize=8)
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target ≤ {target} ms")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.legend(fontsize=8)
    finish(fig, "reattach.png")

    # publish throughput
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, vals, colors = [], [], []
    g = results["gateway"]["publish"]
    for key, label, s in (
        ("batch", f"Publisher, batches of {cfg.publish_batch}", "gateway"),
        ("raw_pipeline", f"raw XADD, pipelines of {cfg.publish_batch}", "raw"),
        ("single", f"Publisher, 1 per call x{cfg.publish_concurrency}", "gateway"),
        ("raw_single", f"raw XADD, 1 per call x{cfg.publish_concurrency}", "raw"),
    ):
        labels.append(label)
        vals.append(g[key]["rate"])
        colors.append(COLOR[s])
    for s in ("xread", "channels"):
        labels.append(f"{LABEL[s]}, 1 per call x{cfg.publish_concurrency}")
        vals.append(results[s]["publish"]["single"]["rate"])
        colors.append(COLOR[s])
    b = ax.barh(labels, vals, color=colors)
    ax.bar_label(b, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("events per second (one publisher process)")
    ax.set_title("publish throughput")
    ax.tick_params(axis="y", labelsize=8)
    finish(fig, "publish.png")
    return names
