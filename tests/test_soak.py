"""The connection-leak soak as a test: 60 s of Locust load on two gateway replicas (viewers
switching sessions, stream churn with clean and aborted drops, publishers), then every open
stream, hub channel, Redis connection, file descriptor and the RSS back to the warmed-up
baseline, and no gap or duplicate. See docs/loadtests.md.

It runs ``python -m loadtests.soak`` as a subprocess (its own redis-server, gateways, worker
and Locust process on free loopback ports) and takes about 85 s. Deselect it with
``-m "not soak"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT

# A modest load: 2 cores, and other suites may run at the same time.
SOAK_ARGS = ["--duration", "60", "--users", "20", "--spawn-rate", "10", "--warmup", "15"]


@pytest.mark.soak
@pytest.mark.timeout(240)
def test_soak_leaves_nothing_behind(tmp_path: Path) -> None:
    result_path = tmp_path / "soak.json"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.soak", *SOAK_ARGS, "--json", str(result_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output = []
    try:
        for line in proc.stdout:  # progress as it comes (visible with -s)
            output.append(line)
            print(line, end="", flush=True)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # interrupted (timeout, Ctrl-C): the soak stops its stack
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    elapsed = time.monotonic() - t0
    print(f"soak test took {elapsed:.0f} s")
    text = "".join(output)
    assert result_path.exists(), f"no result written (exit code {rc}):\n{text[-4000:]}"
    result = json.loads(result_path.read_text())
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    verdict = text[text.find("\ncheck ") :] if "\ncheck " in text else text[-4000:]
    assert result["verdict"] == "PASS" and rc == 0, f"failed: {failed}\n{verdict}"
