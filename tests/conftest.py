"""Fixtures: one real redis-server (and, for the modules in CLUSTER_MODULES, also a real
6-node Redis Cluster) for the session, two gateway replicas, a publisher.

``backend`` is the Redis the gateways, the ``store`` and the publisher use. It is a single node, except
in CLUSTER_MODULES, whose tests run twice: ``[single]`` and ``[cluster]``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial

import httpx
import pytest
import pytest_asyncio
from _pytest.reports import TestReport

from gateway.agent.publisher import Publisher
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.cluster import RedisCluster
from tests.support import Gateway, RedisServer

# Fast heartbeats and commits so timing-related scenarios finish quickly.
FAST = {"heartbeat_interval": 1.0, "auto_commit_interval": 0.1}

# Modules whose tests also run against a Redis Cluster (sharded Pub/Sub, hash-tagged keys).
CLUSTER_MODULES = {"test_scenarios", "test_mux"}


@dataclass
class Backend:
    """The Redis under test: ``kind`` is ``single`` or ``cluster``; ``url`` is REDIS_URL."""

    kind: str
    url: str
    nodes: list[Callable[..., str]]  # redis-cli runners, one per node


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.module.__name__.split(".")[-1] in (
        CLUSTER_MODULES
    ):
        metafunc.parametrize("backend", ["single", "cluster"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    print(f"\nRedis Cluster (3 masters + 3 replicas) ready in {cluster.ready_s:.1f} s")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> Backend:
    if getattr(request, "param", "single") == "cluster":
        c: RedisCluster = request.getfixturevalue("redis_cluster")
        return Backend("cluster", c.url, [partial(c.cli, p) for p in c.ports])
    return Backend("single", redis_server.url, [redis_server.cli])


@pytest.fixture(scope="session")
def gateways(backend: Backend) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas on one Redis: nothing about a connection lives in one process."""
    a = Gateway(backend.url, **FAST)
    b = Gateway(backend.url, **FAST)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="session")
def gw(gateways: tuple[Gateway, Gateway]) -> Gateway:
    return gateways[0]


@pytest_asyncio.fixture(scope="session")
async def store(backend: Backend) -> AsyncIterator[Store]:
    redis = connect(Settings(redis_url=backend.url), role="test")
    yield Store(redis)
    await redis.aclose()


@pytest_asyncio.fixture(scope="session")
async def publisher(store: Store) -> Publisher:
    return Publisher(store)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        yield c


@pytest.fixture
def sid() -> str:
    """A fresh session id per test, so tests never share state."""
    return "t-" + uuid.uuid4().hex[:10]


# In CI (CI=true) a skipped test is a failure: every tool a test needs (redis-server,
# Chromium, nginx, Node and its packages, schemathesis) is installed by scripts/test.sh, so a
# skip means a broken install, not a choice. The one exception: kubectl, which neither
# Debian, PyPI nor npm provides here (the manifests are still validated against the
# Kubernetes schemas without it).
SKIPS_ALLOWED_IN_CI = {"tests/test_deploy.py::test_kustomize_renders_every_object"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    outcome = yield
    report: TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("CI", "").lower() in ("1", "true", "yes")
        and report.skipped
        and item.nodeid not in SKIPS_ALLOWED_IN_CI
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every tool is installed: {reason}"
    return None


# An async test that hangs is cancelled by asyncio a minute before pytest-timeout's hard stop
# (pyproject: timeout = 300): the TimeoutError's traceback then names the await that hung,
# where pytest-timeout's thread dump shows only the idle event loop.
ASYNC_TEST_TIMEOUT_S = float(os.environ.get("TEST_ASYNC_TIMEOUT_S", "240"))


def _bounded(fn: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
    @functools.wraps(fn)
    async def run(*args: object, **kwargs: object) -> object:
        try:
            async with asyncio.timeout(ASYNC_TEST_TIMEOUT_S):
                return await fn(*args, **kwargs)
        except TimeoutError as exc:
            raise AssertionError(
                f"test still running after {ASYNC_TEST_TIMEOUT_S:.0f} s: the traceback "
                "below shows where it waited"
            ) from exc

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(fn):
            item.obj = _bounded(fn)
