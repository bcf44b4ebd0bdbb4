"""SSE responses, black box: the headers an event stream is sent with (CORS included), and
that a client closing an idle stream releases it at once (gauge, final commit), not at
its next heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Gateway, RedisServer, sse

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def idle(redis_server: RedisServer) -> Iterator[Gateway]:
    # Heartbeats and periodic commits far away: only the disconnect can end a stream here.
    gw = Gateway(
        redis_server.url,
        heartbeat_interval=60,
        auto_commit_interval=60,
        cors_origins=f'["{ORIGIN}"]',
    )
    yield gw
    gw.stop()


async def until(*, gw: Gateway, kind: str, value: float) -> None:
    deadline = time.monotonic() + 5  # far below the 60 s heartbeat
    while gw.metric("gateway_open_streams", kind=kind) != value:
        assert time.monotonic() < deadline, f"open {kind} streams never reached {value}"
        await asyncio.sleep(0.05)


async def test_closing_an_idle_stream_releases_it_at_once(
    idle: Gateway, client: httpx.AsyncClient, sid: str
) -> None:
    base = f"{idle.url}/v1/sessions/{sid}"
    r = await client.post(f"{base}/events", json={"type": "vendor.tick", "data": {"n": 1}})
    assert r.status_code in (200, 201, 202), r.text
    conn = await client.post(f"{base}/connections", json={"from": "start"})
    assert conn.status_code == 201, conn.text
    cid = conn.json()["connection_id"]
    url = f"{base}/connections/{cid}/events"
    async with sse(client, url, headers={"Origin": ORIGIN}) as s:
        headers = s.response.headers
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache, no-transform"
        assert headers["x-accel-buffering"] == "no"
        assert headers["access-control-allow-origin"] == ORIGIN  # middleware still applies
        frame = await s.next(timeout=10)
        assert frame.json()["data"] == {"n": 1}
        assert idle.metric("gateway_open_streams", kind="connection") == 1
    await until(gw=idle, kind="connection", value=0)
    # The stream's cleanup ran: its final commit stored the offset it delivered.
    stored = await client.get(f"{base}/connections/{cid}")
    assert stored.json()["offset"] == frame.id


async def test_plain_streams_closed_together_are_all_released(
    idle: Gateway, client: httpx.AsyncClient, sid: str
) -> None:
    url = f"{idle.url}/v1/sessions/{sid}/events?from=live"
    async with sse(client, url) as a, sse(client, url) as b, sse(client, url) as c:
        await until(gw=idle, kind="plain", value=3)
        assert await a.nothing_for(0.1) and await b.nothing_for(0.1) and await c.nothing_for(0.1)
    await until(gw=idle, kind="plain", value=0)
