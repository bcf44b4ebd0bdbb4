"""End to end in real headless Chromium: the viewer UI, a gateway, a demo worker process and
a redis-server. Start a run, switch sessions while it streams, reload mid-run; the final
transcript must equal what the worker published, with at most one open stream per tab."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import ROOT, Gateway, RedisServer, Worker

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
DOCS = ROOT / "docs"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RedisServer, Gateway]]:
    server = RedisServer()  # its own store: the sidebar shows only this test's sessions
    gw = Gateway(server.url, heartbeat_interval=2)
    worker = Worker(server.url, tokens_per_second=25)
    yield server, gw
    worker.stop()
    gw.stop()
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


class StreamWatch:
    """Polls the gateway's open-stream gauge in a thread and keeps the maximum."""

    def __init__(self, gw: Gateway) -> None:
        self.gw, self.max, self.samples = gw, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max = max(self.max, self.gw.metric("gateway_open_streams", kind="connection"))
            self.samples += 1
            time.sleep(0.03)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def published_answer(server: RedisServer, session_id: str) -> tuple[str, str]:
    """(status, answer text) straight from the Redis log: what the worker published."""
    r = redis.Redis(port=server.port, decode_responses=True)
    import json

    text, status = "", "running"
    for _, fields in r.xrange(f"gw:{{{session_id}}}:log"):
        if fields["t"] == "message.delta":
            text += json.loads(fields["d"])["text"]
        elif fields["t"] in ("run.completed", "run.failed", "run.cancelled"):
            status = fields["t"]
    r.close()
    return status, text


def test_switch_and_reload_mid_run_shows_exactly_what_was_published(stack, browser) -> None:
    server, gw = stack
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    watch = StreamWatch(gw)
    try:
        page.goto(gw.url)
        page.wait_for_function("window.gatewayApp && window.gatewayApp.currentSession()")
        first = page.evaluate("window.gatewayApp.currentSession()")
        page.fill("#prompt", "How does reconnect resume from the stored offset?")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "document.querySelector('.answer') && document.querySelector('.answer').textContent.length > 20",
            timeout=20_000,
        )
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "screenshot-demo.png"))

        # Switch to a new session and back while the run streams.
        page.click("#new-session")
        page.wait_for_function(f"window.gatewayApp.currentSession() !== '{first}'")
        time.sleep(0.6)
        page.click(f".session-row[data-session-id='{first}']")
        page.wait_for_function(f"window.gatewayApp.currentSession() === '{first}'")
        status, _ = published_answer(server, first)
        assert status == "running", "the run ended before the reload; slow the worker down"

        # Reload mid-run: the transcript is rebuilt from snapshot + stored offset.
        page.reload()
        page.wait_for_function(
            f"window.gatewayApp && window.gatewayApp.currentSession() === '{first}'"
        )
        deadline = time.monotonic() + 60
        while published_answer(server, first)[0] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        status, text = published_answer(server, first)
        assert status == "run.completed"
        page.wait_for_function(
            "(t) => document.querySelector('.answer') && document.querySelector('.answer').textContent === t",
            arg=text,
            timeout=10_000,
        )
        assert page.text_content(".answer") == text
        assert page.evaluate("window.gatewayApp.client.debug.openEventSources") <= 1
    finally:
        watch.stop()
    assert watch.samples > 20
    assert watch.max <= 1, f"{watch.max} streams open for one tab"
    assert not errors, errors
    assert httpx.get(gw.url + "/healthz").status_code == 200
