"""The browser side in real headless Chromium (Playwright driving the system Chromium) against
a real gateway, a demo worker process and a redis-server. Every check compares what the page
shows with what the worker actually published, read straight from the Redis log."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import Gateway, RedisServer, Worker

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
# Screenshots go to a temporary folder; scripts/screenshots.sh points this at docs/ to
# refresh the ones the README shows.
SHOTS = Path(os.environ.get("GATEWAY_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="gw-shots-"))
TERMINAL = ("run.completed", "run.failed", "run.cancelled")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RedisServer, Gateway]]:
    server = RedisServer()  # its own store: the sidebar shows only this module's sessions
    gw = Gateway(server.url, heartbeat_interval=2)
    worker = Worker(server.url, tokens_per_second=12)  # runs last ~15 s: time to act mid-run
    yield server, gw
    worker.stop()
    gw.stop()
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


@pytest.fixture
def device(browser: Any) -> Iterator[Any]:
    """A browser context: one device (its own storage, its own mux)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    ctx.close()


class StreamWatch:
    """Samples the gateway's open-stream gauges in a thread and keeps the maxima."""

    KINDS = ("mux", "connection", "plain")

    def __init__(self, gw: Gateway) -> None:
        self.gw, self.samples = gw, 0
        self.max = dict.fromkeys(self.KINDS, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = httpx.get(self.gw.url + "/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.05)  # the gateway is restarting
                continue
            for kind in self.KINDS:
                prefix = f'gateway_open_streams{{kind="{kind}"}} '
                for line in text.splitlines():
                    if line.startswith(prefix):
                        self.max[kind] = max(self.max[kind], float(line.split()[-1]))
            self.samples += 1
            time.sleep(0.03)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.max


def log_of(server: RedisServer, sid: str) -> list[dict[str, Any]]:
    """The session's events straight from Redis: what the worker published."""
    r = redis.Redis(port=server.port, decode_responses=True)
    try:
        return [
            {
                "seq": int(eid.split("-")[0]),
                "type": f["t"],
                "run_id": f["r"],
                "data": json.loads(f["d"]),
            }
            for eid, f in r.xrange(f"gw:{{{sid}}}:log")
        ]
    finally:
        r.close()


def published(server: RedisServer, sid: str) -> dict[str, Any]:
    """Per run: answer text, tool call ids, terminal types — folded from the Redis log."""
    runs: dict[str, dict[str, Any]] = {}
    for ev in log_of(server, sid):
        run = runs.setdefault(ev["run_id"], {"text": "", "tools": [], "terminals": []})
        if ev["type"] == "message.delta":
            run["text"] += ev["data"]["text"]
        elif ev["type"] == "tool.started":
            run["tools"].append(ev["data"]["tool_call_id"])
        elif ev["type"] in TERMINAL:
            run["terminals"].append(ev["type"])
    return runs


def wait_for(pred: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


def run_done(server: RedisServer, sid: str) -> bool:
    runs = published(server, sid)
    return bool(runs) and all(r["terminals"] for r in runs.values())


def start_run(gw: Gateway, sid: str, text: str) -> str:
    r = httpx.post(f"{gw.url}/v1/sessions/{sid}/runs", json={"input": text}, timeout=5)
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


def new_session(gw: Gateway) -> str:
    return str(httpx.post(f"{gw.url}/v1/sessions", timeout=5).json()["session_id"])


def open_tab(ctx: Any, gw: Gateway, sid: str | None = None, errors: list[str] | None = None) -> Any:
    page = ctx.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(gw.url + (f"/#s={sid}" if sid else "/"))
    page.wait_for_function("window.gatewayApp && window.gatewayApp.currentSession()")
    if sid:
        page.wait_for_function(f"window.gatewayApp.currentSession() === '{sid}'")
    return page


def view(page: Any, sid: str) -> None:
    page.click(f".session-row[data-session-id='{sid}']")
    page.wait_for_function(f"window.gatewayApp.currentSession() === '{sid}'")


def client_runs(page: Any, sid: str) -> dict[str, dict[str, Any]]:
    """The tab's per-session state (what its pane projects), per run."""
    runs = page.evaluate(
        """(sid) => {
            const s = window.gatewayApp.client.getState(sid);
            return s ? s.runs.map(r => ({run_id: r.run_id, text: r.text, status: r.status,
                                         tools: r.tools.map(t => t.tool_call_id)})) : null;
        }""",
        sid,
    )
    return {r["run_id"]: r for r in runs or []}


def assert_matches_published(page: Any, server: RedisServer, sid: str) -> None:
    """The tab ends with exactly the published transcript: every run, its full text (no gap,
    no duplicate), every tool card; and the pane renders it."""
    want = published(server, sid)

    def same() -> bool:
        got = client_runs(page, sid)
        return set(got) == set(want) and all(
            got[k]["text"] == want[k]["text"] and got[k]["tools"] == want[k]["tools"] for k in want
        )

    try:
        wait_for(same, timeout=15, what="tab state equals the published log")
    except AssertionError:
        raise AssertionError(f"tab: {client_runs(page, sid)}\npublished: {want}") from None
    if page.evaluate("window.gatewayApp.currentSession()") == sid:
        for run_id, run in want.items():
            card = page.locator(f".run[data-run-id='{run_id}']")
            assert card.locator(".tool-card").count() == len(run["tools"])
            if run["text"]:
                first_words = " ".join(run["text"].split()[:3]).strip("*_`")
                assert first_words.split()[0] in card.locator(".answer").inner_text()


def test_switch_and_reload_mid_run_shows_exactly_what_was_published(stack, device) -> None:
    """Issue 2's end-to-end check: start in the UI, switch away and back, reload mid-run."""
    server, gw = stack
    errors: list[str] = []
    watch = StreamWatch(gw)
    page = open_tab(device, gw, errors=errors)
    first = page.evaluate("window.gatewayApp.currentSession()")
    page.fill("#prompt", "How does reconnect resume from the stored offset?")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('.answer') && document.querySelector('.answer').textContent.length > 20",
        timeout=20_000,
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "screenshot-demo.png"))
    page.click("#new-session")
    page.wait_for_function(f"window.gatewayApp.currentSession() !== '{first}'")
    time.sleep(0.5)
    view(page, first)
    assert not run_done(server, first), "the run ended before the reload; slow the worker down"
    page.reload()
    page.wait_for_function(f"window.gatewayApp && window.gatewayApp.currentSession() === '{first}'")
    wait_for(lambda: run_done(server, first), what="run end")
    assert_matches_published(page, server, first)
    maxima = watch.stop()
    assert watch.samples > 20
    assert maxima["mux"] <= 1 and maxima["connection"] == 0 and maxima["plain"] == 0, maxima
    assert not errors, errors


def test_1_switch_away_and_back_20_times_while_streaming(stack, device) -> None:
    server, gw = stack
    a, b = new_session(gw), new_session(gw)
    errors: list[str] = []
    page = open_tab(device, gw, a, errors)
    watch = StreamWatch(gw)
    start_run(gw, a, "Explain the hub and how catch-up works with replicas")
    page.wait_for_function("document.querySelector('.answer')", timeout=20_000)
    for _ in range(20):
        view(page, b)
        time.sleep(0.05)
        view(page, a)
        time.sleep(0.05)
    assert not run_done(server, a), "the run ended before the switching did; slow the worker"
    wait_for(lambda: run_done(server, a), what="run end")
    assert_matches_published(page, server, a)
    maxima = watch.stop()
    assert maxima["mux"] <= 1 and maxima["connection"] == 0 and maxima["plain"] == 0, maxima
    assert not errors, errors


def test_2_eight_tabs_share_one_stream(stack, device) -> None:
    server, gw = stack
    sessions = [new_session(gw) for _ in range(8)]
    watch = StreamWatch(gw)
    pages = [open_tab(device, gw, sid) for sid in sessions]
    for sid in sessions:
        start_run(gw, sid, f"What does the gateway do with offsets? ({sid})")
    # Every tab streams live at once: each one's text grows while the runs are still going.
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 8 and time.monotonic() < deadline:
        for page, sid in zip(pages, sessions, strict=True):
            runs = client_runs(page, sid)
            if any(r["text"] for r in runs.values()) and not run_done(server, sid):
                seen[sid] = 1
        time.sleep(0.1)
    assert len(seen) == 8, f"only {len(seen)} of 8 tabs streamed live"
    wait_for(lambda: all(run_done(server, s) for s in sessions), what="eight runs end")
    for page, sid in zip(pages, sessions, strict=True):
        assert_matches_published(page, server, sid)
    transports = {p.evaluate("window.gatewayApp.client.transport") for p in pages}
    maxima = watch.stop()
    print(f"\n8 tabs over HTTP/1.1: gateway open streams max {maxima} (transport {transports})")
    assert maxima["mux"] == 1 and maxima["connection"] == 0 and maxima["plain"] == 0, maxima
    assert transports == {"shared-worker"}


def test_2b_eight_tabs_share_one_stream_with_broadcast_fallback(stack, device) -> None:
    server, gw = stack
    sessions = [new_session(gw) for _ in range(8)]
    watch = StreamWatch(gw)
    pages = []
    for sid in sessions:
        page = device.new_page()
        page.goto(f"{gw.url}/?transport=broadcast#s={sid}")
        page.wait_for_function(
            f"window.gatewayApp && window.gatewayApp.currentSession() === '{sid}'"
        )
        pages.append(page)
    for sid in sessions:
        start_run(gw, sid, "How are replicas drained?")
    wait_for(lambda: all(run_done(server, s) for s in sessions), what="eight runs end")
    for page, sid in zip(pages, sessions, strict=True):
        assert_matches_published(page, server, sid)
    roles = sorted(p.evaluate("window.gatewayApp.client.transport") for p in pages)
    maxima = watch.stop()
    print(f"\n8 tabs, broadcast fallback: {maxima}, roles {roles}")
    assert roles.count("broadcast-leader") == 1 and roles.count("broadcast-follower") == 7
    assert maxima["mux"] == 1 and maxima["connection"] == 0 and maxima["plain"] == 0, maxima


def test_3_reload_close_reopen_and_bfcache_mid_run(stack, device) -> None:
    server, gw = stack
    sid = new_session(gw)
    page = open_tab(device, gw, sid)
    start_run(gw, sid, "Describe the snapshot, the offset, the epoch and the reset event in detail")
    page.wait_for_function("document.querySelector('.answer')", timeout=20_000)
    page.reload()
    page.wait_for_function(f"window.gatewayApp && window.gatewayApp.currentSession() === '{sid}'")
    time.sleep(0.3)
    page.close()
    time.sleep(0.3)
    page = open_tab(device, gw, sid)
    time.sleep(0.3)
    page.goto(gw.url + "/healthz")  # away to another document, then Back (BFCache if eligible)
    time.sleep(0.3)
    page.go_back()
    page.wait_for_function(f"window.gatewayApp && window.gatewayApp.currentSession() === '{sid}'")
    assert not run_done(server, sid), "the run ended before the navigation did; slow the worker"
    wait_for(lambda: run_done(server, sid), what="run end")
    assert_matches_published(page, server, sid)


def test_4_second_device_joins_mid_run(stack, browser, device) -> None:
    server, gw = stack
    sid = new_session(gw)
    first = open_tab(device, gw, sid)
    start_run(gw, sid, "How does a second device join a running session?")
    first.wait_for_function("document.querySelector('.answer')", timeout=20_000)
    other = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        second = open_tab(other, gw, sid)
        assert not run_done(server, sid)
        wait_for(lambda: run_done(server, sid), what="run end")
        assert_matches_published(first, server, sid)
        assert_matches_published(second, server, sid)
        assert client_runs(first, sid) == client_runs(second, sid)
    finally:
        other.close()


def test_5_approval_while_viewing_another_session(stack, browser, device) -> None:
    server, gw = stack
    a, b = new_session(gw), new_session(gw)
    errors: list[str] = []
    tab1 = open_tab(device, gw, b, errors)
    tab2 = open_tab(device, gw, b, errors)
    start_run(gw, a, "Please ask for approval before quoting the docs on offsets")

    def requested() -> bool:
        return any(e["type"] == "approval.requested" for e in log_of(server, a))

    wait_for(requested, what="approval requested")
    aid = next(e for e in log_of(server, a) if e["type"] == "approval.requested")["data"][
        "approval_id"
    ]
    card = f".approval-card[data-approval-id='{aid}']"
    other = browser.new_context()
    try:
        tab3 = open_tab(other, gw, a, errors)  # another device, looking at A already
        for tab in (tab1, tab2):
            view(tab, a)  # coming back: the prompt is there
        for tab in (tab1, tab2, tab3):
            tab.wait_for_selector(f"{card} button.approve", timeout=10_000)
        tab1.click(f"{card} button.approve")
        for tab in (tab1, tab2, tab3):
            tab.wait_for_selector(f"{card} .approval-decision", timeout=10_000)
            assert tab.locator(f"{card} button.approve").count() == 0
        # A second answer (a stale device) gets the 409 path, handled without an error.
        res = tab3.evaluate(f"window.gatewayApp.client.answerApproval('{a}', '{aid}', 'deny')")
        assert res["ok"] is False and res["status"] == 409, res
        assert res["code"] == "approval_already_resolved"
        wait_for(lambda: run_done(server, a), what="run end")
        decisions = [e for e in log_of(server, a) if e["type"] == "approval.resolved"]
        assert [d["data"]["decision"] for d in decisions] == ["approve"]
        for tab in (tab1, tab2, tab3):
            assert_matches_published(tab, server, a)
    finally:
        other.close()
    assert not errors, errors


def test_6_cancel_from_another_sessions_sidebar_row(stack, browser, device) -> None:
    server, gw = stack
    a, b = new_session(gw), new_session(gw)
    tab = open_tab(device, gw, b)
    watcher_ctx = browser.new_context()
    try:
        watcher = open_tab(watcher_ctx, gw, a)  # another device watching A
        run_a = start_run(gw, a, "A long answer about replicas, clusters and the hub please")
        run_b = start_run(gw, b, "A long answer about offsets and epochs please")
        row_cancel = f".session-row[data-session-id='{a}'] .row-cancel"
        tab.wait_for_selector(row_cancel, timeout=10_000)
        tab.click(row_cancel)
        wait_for(lambda: published(server, a).get(run_a, {}).get("terminals"), what="A ends")
        assert tab.evaluate("window.gatewayApp.currentSession()") == b
        wait_for(lambda: run_done(server, b), what="B ends")
        assert published(server, a)[run_a]["terminals"] == ["run.cancelled"]
        assert published(server, b)[run_b]["terminals"] == ["run.completed"]
        watcher.wait_for_selector(f".run[data-run-id='{run_a}'] .run-cancelled", timeout=10_000)
        assert_matches_published(tab, server, b)
        assert_matches_published(watcher, server, a)
        tab.wait_for_selector(f".session-row[data-session-id='{a}']:not(.running)", timeout=10_000)
    finally:
        watcher_ctx.close()


def test_7_gateway_restart_mid_run_reconnects_without_loss(stack, device) -> None:
    server, gw = stack
    sid = new_session(gw)
    page = open_tab(device, gw, sid)
    page.evaluate(
        """() => {
            window.__statuses = [];
            const el = document.querySelector('#conn-status');
            new MutationObserver(() => window.__statuses.push(el.textContent.trim()))
                .observe(el, {childList: true, characterData: true, subtree: true, attributes: true});
        }"""
    )
    start_run(gw, sid, "Tell me how the gateway survives a restart of a replica and Redis")
    page.wait_for_function("document.querySelector('.answer')", timeout=20_000)
    gw.stop()
    # What matters is that the gateway went away mid-run: on a loaded machine the run may
    # end while it is down, and everything published meanwhile must still arrive.
    assert not run_done(server, sid), "the run ended before the gateway stopped; slow the worker"
    page.wait_for_function(
        "['reconnecting', 'offline'].includes(document.querySelector('#conn-status').textContent.trim())",
        timeout=10_000,
    )
    down_at = len(log_of(server, sid))

    def published_while_down() -> bool:
        # Ten events, or the run's end after at least one: a worker starved on a loaded
        # machine catches up against its clock, and its run may end before ten more.
        n = len(log_of(server, sid))
        return n >= down_at + 10 or (n > down_at and run_done(server, sid))

    wait_for(published_while_down, timeout=60, what="events while down")
    gw.proc = gw._spawn()
    gw.wait_ready()
    page.wait_for_function(
        "document.querySelector('#conn-status').textContent.trim() === 'live'", timeout=20_000
    )
    wait_for(lambda: run_done(server, sid), what="run end")
    assert_matches_published(page, server, sid)
    statuses = page.evaluate("window.__statuses")
    assert "reconnecting" in statuses and statuses[-1] == "live", statuses


def test_screenshots_desktop_and_narrow(stack, browser) -> None:
    server, gw = stack
    sid = new_session(gw)
    start_run(
        gw, sid, "Please get my approval, then explain how reconnect resumes from the stored offset"
    )
    wait_for(
        lambda: any(e["type"] == "approval.requested" for e in log_of(server, sid)), what="approval"
    )
    for name, size in (("desktop", (1280, 800)), ("narrow", (400, 820))):
        ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
        page = open_tab(ctx, gw, sid)
        page.wait_for_selector(".approval-card button.approve", timeout=10_000)
        page.screenshot(path=str(SHOTS / f"screenshot-{name}.png"))
        ctx.close()
    httpx.post(
        f"{gw.url}/v1/sessions/{sid}/approvals/"
        + next(e for e in log_of(server, sid) if e["type"] == "approval.requested")["data"][
            "approval_id"
        ],
        json={"decision": "approve"},
    )


# --- access tokens: a gateway with a token key (GATEWAY_JWT_SECRET) ------------------------------

JWT_SECRET = "browser-tests-" + "k" * 40  # HS256 key, at least 32 characters


@pytest.fixture(scope="module")
def auth_stack() -> Iterator[tuple[RedisServer, Gateway]]:
    """Its own Redis, a gateway that requires tokens, and a demo worker (which talks to Redis
    directly and needs none)."""
    server = RedisServer()
    gw = Gateway(server.url, heartbeat_interval=2, jwt_secret=JWT_SECRET)
    worker = Worker(server.url, tokens_per_second=30)
    yield server, gw
    worker.stop()
    gw.stop()
    server.stop()


def token(sessions: list[str] | None = None, subject: str = "alice", ttl_s: float = 3600) -> str:
    from gateway.api.auth import mint

    return mint(
        JWT_SECRET,
        subject,
        sessions=sessions or ["*"],
        actions=["view", "command", "approve"],
        ttl_s=ttl_s,
    )


def bearer(jwt: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}"}


def watch_errors(page: Any) -> list[str]:
    """Uncaught exceptions and console errors of the page (a refused request shows as one)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    return errors


def test_8_token_in_url_authorizes_the_viewer_stream_and_commands(auth_stack, device) -> None:
    server, gw = auth_stack
    assert httpx.get(f"{gw.url}/v1/sessions", timeout=5).status_code == 401  # tokens are checked
    page = device.new_page()
    errors = watch_errors(page)
    # Without a token: the viewer says so (and keeps retrying with backoff).
    page.goto(f"{gw.url}/")
    page.wait_for_selector(".toast[data-key='auth']", timeout=10_000)
    assert page.evaluate("window.gatewayApp.client.authError.code") == "unauthorized"
    # A link with a token, pasted into the same tab (hashchange): it recovers at once.
    time.sleep(3)  # into the retry backoff
    page.evaluate("(t) => { location.hash = 'token=' + t; }", token())
    page.wait_for_function("window.gatewayApp.currentSession()", timeout=5_000)
    sid = page.evaluate("window.gatewayApp.currentSession()")  # created by the viewer (POST)
    assert "token" not in page.url, page.url  # removed from the address bar
    page.wait_for_function("document.querySelector('#conn-status').textContent.trim() === 'live'")
    assert page.locator(".toast[data-key='auth']").count() == 0
    assert all("401" in e for e in errors), errors  # the refused requests before the token
    errors.clear()
    # The usual way: open the viewer with #token=.
    page.goto("about:blank")
    page.goto(f"{gw.url}/#token={token()}&s={sid}")
    page.wait_for_function(f"window.gatewayApp && window.gatewayApp.currentSession() === '{sid}'")
    assert "token" not in page.url and page.url.endswith(f"#s={sid}"), page.url
    page.wait_for_function("document.querySelector('#conn-status').textContent.trim() === 'live'")
    page.fill("#prompt", "How does reconnect resume from the stored offset?")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('.answer') && document.querySelector('.answer').textContent.length > 20",
        timeout=20_000,
    )
    assert not run_done(server, sid), "the run ended before it was seen streaming"
    wait_for(lambda: run_done(server, sid), what="run end")
    assert_matches_published(page, server, sid)
    hub = page.evaluate("window.gatewayApp.client.describeHub()")
    assert hub["transport"] == "shared-worker" and hub["token"]["sub"] == "alice", hub
    assert hub["auth"] is None and page.evaluate("window.gatewayApp.client.authError") is None
    # A reload keeps the token (sessionStorage) although the URL no longer has it.
    page.reload()
    page.wait_for_function(f"window.gatewayApp && window.gatewayApp.currentSession() === '{sid}'")
    page.wait_for_function("document.querySelector('#conn-status').textContent.trim() === 'live'")
    assert_matches_published(page, server, sid)
    assert page.locator(".toast-error").count() == 0
    assert not errors, errors


def test_9_token_limited_to_some_sessions_sees_only_those(auth_stack, device) -> None:
    server, gw = auth_stack
    admin = bearer(token())
    for sid in ("visible-1", "hidden-1"):
        r = httpx.post(f"{gw.url}/v1/sessions", json={"session_id": sid}, headers=admin, timeout=5)
        assert r.status_code in (200, 201), r.text
    page = device.new_page()
    errors = watch_errors(page)
    page.goto(f"{gw.url}/#token={token(['visible-*'], subject='bob')}")
    page.wait_for_function(
        "window.gatewayApp && window.gatewayApp.currentSession() === 'visible-1'"
    )
    page.wait_for_function("document.querySelector('#conn-status').textContent.trim() === 'live'")
    page.evaluate(
        """() => {
            window.__rows = new Set();
            const list = document.querySelector('#session-list');
            const note = () => list.querySelectorAll('.session-row')
                .forEach((r) => window.__rows.add(r.dataset.sessionId));
            note();
            new MutationObserver(note).observe(list, {childList: true, subtree: true});
        }"""
    )
    # Activity in both sessions: the feed of this token carries only visible-1's.
    run_hidden = httpx.post(
        f"{gw.url}/v1/sessions/hidden-1/runs", json={"input": "hidden work"}, headers=admin
    )
    assert run_hidden.status_code == 202, run_hidden.text
    run_visible = httpx.post(
        f"{gw.url}/v1/sessions/visible-1/runs", json={"input": "visible work"}, headers=admin
    )
    assert run_visible.status_code == 202, run_visible.text
    wait_for(lambda: run_done(server, "visible-1") and run_done(server, "hidden-1"), what="runs")
    assert_matches_published(page, server, "visible-1")
    listed = page.evaluate(
        "window.gatewayApp.client.listSessions().then((l) => l.map((s) => s.session_id))"
    )
    assert listed == ["visible-1"], listed
    # A marker after everything else: once its row shows, every earlier activity frame was
    # processed (the feed is ordered), so a hidden row would be there by now.
    marker = httpx.post(
        f"{gw.url}/v1/sessions", json={"session_id": "visible-marker"}, headers=admin, timeout=5
    )
    assert marker.status_code in (200, 201), marker.text
    page.wait_for_function("window.__rows.has('visible-marker')", timeout=10_000)
    rows = page.evaluate("[...window.__rows]")
    assert sorted(rows) == ["visible-1", "visible-marker"], rows
    # Viewing a session outside the token: 403, reported once as fatal, no retry loop.
    err = page.evaluate(
        """() => new Promise((resolve) => {
            const c = window.gatewayApp.client;
            const off = c.on('error', (e) => { if (e.sessionId === 'hidden-1') { off(); resolve(e); } });
            c.watch('hidden-1');
        })"""
    )
    assert err["fatal"] is True and err["status"] == 403 and err["code"] == "forbidden", err
    page.evaluate("window.gatewayApp.client.unwatch('hidden-1')")
    assert page.evaluate("window.gatewayApp.client.getState('hidden-1')") is None
    errors = [e for e in errors if "403" not in e]  # the refused snapshot is logged by Chromium
    assert not errors, errors


def test_10_token_function_refreshed_through_the_shared_worker(auth_stack, browser) -> None:
    """A page whose accessToken function first returns an expired token: the hub reports
    token_expired without a hot loop, asks again with backoff, and recovers (stream, view,
    commands) as soon as the function returns a fresh token."""
    server, gw = auth_stack
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(gw.url + "/healthz")  # any document of the gateway's origin
        page.evaluate(
            """async ([expired, fresh]) => {
                const { GatewayClient } = await import('/gateway-client.js');
                window.__tokens = { give: expired, fresh };
                window.__calls = 0;
                window.__auth = [];
                const client = new GatewayClient({
                    maxBackoffMs: 2000,
                    accessToken: async () => { window.__calls += 1; return window.__tokens.give; },
                });
                client.on('auth', (p) => window.__auth.push(p ? p.code : null));
                window.__client = client;
            }""",
            [token(subject="carol", ttl_s=-60), token(subject="carol")],
        )
        page.wait_for_function("window.__auth.includes('token_expired')", timeout=10_000)
        assert page.evaluate("window.__client.transport") == "shared-worker"
        before = page.evaluate("window.__calls")
        time.sleep(4)
        asked = page.evaluate("window.__calls") - before
        assert 1 <= asked <= 6, f"the token function was called {asked} times in 4 s"
        assert page.evaluate("window.__client.status") != "live"
        page.evaluate("window.__tokens.give = window.__tokens.fresh")
        page.wait_for_function("window.__client.status === 'live'", timeout=15_000)
        assert page.evaluate("window.__client.authError") is None
        assert page.evaluate("window.__auth").pop() is None
        sid = page.evaluate("window.__client.createSession()")
        page.evaluate(f"window.__client.view('{sid}')")
        res = page.evaluate(f"window.__client.startRun('{sid}', 'What is an offset?')")
        assert res["ok"] is True, res
        wait_for(lambda: run_done(server, sid), what="run end")
        want = published(server, sid)

        def same() -> bool:
            state = page.evaluate(f"window.__client.getState('{sid}')")
            got = {r["run_id"]: r["text"] for r in (state or {}).get("runs", [])}
            return got == {k: v["text"] for k, v in want.items()}

        wait_for(same, timeout=15, what="the client's state equals the published log")
        assert not errors, errors
    finally:
        ctx.close()


def test_11_stream_token_expiry_refreshes_and_resumes(auth_stack, browser) -> None:
    """The gateway ends the mux stream at the token's exp (event: close token_expired). The
    hub acks what it processed, asks the page's accessToken function for a fresh token and
    reopens at once; a run published across the expiry ends up exactly as published."""
    from gateway.api.auth import mint

    server, gw = auth_stack
    publisher = bearer(mint(JWT_SECRET, "agent", actions=["publish"]))
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(gw.url + "/healthz")
        page.evaluate(
            """async (first) => {
                const { GatewayClient } = await import('/gateway-client.js');
                window.__tokens = { give: first };
                const client = new GatewayClient({
                    accessToken: async () => window.__tokens.give,
                });
                window.__client = client;
            }""",
            token(subject="dave", ttl_s=5),
        )
        page.wait_for_function("window.__client.status === 'live'", timeout=15_000)
        sid = page.evaluate("window.__client.createSession()")
        page.evaluate(f"window.__client.view('{sid}')")
        page.evaluate("(t) => { window.__tokens.give = t; }", token(subject="dave"))
        url = f"{gw.url}/v1/sessions/{sid}/events"

        def publish(body: dict[str, Any]) -> None:
            r = httpx.post(url, json=body, headers=publisher, timeout=5)
            assert r.status_code == 201, r.text

        publish({"type": "run.started", "run_id": "r1", "data": {"input": "q"}})
        n = 0
        log = ""
        while "stream ended: token expired" not in log:
            publish({"type": "message.delta", "run_id": "r1", "data": {"text": f"{n} "}})
            n += 1
            time.sleep(0.05)
            log = "\n".join(page.evaluate("window.__client.describeHub()")["log"])
            assert n < 400, "the stream did not end at the token's exp"
        for m in range(n, n + 20):
            publish({"type": "message.delta", "run_id": "r1", "data": {"text": f"{m} "}})
        publish({"type": "run.completed", "run_id": "r1"})
        page.wait_for_function("window.__client.status === 'live'", timeout=15_000)
        want = "".join(f"{i} " for i in range(n + 20))
        assert published(server, sid)["r1"]["text"] == want

        def same() -> bool:
            state = page.evaluate(f"window.__client.getState('{sid}')")
            runs = (state or {}).get("runs", [])
            return [(r["run_id"], r["text"], r["status"]) for r in runs] == [
                ("r1", want, "completed")
            ]

        wait_for(same, timeout=15, what="the client's state equals the published log")
        assert page.evaluate("window.__client.authError") is None
        assert not errors, errors
    finally:
        ctx.close()


def open_client(device: Any, gw: Gateway, jwt: str) -> tuple[Any, list[str]]:
    """A page of the gateway's origin with a GatewayClient (`window.__client`, a fixed token)
    that records its `error` events in `window.__errors`; and the page's uncaught errors."""
    page = device.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(gw.url + "/healthz")  # any document of the gateway's origin
    page.evaluate(
        """async (jwt) => {
            const { GatewayClient } = await import('/gateway-client.js');
            window.__errors = [];
            window.__client = new GatewayClient({ accessToken: jwt });
            window.__client.on('error', (e) => window.__errors.push(e));
        }""",
        jwt,
    )
    page.wait_for_function("window.__client.status === 'live'", timeout=15_000)
    return page, errors


def test_12_resync_refused_with_403_is_fatal_and_not_retried(auth_stack, device) -> None:
    """A re-sync (here: the log was lost and restarted under a new epoch) whose snapshot the
    gateway refuses with 403 is reported to the tab once as fatal and not retried in a loop;
    a token with the right again reloads the session."""
    from gateway.api.auth import mint

    server, gw = auth_stack
    admin = bearer(token())
    publisher = bearer(mint(JWT_SECRET, "agent", actions=["publish"]))
    sid = f"resync-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{gw.url}/v1/sessions", json={"session_id": sid}, headers=admin, timeout=5)
    assert r.status_code in (200, 201), r.text
    page, errors = open_client(device, gw, token(subject="erin"))
    state = page.evaluate("(sid) => window.__client.view(sid)", sid)
    assert state["session_id"] == sid, state
    # Same user, narrower token: the hub takes it over (describeHub() is answered after the
    # token message, on the same port), the open stream stays.
    page.evaluate("(t) => window.__client.setAccessToken(t)", token(["other-*"], subject="erin"))
    assert page.evaluate("window.__client.describeHub()")["token"]["sub"] == "erin"
    # The session's log is lost (as after a Redis data loss) and starts again under a new
    # epoch: the gateway resets the session on the stream and the hub re-syncs it.
    store = redis.Redis(port=server.port)
    try:
        store.delete(f"gw:{{{sid}}}:meta", f"gw:{{{sid}}}:log")
    finally:
        store.close()
    r = httpx.post(
        f"{gw.url}/v1/sessions/{sid}/events",
        json={"type": "session.title", "data": {"title": "after the reset"}},
        headers=publisher,
        timeout=5,
    )
    assert r.status_code == 201, r.text
    page.wait_for_function(
        "(sid) => window.__errors.some((e) => e.sessionId === sid)", arg=sid, timeout=20_000
    )
    err = page.evaluate("(sid) => window.__errors.filter((e) => e.sessionId === sid)", sid)
    assert len(err) == 1, err
    assert err[0]["fatal"] is True and err[0]["status"] == 403, err
    assert err[0]["code"] == "forbidden", err

    def refused() -> int:
        log = page.evaluate("window.__client.describeHub()")["log"]
        return sum(f"GET /v1/sessions/{sid}/snapshot 403" in line for line in log)

    assert refused() == 1
    # No retry loop: the absence of a retry can only be seen over time. The old loop
    # retried after 0.5 s, 1 s and 2 s.
    time.sleep(2.5)
    assert refused() == 1
    assert len(page.evaluate("window.__errors")) == 1
    # A token with the right again: the hub reloads the session (new epoch, new title).
    page.evaluate("(t) => window.__client.setAccessToken(t)", token(subject="erin"))
    page.wait_for_function(
        "(sid) => (window.__client.getState(sid) || {}).title === 'after the reset'",
        arg=sid,
        timeout=15_000,
    )
    assert not errors, errors


def test_13_view_of_a_forbidden_session_settles(auth_stack, device) -> None:
    """view() of a session the hub gives up on (a fatal error: 403 forbidden) resolves with
    null instead of never settling, also when called again; the client keeps working."""
    _, gw = auth_stack
    admin = bearer(token())
    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"mine-{tag}", f"theirs-{tag}"
    for sid in (mine, theirs):
        r = httpx.post(f"{gw.url}/v1/sessions", json={"session_id": sid}, headers=admin, timeout=5)
        assert r.status_code in (200, 201), r.text
    page, errors = open_client(device, gw, token([f"mine-{tag}"], subject="frank"))
    out = page.evaluate(
        """async (sid) => {
            const c = window.__client;
            // A time limit only to fail clearly rather than hang the test.
            const limit = () => new Promise((r) => { setTimeout(() => r('pending'), 15000); });
            const first = await Promise.race([c.view(sid), limit()]);
            const again = await Promise.race([c.view(sid), limit()]);
            const watched = await Promise.race([c.watch(sid), limit()]);
            return { first, again, watched, errors: window.__errors };
        }""",
        theirs,
    )
    assert out["first"] is None and out["again"] is None and out["watched"] is None, out
    assert [(e["sessionId"], e["fatal"], e["status"]) for e in out["errors"]] == [
        (theirs, True, 403)
    ], out
    state = page.evaluate("(sid) => window.__client.view(sid)", mine)
    assert state["session_id"] == mine, state
    assert not errors, errors
