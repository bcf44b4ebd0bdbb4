"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis: no 5xx, no hang.

Runs the schemathesis CLI (its pytest plugin does not load under pytest 9) against a real
gateway process on real Redis, in deterministic mode so a CI run is repeatable. SSE reads are
left out (their responses never end by design; their input checks are in test_scenarios), and
so is publishing, whose body is not described by the schema (its limits are tested in
test_commands); every other operation gets generated paths, queries and bodies through the
coverage, fuzzing and stateful phases.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Gateway, RedisServer

ST = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzz_gateway(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(redis_server.url, key_prefix="fuzz")
    yield gw
    gw.stop()


def schemathesis_run(url: str, *selection: str) -> tuple[int, int]:
    out = subprocess.run(
        [
            str(ST),
            "run",
            url + "/schema/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "50",
            "--request-timeout",
            "10",
            "--generation-deterministic",
            "--no-color",
            *selection,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert out.returncode == 0 and summary, out.stdout[-4000:] + out.stderr[-2000:]
    return int(summary.group(1)), int(summary.group(2))


@pytest.mark.skipif(not ST.exists(), reason="schemathesis is not installed in this venv")
def test_no_server_errors_and_no_hangs(fuzz_gateway: Gateway) -> None:
    generated, passed = schemathesis_run(
        fuzz_gateway.url, "--exclude-path-regex", r"(/events|/v1/activity)$"
    )
    print(f"\nschemathesis: {generated} cases generated, {passed} passed (no 5xx, no hang)")
    assert generated == passed and generated > 100
