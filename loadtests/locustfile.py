"""Locust users for the gateway: viewers that switch sessions, stream churn, publishers.

Used by the connection-leak soak (``python -m loadtests.soak``, see docs/loadtests.md), and
usable alone against any deployment, for example the docker-compose stack::

    locust -f loadtests/locustfile.py --headless -u 40 -r 10 -t 60s \\
        --host http://127.0.0.1:8080 --soak-sessions 8

User classes:

- ``Viewer``: one manual-commit connection per session it visits. Attaches, reads events,
  acks the last processed offset, detaches, switches session, later reattaches (on either
  replica) and resumes from the stored offset. Every event's offset is checked against the
  viewer's own per-session sequence: a hole is a ``gap`` failure, a repeat a ``duplicate``
  failure. Publish->SSE latency of live events is the ``sse_latency`` request metric.
- ``Churn``: opens and drops streams as fast as it can (plain, connection, mux, activity),
  dropping them cleanly, by aborting the socket mid-stream (RST), before the response
  arrived, or by taking the same connection/mux over from the other replica.
- ``Publisher``: realistic runs through ``POST /v1/sessions/{sid}/events`` (run.started,
  reasoning and message deltas in small batches, a tool call, run.completed); every event
  carries ``t_ns``. Now and then it asks the demo worker for a run (``POST .../runs``).

Options (``--soak-*``, also in the web UI) set the gateways, sessions and publishers, and
``--soak-report PATH`` makes the run write a JSON summary (request stats, errors and the
counters below) every 2 s and at exit; the soak runner reads it.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import random
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment

# Counters the report carries next to Locust's request stats (streams opened per kind,
# drops per mode, events checked, takeovers seen, ...). One Locust process, gevent: no locks.
COUNTERS: Counter[str] = Counter()

STREAM_KINDS = ("plain", "connection", "mux", "activity")
# How Churn drops a stream: read a little then close; abort (RST) mid-stream; close before
# the response arrived; attach the same connection/mux on the other replica first.
DROP_MODES = ("clean", "abort", "early", "takeover")
DROP_WEIGHTS = (4, 4, 2, 1)

PROMPTS = (
    "How does reconnect resume from the stored offset?",
    "Summarise the retention settings of the event log",
    "Which metrics show a slow consumer?",
    "Explain the multiplexed browser stream",
    "What happens when a worker dies mid-run?",
)
WORDS = (
    "the", "gateway", "keeps", "every", "event", "of", "a", "session", "in", "a", "Redis",
    "stream", "so", "a", "viewer", "that", "comes", "back", "resumes", "from", "its", "stored",
    "offset", "without", "gaps", "or", "duplicates", "and", "the", "pane", "is", "a", "projection",
)  # fmt: skip


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("gateway soak")
    group.add_argument(
        "--soak-gateways",
        default="",
        help="comma-separated base URLs of the gateway replicas (default: --host)",
    )
    group.add_argument("--soak-sessions", type=int, default=8, help="sessions published to")
    group.add_argument(
        "--soak-prefix", default="soak", help="session id prefix (sessions <prefix>-<n>)"
    )
    group.add_argument(
        "--soak-publishers", type=int, default=2, help="Publisher users (fixed count)"
    )
    group.add_argument(
        "--soak-churn-pause",
        type=float,
        default=0.0,
        help="seconds a Churn user waits between streams (0: as fast as it can)",
    )
    group.add_argument(
        "--soak-worker-runs",
        type=float,
        default=0.15,
        help="probability that a Publisher run is a demo-worker run (POST .../runs)",
    )
    group.add_argument("--soak-report", default="", help="write a JSON summary to this path")


@dataclass(frozen=True)
class Options:
    gateways: tuple[str, ...]
    sessions: tuple[str, ...]  # published over HTTP by Publisher users
    worker_session: str  # runs played by the demo worker
    publishers: int
    churn_pause: float
    worker_runs: float
    report: str

    @property
    def viewable(self) -> tuple[str, ...]:
        return (*self.sessions, self.worker_session)


def options(env: Environment) -> Options:
    opts = env.parsed_options
    host = (env.host or "http://127.0.0.1:8000").rstrip("/")
    gws = [g.strip().rstrip("/") for g in (getattr(opts, "soak_gateways", "") or "").split(",")]
    prefix = getattr(opts, "soak_prefix", "soak")
    n = max(1, int(getattr(opts, "soak_sessions", 8)))
    return Options(
        gateways=tuple(g for g in gws if g) or (host,),
        sessions=tuple(f"{prefix}-{i}" for i in range(n)),
        worker_session=f"{prefix}-w",
        publishers=max(1, int(getattr(opts, "soak_publishers", 2))),
        churn_pause=float(getattr(opts, "soak_churn_pause", 0.0)),
        worker_runs=float(getattr(opts, "soak_worker_runs", 0.15)),
        report=getattr(opts, "soak_report", ""),
    )


# --- SSE over a plain socket -------------------------------------------------------------------
#
# Why http.client and not the Locust client: FastHttpUser's ``iter_lines`` fills a 1 KiB
# buffer before it yields, and ``requests``' ``iter_lines`` needs ``chunk_size=1`` to avoid
# the same, costing one Python call per byte. ``http.client`` on Locust's gevent-patched
# socket decodes the chunked body, and ``HTTPResponse.readline()`` returns as soon as a
# whole line is in the socket buffer (it peeks what has arrived, it never waits to fill a
# buffer), so each event is timed when its last line arrives. It also hands out the raw
# socket, which Churn needs to drop a stream with a TCP reset mid-response.


class StreamFailure(Exception):
    """An SSE stream did not behave as the contract says."""


class SequenceFailure(Exception):
    """A viewer saw a hole or a repeat in its session's offsets."""


@dataclass
class Frame:
    id: str | None
    event: str
    data: str


class SSE:
    """One SSE response read line by line; ``frames(deadline)`` yields parsed frames."""

    def __init__(self, base: str, path: str, timeout: float = 10.0) -> None:
        url = urlsplit(base)
        self.url = base + path
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=timeout)
        self.path = path
        self.sock: socket.socket | None = None
        self.resp: http.client.HTTPResponse | None = None
        self.ended = False  # the server ended the response
        self.comments = 0

    def send(self) -> None:
        """Connect and send the request (the response is not read)."""
        self.conn.request(
            "GET", self.path, headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        )
        self.sock = self.conn.sock

    def start(self) -> int:
        """Send the request and read the status line and headers; returns the status."""
        self.send()
        self.resp = self.conn.getresponse()
        return self.resp.status

    def body(self) -> str:
        assert self.resp is not None
        return self.resp.read(2000).decode(errors="replace")

    def frames(self, deadline: float) -> Iterator[Frame]:
        """Frames until ``deadline`` (monotonic) or the end of the response."""
        assert self.resp is not None and self.sock is not None
        fid: str | None = None
        event, data = "message", []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                raw = self.resp.readline()
            except TimeoutError:
                return  # dwell over; the response is abandoned, never read again
            if not raw:
                self.ended = True
                return
            line = raw.rstrip(b"\r\n").decode()
            if not line:
                if data or fid is not None:
                    yield Frame(fid, event, "\n".join(data))
                fid, event, data = None, "message", []
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id":
                    fid = value
                elif name == "event":
                    event = value

    def close(self) -> None:
        """Orderly close, as a browser navigating away (FIN; RST if unread data is queued)."""
        with contextlib.suppress(Exception):
            if self.resp is not None:
                self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()

    def abort(self) -> None:
        """Drop the connection with a TCP reset, whatever the server is sending."""
        with contextlib.suppress(Exception):
            if self.sock is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


def parse_offset(offset: str) -> tuple[str, int]:
    epoch, _, seq = offset.partition("_")
    return epoch, int(seq)


def fmt_offset(epoch: str, seq: int) -> str:
    return f"{epoch}_{seq:012d}"


# --- users ---------------------------------------------------------------------------------------


class GatewayUser(FastHttpUser):
    """Shared helpers: the options, report of SSE metrics, opening streams."""

    abstract = True
    connection_timeout = 5.0
    network_timeout = 10.0

    def on_start(self) -> None:
        self.opts = options(self.environment)

    def gateway(self, avoid: str | None = None) -> str:
        choices = [g for g in self.opts.gateways if g != avoid] or list(self.opts.gateways)
        return random.choice(choices)

    def fire(
        self,
        name: str,
        response_time: float = 0.0,
        exception: Exception | None = None,
        request_type: str = "SSE",
    ) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time,
            response_length=0,
            exception=exception,
            context={},
        )

    def open_stream(self, kind: str, base: str, path: str) -> SSE | None:
        """Open an SSE response; reports ``GET stream [kind]`` (time to headers)."""
        t0 = time.perf_counter()
        sse = SSE(base, path, timeout=self.network_timeout)
        name = f"GET stream [{kind}]"
        try:
            status = sse.start()
            if status != 200:
                raise StreamFailure(f"{path}: HTTP {status} {sse.body()}")
            ctype = sse.resp.getheader("content-type", "") if sse.resp else ""
            if not ctype.startswith("text/event-stream"):
                raise StreamFailure(f"{path}: content-type {ctype!r}")
        except (OSError, http.client.HTTPException, StreamFailure) as exc:
            sse.abort()
            self.fire(name, (time.perf_counter() - t0) * 1000, exc)
            return None
        self.fire(name, (time.perf_counter() - t0) * 1000)
        COUNTERS[f"opened:{kind}"] += 1
        return sse

    def post_json(self, base: str, path: str, body: Any, name: str) -> Any:
        """POST JSON; the decoded response body, or None when it failed (reported)."""
        resp = self.client.post(base + path, json=body, name=name)
        if resp.status_code >= 400 or resp.status_code == 0:
            return None
        return resp.json() if resp.text else {}


@dataclass
class Cursor:
    """A viewer's connection to one session and the last offset it processed and acked."""

    cid: str
    epoch: str
    seq: int  # last processed
    acked: int  # last acked (what the gateway stores)


class Viewer(GatewayUser):
    """Switches between sessions, resuming each from its stored (manually acked) offset."""

    weight = 3
    wait_time = between(0.1, 0.5)
    dwell = (0.5, 3.0)  # seconds attached to a session before switching

    def on_start(self) -> None:
        super().on_start()
        self.cursors: dict[str, Cursor] = {}
        self.current: str | None = None

    def _connect(self, sid: str) -> Cursor | None:
        body = self.post_json(
            self.gateway(),
            f"/v1/sessions/{sid}/connections",
            {"from": "start", "commit": "manual"},
            "POST /connections",
        )
        if body is None:
            return None
        epoch, seq = parse_offset(body["offset"])
        return Cursor(body["connection_id"], epoch, seq, seq)

    @task
    def visit(self) -> None:
        sid = random.choice([s for s in self.opts.viewable if s != self.current])
        self.current = sid
        cur = self.cursors.get(sid) or self._connect(sid)
        if cur is None:
            return
        self.cursors[sid] = cur
        path = f"/v1/sessions/{sid}/connections/{cur.cid}/events"
        sse = self.open_stream("connection", self.gateway(), path)
        if sse is None:
            return
        COUNTERS["viewer:attaches"] += 1
        attached_ns = time.time_ns()
        deadline = time.monotonic() + random.uniform(*self.dwell)
        try:
            for frame in sse.frames(deadline):
                if frame.event == "close":
                    self.fire("superseded", exception=StreamFailure(f"{sid}: {frame.data}"))
                    break
                if frame.event == "reset":
                    # Explicit, so not a silent gap: rebase on the offset it names.
                    COUNTERS["viewer:resets"] += 1
                    self.fire("reset")
                    cur.epoch, cur.seq = parse_offset(json.loads(frame.data)["offset"])
                    continue
                if frame.id:
                    self._check(sid, cur, frame, attached_ns)
            if sse.ended:
                self.fire("stream_ended", exception=StreamFailure(f"{sid}: server ended stream"))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.fire("stream_error", exception=exc)
        except BaseException:  # killed at the end of the test: no ack, just go
            sse.abort()
            raise
        if cur.seq != cur.acked:
            self._ack(sid, cur)  # ack what was processed, then detach
        sse.close()

    def _check(self, sid: str, cur: Cursor, frame: Frame, attached_ns: int) -> None:
        assert frame.id is not None
        epoch, seq = parse_offset(frame.id)
        COUNTERS["viewer:events"] += 1
        if epoch != cur.epoch:
            self.fire("epoch", exception=SequenceFailure(f"{sid}: epoch {cur.epoch} -> {epoch}"))
            cur.epoch, cur.seq = epoch, seq
            return
        if seq <= cur.seq:
            exc = SequenceFailure(f"{sid}: seq {seq} after {cur.seq}")
            self.fire("duplicate", exception=exc, request_type="SEQ")
            return
        if seq != cur.seq + 1:
            exc = SequenceFailure(f"{sid}: seq {seq} after {cur.seq} ({seq - cur.seq - 1} missing)")
            self.fire("gap", exception=exc, request_type="SEQ")
        cur.seq = seq
        t_ns = json.loads(frame.data).get("data", {}).get("t_ns")
        if isinstance(t_ns, int) and t_ns >= attached_ns:  # published while attached: live
            self.fire("sse_latency", (time.time_ns() - t_ns) / 1e6)

    def _ack(self, sid: str, cur: Cursor) -> None:
        offset = fmt_offset(cur.epoch, cur.seq)
        ok = self.post_json(
            self.gateway(),
            f"/v1/sessions/{sid}/connections/{cur.cid}/ack",
            {"offset": offset},
            "POST /ack",
        )
        if ok is None:
            # Not stored: the next attach redelivers from the last ack, which is correct.
            cur.seq = cur.acked
        else:
            cur.acked = cur.seq


class Churn(GatewayUser):
    """Opens and drops streams of every kind, cleanly and not, as fast as it can."""

    weight = 1
    mux_reuse = 20  # attaches of one mux before a fresh one (bounds its catch-up)

    def wait_time(self) -> float:
        return self.opts.churn_pause

    def on_start(self) -> None:
        super().on_start()
        self.cids: dict[str, str] = {}
        self.mux_id: str | None = None
        self.mux_subs: set[str] = set()
        self.mux_uses = 0

    def _path(self, kind: str) -> str | None:
        sid = random.choice(self.opts.viewable)
        if kind == "plain":
            return f"/v1/sessions/{sid}/events?from=live"
        if kind == "activity":
            return "/v1/activity"
        if kind == "connection":
            if sid not in self.cids:
                body = self.post_json(
                    self.gateway(),
                    f"/v1/sessions/{sid}/connections",
                    {"from": "live", "commit": "auto"},
                    "POST /connections",
                )
                if body is None:
                    return None
                self.cids[sid] = body["connection_id"]
            return f"/v1/sessions/{sid}/connections/{self.cids[sid]}/events"
        if self.mux_id is None or self.mux_uses >= self.mux_reuse:
            body = self.post_json(self.gateway(), "/v1/mux", {}, "POST /mux")
            if body is None:
                return None
            self.mux_id, self.mux_subs, self.mux_uses = body["mux_id"], set(), 0
            for s in random.sample(self.opts.viewable, 2):
                self._subscribe(s)
        self.mux_uses += 1
        return f"/v1/mux/{self.mux_id}/events"

    def _subscribe(self, sid: str) -> None:
        resp = self.client.put(
            f"{self.gateway()}/v1/mux/{self.mux_id}/sessions/{sid}",
            json={"from": "live"},
            name="PUT /mux/sessions",
        )
        if resp.status_code == 200:
            self.mux_subs.add(sid)

    def _toggle_subscription(self) -> None:
        """Change the mux's subscriptions while its stream is attached."""
        if len(self.mux_subs) > 1 and random.random() < 0.5:
            sid = random.choice(sorted(self.mux_subs))
            self.client.delete(
                f"{self.gateway()}/v1/mux/{self.mux_id}/sessions/{sid}",
                name="DELETE /mux/sessions",
            )
            self.mux_subs.discard(sid)
        else:
            self._subscribe(random.choice(self.opts.viewable))

    @task
    def churn(self) -> None:
        kind = random.choice(STREAM_KINDS)
        mode = random.choices(DROP_MODES, DROP_WEIGHTS)[0]
        if mode == "takeover" and kind not in ("connection", "mux"):
            mode = "abort"
        path = self._path(kind)
        if path is None:
            return
        base = self.gateway()
        COUNTERS[f"drop:{mode}"] += 1
        if mode == "early":
            sse = SSE(base, path, timeout=self.network_timeout)
            with contextlib.suppress(OSError, http.client.HTTPException):
                sse.send()
            (sse.abort if random.random() < 0.5 else sse.close)()
            COUNTERS[f"opened:{kind}"] += 1
            return
        sse = self.open_stream(kind, base, path)
        if sse is None:
            return
        try:
            if mode == "takeover":
                self._takeover(kind, sse, base, path)
                return
            if kind == "mux" and random.random() < 0.3:
                self._toggle_subscription()
            deadline = time.monotonic() + random.uniform(0.0, 0.3)
            for n, _ in enumerate(sse.frames(deadline)):
                if n >= 5:
                    break
        except (OSError, http.client.HTTPException) as exc:
            self.fire("stream_error", exception=exc)
        finally:
            sse.close() if mode == "clean" else sse.abort()

    def _takeover(self, kind: str, old: SSE, base: str, path: str) -> None:
        """Attach the same connection/mux on the other replica: the old stream must close."""
        new = self.open_stream(kind, self.gateway(avoid=base), path)
        if new is None:
            old.abort()
            return
        t0 = time.perf_counter()
        closed = False
        try:
            for frame in old.frames(time.monotonic() + 5.0):
                if frame.event == "close":
                    closed = True
                    break
        except (OSError, http.client.HTTPException):
            pass
        ms = (time.perf_counter() - t0) * 1000
        if closed:
            COUNTERS["takeover:closed"] += 1
            self.fire(f"takeover [{kind}]", ms)
        else:
            self.fire(f"takeover [{kind}]", ms, StreamFailure("old stream not superseded in 5 s"))
        old.close()
        with contextlib.suppress(OSError, http.client.HTTPException):
            for _ in new.frames(time.monotonic() + random.uniform(0.0, 0.2)):
                pass
        (new.abort if random.random() < 0.5 else new.close)()


_publisher_index = itertools.count()


class Publisher(GatewayUser):
    """Plays agent runs over the HTTP publish endpoint; every event carries ``t_ns``."""

    fixed_count = 2  # set from --soak-publishers at init
    wait_time = between(0.2, 0.8)

    def on_start(self) -> None:
        super().on_start()
        index = next(_publisher_index)
        n = self.opts.publishers
        # Each publisher owns its sessions, so runs of one session never interleave.
        self.own = [s for i, s in enumerate(self.opts.sessions) if i % n == index % n]
        self.own = self.own or list(self.opts.sessions)
        self.titled: set[str] = set()

    def _publish(self, sid: str, run_id: str, evs: list[tuple[str, dict[str, Any]]]) -> None:
        batch = [
            {"type": t, "run_id": run_id, "data": {**d, "t_ns": time.time_ns()}} for t, d in evs
        ]
        name = "POST /events (publish)"
        if self.post_json(self.gateway(), f"/v1/sessions/{sid}/events", {"events": batch}, name):
            COUNTERS["published"] += len(batch)

    def _deltas(self, sid: str, run_id: str, kind: str, count: int) -> None:
        left = count
        while left > 0:
            n = min(left, random.randint(1, 4))
            text = [" " + random.choice(WORDS) for _ in range(n)]
            self._publish(sid, run_id, [(kind, {"text": t}) for t in text])
            left -= n
            gevent.sleep(random.uniform(0.03, 0.12))

    @task
    def play_run(self) -> None:
        if random.random() < self.opts.worker_runs:
            self._worker_run()
            return
        sid = random.choice(self.own)
        run_id = "r-" + uuid.uuid4().hex[:12]
        prompt = random.choice(PROMPTS)
        self._publish(sid, run_id, [("run.started", {"input": prompt})])
        if sid not in self.titled:
            self._publish(sid, run_id, [("session.title", {"title": prompt[:40]})])
            self.titled.add(sid)
        self._deltas(sid, run_id, "reasoning.delta", random.randint(5, 20))
        call = "tc-" + uuid.uuid4().hex[:8]
        args = {"query": prompt}
        self._publish(
            sid,
            run_id,
            [("tool.started", {"tool_call_id": call, "name": "search_docs", "args": args})],
        )
        t0 = time.perf_counter()
        gevent.sleep(random.uniform(0.05, 0.3))
        done = {
            "tool_call_id": call,
            "output": "README.md:42 offsets are <epoch>_<seq>",
            "is_error": False,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        self._publish(sid, run_id, [("tool.completed", done)])
        self._deltas(sid, run_id, "message.delta", random.randint(20, 60))
        self._publish(sid, run_id, [("run.completed", {})])
        COUNTERS["runs"] += 1

    def _worker_run(self) -> None:
        """Ask the demo worker for a run; 409 while its previous run still plays is fine."""
        url = f"{self.gateway()}/v1/sessions/{self.opts.worker_session}/runs"
        prompt = {"input": random.choice(PROMPTS)}
        with self.client.post(url, json=prompt, name="POST /runs", catch_response=True) as resp:
            if resp.status_code == 409:
                resp.success()
            elif resp.status_code == 202:
                COUNTERS["worker_runs"] += 1


# --- report ------------------------------------------------------------------------------------


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is not None:
        Publisher.fixed_count = options(environment).publishers


def report(env: Environment) -> dict[str, Any]:
    """Request stats (with percentiles), errors and counters of this process."""
    rows = []
    for (name, method), e in sorted(env.stats.entries.items()):
        if not e.num_requests and not e.num_failures:
            continue
        rows.append(
            {
                "type": method,
                "name": name,
                "requests": e.num_requests,
                "failures": e.num_failures,
                "avg_ms": round(e.avg_response_time, 2),
                "p50_ms": e.get_response_time_percentile(0.5),
                "p95_ms": e.get_response_time_percentile(0.95),
                "p99_ms": e.get_response_time_percentile(0.99),
                "max_ms": round(e.max_response_time or 0, 2),
            }
        )
    errors = [
        {"type": e.method, "name": e.name, "error": str(e.error), "occurrences": e.occurrences}
        for e in env.stats.errors.values()
    ]
    errors.sort(key=lambda e: -e["occurrences"])
    total = env.stats.total
    return {
        "time": time.time(),
        "users": env.runner.user_count if env.runner else 0,
        "total": {"requests": total.num_requests, "failures": total.num_failures},
        "requests": rows,
        "errors": errors[:50],
        "counters": dict(COUNTERS),
    }


def _write_report(env: Environment) -> None:
    path = options(env).report if env.parsed_options is not None else ""
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(report(env), f)
    os.replace(tmp, path)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    def loop() -> None:
        while True:
            gevent.sleep(2.0)
            _write_report(environment)

    if environment.parsed_options is not None and options(environment).report:
        gevent.spawn(loop)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    _write_report(environment)
