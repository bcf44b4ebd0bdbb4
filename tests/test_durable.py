"""The Durable Store conformance suite against the gateway's ``/ds`` endpoint.

The judge is the npm package ``@durable-streams/server-conformance-tests`` 0.3.6 (pinned with
vitest in ``tests/durable/package.json`` and ``package-lock.json``). ``npm ci`` installs it
into ``tests/durable/node_modules`` (git-ignored) when that is missing or older than the lock
file; ``npx vitest run`` then runs ``tests/durable/conformance.test.mjs``, which calls the
package's ``runConformanceTests({ baseUrl })`` against a real gateway on a real Redis. Every
non-skipped test must pass (the suite skips its 6 optional subscription tests), in three
setups:

- ``single``: one gateway on one redis-server;
- ``cluster``: one gateway on a 6-node Redis Cluster (sharded Pub/Sub, one slot per stream);
- ``replicas``: two gateways behind nginx (``tests/lb.py``) that sends every GET and HEAD to
  one replica and every other request to the other, so each write is read back (catch-up,
  long-poll and SSE) on the replica that did not take it.

Skipped, with the reason, only when ``npm`` is not installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.api.auth import mint
from tests.cluster import RedisCluster
from tests.support import ROOT, Gateway, RedisServer

SUITE_DIR = ROOT / "tests" / "durable"
NPM = shutil.which("npm")
NPX = shutil.which("npx")
LONG_POLL_S = 3  # the gateway's long-poll timeout in these runs (the suite waits for it)
SUITE_TIMEOUT_S = 900
OPTIONAL_SKIPS = 6  # the suite's optional subscription tests

needs_npm = pytest.mark.skipif(
    NPM is None or NPX is None,
    reason="npm/npx not installed: the Durable Store conformance suite is an npm package",
)
pytestmark = pytest.mark.timeout(SUITE_TIMEOUT_S + 300)

# GETs and HEADs to the "readers" replica, everything else to the "writers" one. The first
# upstream's servers are replaced by tests.lb.render_nginx_conf (as in deploy/nginx.conf).
SPLIT_NGINX_CONF = """
events {}

http {
    upstream writers {
        server 127.0.0.1:1 max_fails=1 fail_timeout=2s;
        keepalive 16;
    }

    upstream readers {
        server 127.0.0.1:@READER_PORT@ max_fails=1 fail_timeout=2s;
        keepalive 16;
    }

    map $request_method $ds_upstream {
        GET readers;
        HEAD readers;
        default writers;
    }

    server {
        listen 8080;

        location / {
            proxy_pass http://$ds_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            client_max_body_size 16m;
        }
    }
}
"""


@dataclass
class SuiteResult:
    """Counts from vitest's JSON report, and the failures' names and first messages."""

    total: int
    passed: int
    failed: int
    skipped: int
    seconds: float
    failures: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        """One line of counts for the test output."""
        return (
            f"durable streams conformance [{name}]: {self.passed} passed, {self.failed} failed, "
            f"{self.skipped} skipped of {self.total} in {self.seconds:.1f} s"
        )


def _lock_digest() -> str:
    return hashlib.sha256((SUITE_DIR / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def suite_installed() -> Path:
    """``npm ci`` into tests/durable/node_modules unless it matches the lock file already."""
    stamp = SUITE_DIR / "node_modules" / ".gateway-lock-sha256"
    digest = _lock_digest()
    if not stamp.exists() or stamp.read_text() != digest:
        assert NPM is not None
        proc = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SUITE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
        stamp.write_text(digest)
    return SUITE_DIR


def run_suite(base_url: str) -> SuiteResult:
    """Run the conformance suite against ``base_url`` (the /ds endpoint) with vitest."""
    assert NPX is not None
    with tempfile.TemporaryDirectory(prefix="gw-ds-") as tmp:
        report = Path(tmp) / "report.json"
        env = {
            **os.environ,
            "DS_BASE_URL": base_url,
            "DS_LONG_POLL_MS": str(LONG_POLL_S * 1000),
            "CI": "1",
        }
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                NPX,
                "--no-install",
                "vitest",
                "run",
                "--reporter=dot",
                "--reporter=json",
                f"--outputFile.json={report}",
            ],
            cwd=SUITE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_S,
        )
        seconds = time.monotonic() - t0
        if not report.exists():
            raise AssertionError(f"vitest wrote no report:\n{proc.stdout[-4000:]}\n{proc.stderr}")
        data = json.loads(report.read_text())
    failures = [
        f"{t.get('fullName')}: {(t.get('failureMessages') or [''])[0][:400]}"
        for file in data.get("testResults", [])
        for t in file.get("assertionResults", [])
        if t.get("status") == "failed"
    ]
    return SuiteResult(
        total=data["numTotalTests"],
        passed=data["numPassedTests"],
        failed=data["numFailedTests"],
        skipped=data["numPendingTests"] + data.get("numTodoTests", 0),
        seconds=seconds,
        failures=failures,
    )


def _check(name: str, result: SuiteResult, *logs: str) -> None:
    print("\n" + result.summary(name))
    for failure in result.failures:
        print("  FAILED", failure)
    tail = "\n".join(text[-3000:] for text in logs if text)
    assert result.failed == 0 and result.passed > 0, (
        f"{result.summary(name)}\n" + "\n".join(result.failures) + f"\n--- gateway logs\n{tail}"
    )
    # Exactly the suite's optional subscription tests are skipped: a new skip is a hole.
    assert result.skipped == OPTIONAL_SKIPS, result.summary(name)


SETTINGS = {"ds_long_poll_timeout": LONG_POLL_S}


@pytest.fixture
def single(redis_server: RedisServer) -> Iterator[Gateway]:
    """One gateway on the session's redis-server."""
    gw = Gateway(redis_server.url, **SETTINGS)
    yield gw
    gw.stop()


@needs_npm
def test_conformance_single_redis(suite_installed: Path, single: Gateway) -> None:
    """One gateway on one redis-server: every non-skipped test passes."""
    result = run_suite(single.url + "/ds")
    _check("single", result, single.output())


@needs_npm
def test_conformance_redis_cluster(suite_installed: Path, redis_cluster: RedisCluster) -> None:
    """One gateway on a 6-node Redis Cluster: every non-skipped test passes."""
    gw = Gateway(redis_cluster.url, **SETTINGS)
    try:
        result = run_suite(gw.url + "/ds")
    finally:
        gw.stop()
    _check("cluster", result, gw.output())


@needs_npm
def test_conformance_two_replicas(suite_installed: Path, redis_server: RedisServer) -> None:
    """Two gateways behind nginx, writes on one and reads (GET, HEAD) on the other."""
    try:
        from tests.lb import NGINX, Nginx
    except ImportError as exc:  # tests/lb.py belongs to the replica tests
        pytest.skip(f"tests/lb.py (nginx harness) is not available: {exc}")
    if shutil.which(NGINX) is None:
        pytest.skip("nginx is not installed")
    writer = Gateway(redis_server.url, **SETTINGS)
    reader = Gateway(redis_server.url, **SETTINGS)
    conf = Path(tempfile.mkdtemp(prefix="gw-ds-nginx-")) / "split.conf"
    conf.write_text(SPLIT_NGINX_CONF.replace("@READER_PORT@", str(reader.port)))
    lb = None
    try:
        lb = Nginx([writer.port], conf=conf)
        result = run_suite(lb.url + "/ds")
        writes = _requests(writer)
        reads = _requests(reader)
    finally:
        if lb is not None:
            lb.stop()
        writer.stop()
        reader.stop()
        shutil.rmtree(conf.parent, ignore_errors=True)
    _check("replicas", result, writer.output(), reader.output())
    print(f"  requests served: writer replica {writes}, reader replica {reads}")
    assert set(writes) <= {"PUT", "POST", "DELETE", "OPTIONS"}, writes
    assert set(reads) <= {"GET", "HEAD"}, reads


def _requests(gw: Gateway) -> dict[str, int]:
    """Durable Store requests this replica served, by method (from /metrics)."""
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("gateway_ds_requests_total{"):
            method = line.split('method="', 1)[1].split('"', 1)[0]
            out[method] = out.get(method, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


# --- what the suite does not cover -------------------------------------------------------------
SECRET = "ds-test-secret-" + "x" * 32


def test_tokens_guard_the_endpoint(redis_server: RedisServer) -> None:
    """With a token key, /ds needs a bearer token: ``view`` reads, ``publish`` writes, on
    stream paths matching the token's ``sessions`` patterns."""
    gw = Gateway(redis_server.url, jwt_secret=SECRET)
    url = gw.url + "/ds/v1/stream/guarded-" + secrets.token_hex(4)
    writer = mint(SECRET, "w", sessions=["/v1/stream/*"], actions=["view", "publish"])
    reader = mint(SECRET, "r", sessions=["/v1/stream/*"], actions=["view"])
    other = mint(SECRET, "o", sessions=["/v1/other/*"], actions=["view", "publish"])
    try:
        with httpx.Client(timeout=10) as c:
            assert c.put(url, headers={"Content-Type": "text/plain"}).status_code == 401
            r = c.head(url)
            assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
            put = c.put(url, headers={"Content-Type": "text/plain", **_bearer(writer)})
            assert put.status_code == 201
            post = c.post(
                url, content=b"hi", headers={"Content-Type": "text/plain", **_bearer(reader)}
            )
            assert post.status_code == 403
            assert c.get(url, headers=_bearer(other)).status_code == 403
            c.post(url, content=b"hi", headers={"Content-Type": "text/plain", **_bearer(writer)})
            got = c.get(url, params={"offset": "-1", "access_token": reader})
            assert got.status_code == 200 and got.text == "hi"
            assert c.options(url).status_code == 204  # CORS preflights carry no token
    finally:
        gw.stop()


def test_soft_deleted_source_goes_when_its_fork_expires(redis_server: RedisServer) -> None:
    """Redis key expiry tells nobody: a source kept (410) for a fork whose TTL ran out is
    collected on its next request, and answers 404 from then on."""
    gw = Gateway(redis_server.url)
    base = gw.url + "/ds/v1/stream/gc-" + secrets.token_hex(4)
    text = {"Content-Type": "text/plain"}
    try:
        with httpx.Client(timeout=10) as c:
            assert c.put(base + "-src", headers=text, content=b"data").status_code == 201
            fork = {**text, "Stream-Forked-From": "/v1/stream/" + base.rsplit("/", 1)[1] + "-src"}
            assert c.put(base + "-fork", headers={**fork, "Stream-TTL": "1"}).status_code == 201
            assert c.delete(base + "-src").status_code == 204
            assert c.head(base + "-src").status_code == 410
            assert c.get(base + "-fork", params={"offset": "-1"}).text == "data"
            time.sleep(1.5)
            assert c.head(base + "-fork").status_code == 404
            assert c.head(base + "-src").status_code == 404
            assert redis_server.cli("KEYS", "gw:{ds:/v1/stream/gc-*").strip() == ""
    finally:
        gw.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_appends_survive_an_emptied_script_cache(redis_server: RedisServer) -> None:
    """Appends go out in shared pipelines (EVALSHA); after SCRIPT FLUSH (a Redis restarted
    without its script cache) concurrent appends still land, once each."""
    gw = Gateway(redis_server.url)
    url = gw.url + "/ds/v1/stream/noscript-" + secrets.token_hex(4)
    text = {"Content-Type": "text/plain"}
    try:
        with httpx.Client(timeout=10) as c:
            assert c.put(url, headers=text, content=b"a").status_code == 201
            redis_server.cli("SCRIPT", "FLUSH")

        async def appends() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as ac:
                replies = await asyncio.gather(
                    *(ac.post(url, headers=text, content=b"x") for _ in range(20))
                )
            return [r.status_code for r in replies]

        assert asyncio.run(appends()) == [204] * 20
        with httpx.Client(timeout=10) as c:
            assert c.get(url, params={"offset": "-1"}).text == "a" + "x" * 20
    finally:
        gw.stop()
