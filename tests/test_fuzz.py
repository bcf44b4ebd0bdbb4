"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis: no 5xx, no hang.

Runs the schemathesis CLI (its pytest plugin does not load under pytest 9) against a real
gateway process on real Redis, in deterministic mode so a CI run is repeatable. SSE reads
(tagged ``sse``) are left out: their responses never end by design (their input checks are in
test_scenarios). Every other operation, publishing included, gets generated paths, queries and
bodies from its declared schema through the coverage, fuzzing and stateful phases.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
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
    generated, passed = schemathesis_run(fuzz_gateway.url, "--exclude-tag", "sse")
    print(f"\nschemathesis: {generated} cases generated, {passed} passed (no 5xx, no hang)")
    assert generated == passed and generated > 100


def test_openapi_describes_every_request_and_response_body(fuzz_gateway: Gateway) -> None:
    """Every operation that takes a body declares it, and every JSON response has a schema."""
    schema = httpx.get(fuzz_gateway.url + "/schema/openapi.json", timeout=10).json()
    bodies, untyped = [], []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if method in ("post", "put") and path.startswith("/v1"):
                content = op.get("requestBody", {}).get("content", {})
                (bodies if "application/json" in content else untyped).append(f"{method} {path}")
            for status, resp in op.get("responses", {}).items():
                media = resp.get("content", {})
                if status.startswith("2") and "application/json" in media:
                    assert media["application/json"].get("schema"), (method, path, status)
    print(f"\nOpenAPI: {len(bodies)} request bodies described: {sorted(bodies)}")
    # The writes without a body: creating a mux, cancelling a run, stopping a chat.
    assert sorted(untyped) == [
        "post /v1/chat/{session_id}/stop",
        "post /v1/mux",
        "post /v1/sessions/{session_id}/runs/{run_id}/cancel",
    ]
    assert "post /v1/sessions/{session_id}/events" in bodies and len(bodies) == 11
    assert "post /v1/sessions/{session_id}/agui" in bodies  # RunAgentInput (AG-UI)
    assert "post /v1/sessions/{session_id}/agui/events" in bodies
    assert "post /v1/chat" in bodies
