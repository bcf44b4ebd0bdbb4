"""``python -m loadtests.bench --quick``: the benchmark runs end to end on real processes and
writes every metric, the resumable-stream peer and the Durable Streams reference server
included (they need Node and npm: without them the run fails, it is not skipped). Targets
are not asserted here (timed asserts are flaky on a shared machine); the full run documents
them in docs/benchmarks/README.md."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server on the PATH"
)
pytest.importorskip("matplotlib", reason="pip install -e '.[bench]'")

PLOTS = (
    "latency.png",
    "latency-cdf.png",
    "fanout.png",
    "idle.png",
    "reattach.png",
    "publish.png",
    "peers.png",
)


def test_quick_bench_writes_every_metric(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())

    metrics = data["metrics"]
    systems = ("gateway", "xread", "channels")
    for s in systems:
        for name in (
            "publish.single_events_per_s",
            "fanout.deliveries_per_s",
            "reattach.first_ms",
            "reattach.backlog_ms",
        ):
            assert f"{s}.{name}" in metrics
        for v in data["meta"]["config"]["latency_viewers"]:
            assert f"{s}.latency.{v}.p50_ms" in metrics
            assert f"{s}.latency.{v}.p99_ms" in metrics
        for n in data["meta"]["config"]["idle_viewers"]:
            assert f"{s}.idle.{n}.rss_per_viewer_kib" in metrics
            assert f"{s}.idle.{n}.redis_clients" in metrics
    for name in (
        "gateway.publish.batch_events_per_s",
        "gateway.publish.raw_pipeline_events_per_s",
        "gateway.publish.ratio_to_raw_pipeline",
        "raw.fanout.deliveries_per_s",
        "gateway.fanout.ratio_to_raw",
    ):
        assert name in metrics
    for s in ("gateway", "resumable-stream"):
        for name in (
            "publish_events_per_s",
            "publish_followed_events_per_s",
            "reattach_running.first_ms",
            "reattach_running.all_ms",
            "reattach_running.events_per_s",
        ):
            assert f"peers.{s}.{name}" in metrics
    peers = data["results"]["peers"]
    for s in ("gateway", "resumable-stream"):
        r = peers[s]["reattach_running"]
        assert (r["gaps"], r["duplicates"]) == (0, 0), (s, r)
    # After the stream ended the gateway replays it; resumable-stream's answer is recorded.
    assert peers["gateway"]["reattach_ended"]["status"] == 200
    assert peers["resumable-stream"]["reattach_ended"]["answer"]
    assert len(data["peer_ratios"]) == 6
    bad = {
        k: v
        for k, v in metrics.items()
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0
    }
    assert not bad, f"metrics that are not positive numbers: {bad}"

    # Every delivery was checked: nothing missing, no gap, no duplicate, in any system.
    for s in systems:
        for v, r in data["results"][s]["latency"].items():
            assert (r["missing"], r["gaps"], r["duplicates"]) == (0, 0, 0), (s, v, r)

    # Durable Streams: the gateway's /ds and the Node reference server, every message seen.
    for server in ("gateway", "reference"):
        for name in ("appends_per_s", "sse_p50_ms", "sse_p99_ms"):
            assert f"durable.{server}.{name}" in metrics
        d = data["results"]["durable"]["summary"][server]
        assert (d["deliveries"], d["gaps"]) == (d["expected"], 0), (server, d)
    # p50 and p99 against the best baseline per viewer count, 7 of the gateway alone, 2 of
    # Durable Streams
    assert len(data["targets"]) == 2 * len(data["meta"]["config"]["latency_viewers"]) + 7 + 2
    assert all(isinstance(t["met"], bool) for t in data["targets"])
    assert {r["metric"] for r in data["ratios"]}
    for plot in PLOTS:
        assert (tmp_path / plot).stat().st_size > 10_000, plot
    readme = (tmp_path / "README.md").read_text()
    assert "XREAD per viewer" in readme and "Litestar channels" in readme
    assert data["meta"]["machine_text"] in readme
