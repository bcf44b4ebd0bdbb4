"""SSE responses: the headers an event stream is sent with (CORS included), and that a
client closing an idle stream releases it at once (gauge, final commit), not at its next
heartbeat (black box); the response's ASGI app driven directly (a disconnect during the
frames' shielded cleanup does not cut it short; the body ends with ``more_body`` False)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from gateway.api.sse import RAW_SSE_HEADERS, EventStreamResponse
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


class FakeClient:
    """ASGI ``receive``/``send`` of one GET: the request, then ``http.disconnect`` once
    :meth:`leave` is called; ``sent`` collects what the app sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.gone = asyncio.Event()
        self.requested = False

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, object]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, object]) -> None:
        self.sent.append(message)


async def run_response(frames, client: FakeClient) -> None:  # type: ignore[no-untyped-def]
    app = EventStreamResponse(frames).to_asgi_response(None, None)  # type: ignore[arg-type]
    await app({"type": "http"}, client.receive, client.send)  # type: ignore[arg-type]


async def test_a_disconnect_during_the_shielded_cleanup_does_not_cut_it_short() -> None:
    client = FakeClient()
    steps: list[str] = []

    async def frames():  # type: ignore[no-untyped-def]
        try:
            yield b"data: 1\n\n"
        finally:
            # As EventStream.frames: final commit and slot release under a shield. The
            # client leaves in the middle of it.
            with anyio.CancelScope(shield=True):
                client.leave()
                await asyncio.sleep(0.05)
                steps.append("committed")
                await asyncio.sleep(0)
                steps.append("released")

    await asyncio.wait_for(run_response(frames(), client), 5)
    assert steps == ["committed", "released"]
    assert client.sent[0]["headers"] == list(RAW_SSE_HEADERS)


async def test_an_idle_stream_ends_on_the_disconnect_and_runs_its_cleanup() -> None:
    client = FakeClient()
    steps: list[str] = []

    async def frames():  # type: ignore[no-untyped-def]
        try:
            yield b"data: 1\n\n"
            await asyncio.Event().wait()  # idle for ever
            yield b"never"
        finally:
            with anyio.CancelScope(shield=True):
                await asyncio.sleep(0)
                steps.append("cleaned up")

    task = asyncio.create_task(run_response(frames(), client))
    while len(client.sent) < 2:
        await asyncio.sleep(0.01)
    client.leave()
    await asyncio.wait_for(task, 5)  # returns, not cancelled: the disconnect is the end
    assert steps == ["cleaned up"]
    assert [m.get("body") for m in client.sent[1:]] == [b"data: 1\n\n"]


async def test_a_finished_stream_ends_the_body_and_is_closed() -> None:
    client = FakeClient()
    closed: list[bool] = []

    async def frames():  # type: ignore[no-untyped-def]
        try:
            yield b"data: 1\n\n"
            yield "data: 2\n\n"
        finally:
            closed.append(True)

    await asyncio.wait_for(run_response(frames(), client), 5)
    assert closed == [True]
    assert [(m.get("body"), m.get("more_body")) for m in client.sent[1:]] == [
        (b"data: 1\n\n", True),
        (b"data: 2\n\n", True),
        (b"", False),
    ]
