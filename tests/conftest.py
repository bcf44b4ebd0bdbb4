"""Fixtures: one real redis-server for the session, two gateway replicas, a publisher."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from gateway.publisher import Publisher
from gateway.redisconn import connect
from gateway.settings import Settings
from gateway.streams import Streams
from tests.support import Gateway, RedisServer

# Fast heartbeats and commits so timing-related scenarios finish quickly.
FAST = {"heartbeat_interval": 1.0, "auto_commit_interval": 0.1}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateways(redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas on one Redis: nothing about a connection lives in one process."""
    a = Gateway(redis_server.url, **FAST)
    b = Gateway(redis_server.url, **FAST)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="session")
def gw(gateways: tuple[Gateway, Gateway]) -> Gateway:
    return gateways[0]


@pytest_asyncio.fixture(scope="session")
async def streams(redis_server: RedisServer) -> AsyncIterator[Streams]:
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    yield Streams(redis)
    await redis.aclose()


@pytest_asyncio.fixture(scope="session")
async def publisher(streams: Streams) -> Publisher:
    return Publisher(streams)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        yield c


@pytest.fixture
def sid() -> str:
    """A fresh session id per test, so tests never share state."""
    return "t-" + uuid.uuid4().hex[:10]
