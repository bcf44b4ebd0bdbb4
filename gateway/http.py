"""HTTP: the Litestar application — routes, JSON errors, lifespan, static viewer UI.

Handlers validate input, call ``streams``/``publisher``/``snapshot`` and hand SSE responses
to ``connections.EventStream``. Every error body is ``{"code", "message"}``; the paths are
the contract documented in docs/api.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath
from litestar.response import Stream
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway import durable, events, offsets, snapshot
from gateway.aio import cancel_and_wait
from gateway.auth import Authenticator, AuthError, Principal
from gateway.connections import (
    Consumer,
    EventStream,
    OffsetAhead,
    Start,
    StreamDeps,
    resolve,
)
from gateway.hub import Hub, Slot
from gateway.leases import end_orphan, reap_forever
from gateway.metrics import Metrics
from gateway.mux import MuxStream, activity_frames
from gateway.publisher import EventIn, Publisher, new_run_id
from gateway.redisconn import connect
from gateway.settings import Settings
from gateway.streams import PublishRejected, SessionMeta, StoredConnection, Streams

log = logging.getLogger(__name__)

MAX_BATCH = 500
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
    "Connection": "keep-alive",
}


class ApiError(Exception):
    """An error answered as ``{"code", "message"}`` with HTTP ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class Runtime:
    """Everything a request handler needs, built once per process in the lifespan."""

    settings: Settings
    streams: Streams
    publisher: Publisher
    hub: Hub
    metrics: Metrics
    auth: Authenticator
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def draining(self) -> bool:
        """Whether a drain began (the hub holds the flag: it also drains late streams)."""
        return self.hub.draining

    @property
    def deps(self) -> StreamDeps:
        """What the SSE streams of this process share."""
        return StreamDeps(self.streams, self.hub, self.settings, self.metrics)

    def begin_drain(self) -> None:
        """Start a graceful shutdown (SIGTERM): readiness fails, new streams are refused
        with 503 ``draining``, and open streams end with a short ``retry`` hint so their
        viewers resume from their stored offsets on another replica."""
        if self.draining:
            return
        log.warning("draining: closing %d channel(s) of open streams", self.hub.channel_count)
        self.hub.drain(self.settings.drain_spread)

    def refuse_if_draining(self) -> None:
        """Raises ApiError 503 ``draining`` (with ``Retry-After``) once a drain began."""
        if self.draining:
            raise ApiError(
                503,
                "draining",
                "this replica is shutting down; retry (another replica will answer)",
                {"Retry-After": "1"},
            )


def _drain_on_signals(rt: Runtime) -> Callable[[], None]:
    """Chain ``rt.begin_drain`` before the server's own SIGTERM/SIGINT handlers.

    uvicorn installs its handlers with ``signal.signal`` before the lifespan starts and
    then only stops accepting connections and waits for responses to end; SSE responses
    never end by themselves, so the application has to hear the signal too. Returns a
    function restoring the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach only the main thread (e.g. test clients)
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if not callable(prev):
            continue  # no server handler to chain to: leave the default behaviour alone
        previous[sig] = prev

        def handler(signum: int, frame: FrameType | None, prev: Any = prev) -> None:
            loop.call_soon_threadsafe(rt.begin_drain)
            prev(signum, frame)

        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, prev)

    return restore


def _rt(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _bearer(request: Request[Any, Any, Any]) -> str | None:
    """The request's token: ``Authorization: Bearer …``, else ``?access_token=`` (EventSource
    cannot set headers; keep such URLs out of access logs)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query_params.get("access_token") or None


def _authz(
    request: Request[Any, Any, Any], action: str, sid: str | None = None
) -> tuple[Runtime, Principal]:
    """The runtime and the caller's principal, which must hold ``action`` (on ``sid``).

    Raises:
        AuthError: 401 without a valid token, 403 when the token does not grant it.
    """
    rt = _rt(request)
    principal = rt.auth.authenticate(_bearer(request))
    principal.require(action, sid)
    return rt, principal


SLOT_MAX_AGE_S = 86_400.0  # a slot left by a crashed replica stops counting after a day


async def _rate(rt: Runtime, who: Principal) -> None:
    """Count a stream or connection opened by ``who``; 429 ``rate_limited`` past the limit.

    Only with tokens: without them every caller is the one anonymous subject.
    """
    if not rt.auth.configured:
        return
    count, retry_after = await rt.streams.hit_rate(who.subject)
    if count > rt.settings.connection_rate:
        raise ApiError(
            429,
            "rate_limited",
            f"{who.subject!r} opened more than {rt.settings.connection_rate} streams or "
            "connections this minute",
            {"Retry-After": str(max(1, retry_after))},
        )


async def _admit(rt: Runtime, who: Principal) -> Slot | None:
    """Rate-check a new stream of ``who`` and take one of its stream slots: past
    ``max_streams_per_subject`` its oldest stream ends with ``event: close`` superseded."""
    if not rt.auth.configured:
        return None
    await _rate(rt, who)
    slot = Slot(who.subject, rt.streams.subject_channel(who.subject), secrets.token_hex(8))
    await rt.streams.open_slot(
        who.subject, slot.slot, rt.settings.max_streams_per_subject, SLOT_MAX_AGE_S
    )
    return slot


def _owner(rt: Runtime, principal: Principal) -> str:
    """What is stored as a connection's or mux's owner ('' when tokens are not checked)."""
    return principal.subject if rt.auth.configured else ""


def _owned_conn(
    rt: Runtime, principal: Principal, conn: StoredConnection | None, cid: str
) -> StoredConnection:
    """``conn`` if it exists and belongs to the caller; else 404 (a leaked id reads nothing)."""
    if conn is None or conn.subject != _owner(rt, principal):
        raise ApiError(404, "connection_not_found", f"no connection {cid!r}")
    return conn


def _check_id(value: str, what: str) -> str:
    if not events.valid_id(value):
        raise ApiError(400, "invalid_id", f"{what} {value!r} is not a valid id")
    return value


async def _json_body(request: Request[Any, Any, Any], *, optional: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "request body is empty")
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ApiError(400, "too_deep", "request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from exc


async def _meta_or_create(rt: Runtime, sid: str) -> SessionMeta:
    meta = await rt.streams.meta(sid)
    if meta is None:
        await rt.streams.ensure_session(sid)
        meta = await rt.streams.meta(sid)
    assert meta is not None
    return meta


def _resolve(meta: SessionMeta, cursor: str) -> Start:
    try:
        return resolve(meta, cursor)
    except offsets.InvalidOffset as exc:
        raise ApiError(400, "invalid_offset", str(exc)) from exc
    except OffsetAhead as exc:
        raise ApiError(409, "offset_ahead", str(exc)) from exc


def _cursor_offset(meta: SessionMeta, cursor: str) -> str:
    """The offset to store for a new consumer starting at ``cursor``.

    Named cursors resolve now; an explicit offset is validated (400/409) and stored as given,
    so another epoch or a trimmed offset is reported with a ``reset`` when it attaches.
    """
    start = _resolve(meta, cursor)
    if cursor in ("start", "run", "live"):
        return offsets.format_offset(start.epoch, start.after_seq)
    return str(offsets.parse(cursor))


def _last_event_id(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return value or None


def _sse(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def _sse_stream(
    rt: Runtime,
    sid: str,
    start: Start,
    consumer: Consumer | None = None,
    slot: Slot | None = None,
    expires: float | None = None,
) -> Stream:
    stream = EventStream(
        rt.deps, session_id=sid, start=start, consumer=consumer, slot=slot, expires=expires
    )
    return _sse(stream.frames())


def _meta_json(m: SessionMeta) -> dict[str, Any]:
    return {
        "session_id": m.session_id,
        "epoch": m.epoch,
        "status": m.status,
        "title": m.title,
        "first_offset": offsets.format_offset(m.epoch, m.first_seq)
        if m.first_seq <= m.seq
        else None,
        "last_offset": offsets.format_offset(m.epoch, m.seq),
        "run_id": m.run_id or None,
        "run_first_offset": (
            offsets.format_offset(m.epoch, m.run_first_seq) if m.run_first_seq else None
        ),
        "updated_ms": m.updated_ms,
    }


# --- sessions -------------------------------------------------------------------------------
@post("/v1/sessions", status_code=201)
async def create_session(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Create a session (or return an existing one): ``{"session_id", "offset"}``."""
    body = await _json_body(request, optional=True)
    sid = body.get("session_id") if isinstance(body, dict) else None
    sid = _check_id(sid, "session_id") if sid is not None else "s-" + secrets.token_hex(6)
    rt, _ = _authz(request, "command", sid)
    epoch, seq, created = await rt.streams.ensure_session(sid)
    if created:
        await rt.streams.record_activity(sid, {"status": "idle", "created": True})
    return {"session_id": sid, "offset": offsets.format_offset(epoch, seq)}


@get("/v1/sessions")
async def list_sessions(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Sessions for a sidebar, most recently active first (those the token may view)."""
    rt, who = _authz(request, "view")
    metas = await rt.streams.list_sessions(visible=who.sees)
    return {
        "sessions": [
            {
                "session_id": m.session_id,
                "status": m.status,
                "title": m.title,
                "run_id": m.run_id or None,
                "last_offset": offsets.format_offset(m.epoch, m.seq),
                "updated_ms": m.updated_ms,
            }
            for m in metas
        ]
    }


@get("/v1/sessions/{session_id:str}")
async def get_session(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    """A session's metadata."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "view", sid)
    meta = await rt.streams.meta(sid)
    if meta is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return _meta_json(meta)


@get("/v1/sessions/{session_id:str}/snapshot")
async def get_snapshot(
    request: Request[Any, Any, Any], session_id: FromPath[str]
) -> dict[str, Any]:
    """The session's folded state and the offset it is valid at."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "view", sid)
    res = await snapshot.load(rt.streams, sid)
    if res is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return {"offset": res[0], "state": res[1]}


# --- connections ----------------------------------------------------------------------------
@post("/v1/sessions/{session_id:str}/connections", status_code=201)
async def create_connection(
    request: Request[Any, Any, Any], session_id: FromPath[str]
) -> dict[str, Any]:
    """Create a consumer with a stored offset: ``{"connection_id", "offset", "commit"}``."""
    sid = _check_id(session_id, "session_id")
    rt, who = _authz(request, "view", sid)
    body = await _json_body(request, optional=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    cursor = body.get("from", "live")
    commit = body.get("commit", "auto")
    if not isinstance(cursor, str):
        raise ApiError(400, "invalid_offset", "from must be start, run, live or an offset")
    if commit not in ("auto", "manual"):
        raise ApiError(400, "invalid_commit", "commit must be auto or manual")
    meta = await _meta_or_create(rt, sid)
    offset = _cursor_offset(meta, cursor)
    await _rate(rt, who)
    cid = "c-" + secrets.token_hex(8)
    await rt.streams.create_connection(
        sid, cid, offset, commit, rt.settings.connection_ttl, _owner(rt, who)
    )
    rt.metrics.connections_created.inc()
    return {"connection_id": cid, "offset": offset, "commit": commit}


@get("/v1/sessions/{session_id:str}/connections/{connection_id:str}")
async def get_connection(
    request: Request[Any, Any, Any], session_id: FromPath[str], connection_id: FromPath[str]
) -> dict[str, Any]:
    """A consumer's stored offset and commit mode."""
    sid = _check_id(session_id, "session_id")
    cid = _check_id(connection_id, "connection_id")
    rt, who = _authz(request, "view", sid)
    conn = _owned_conn(rt, who, await rt.streams.get_connection(sid, cid), cid)
    return {"connection_id": conn.connection_id, "offset": conn.offset, "commit": conn.commit}


@get("/v1/sessions/{session_id:str}/connections/{connection_id:str}/events")
async def connection_events(
    request: Request[Any, Any, Any], session_id: FromPath[str], connection_id: FromPath[str]
) -> Stream:
    """SSE from the consumer's stored offset (``Last-Event-ID`` wins when present)."""
    sid = _check_id(session_id, "session_id")
    cid = _check_id(connection_id, "connection_id")
    rt, who = _authz(request, "view", sid)
    rt.refuse_if_draining()
    conn = _owned_conn(rt, who, await rt.streams.get_connection(sid, cid), cid)
    explicit = _last_event_id(request)
    meta = await _meta_or_create(rt, sid)
    if explicit:
        start = _resolve(meta, explicit)
    else:
        try:
            start = resolve(meta, conn.offset)
        except OffsetAhead:
            # A stored offset past the log's end means events the viewer saw were lost
            # (a Redis failover or restart without persistence): say so, from the head.
            start = Start(meta.epoch, meta.seq, "offset_ahead")
        except offsets.InvalidOffset as exc:
            raise ApiError(400, "invalid_offset", str(exc)) from exc
    token = secrets.token_hex(8)
    stored = offsets.format_offset(start.epoch, start.after_seq)
    moved = await rt.streams.commit(
        sid,
        cid,
        stored,
        rt.settings.connection_ttl,
        forward_only=not (explicit or start.reset),
        token=token,
        owner=_owner(rt, who),
    )
    if moved is None:
        raise ApiError(404, "connection_not_found", f"no connection {cid!r}")
    rt.metrics.attaches.inc()
    if conn.token:
        rt.metrics.reattaches.inc()
    await rt.streams.announce_attach(sid, cid, token)
    await rt.hub.evict(rt.streams.live_channel(sid), cid, token)
    return _sse_stream(
        rt, sid, start, Consumer(cid, conn.commit, token), await _admit(rt, who), who.expires
    )


@post("/v1/sessions/{session_id:str}/connections/{connection_id:str}/ack", status_code=204)
async def ack(
    request: Request[Any, Any, Any], session_id: FromPath[str], connection_id: FromPath[str]
) -> None:
    """Manual commit: move the stored offset forward to ``{"offset"}``."""
    sid = _check_id(session_id, "session_id")
    cid = _check_id(connection_id, "connection_id")
    rt, who = _authz(request, "view", sid)
    body = await _json_body(request)
    raw = body.get("offset") if isinstance(body, dict) else None
    if not isinstance(raw, str):
        raise ApiError(400, "invalid_offset", 'body must be {"offset": <offset>}')
    try:
        off = offsets.parse(raw)
    except offsets.InvalidOffset as exc:
        raise ApiError(400, "invalid_offset", str(exc)) from exc
    epoch, head = await rt.streams.head_seqs(sid)
    if epoch == off.epoch and off.seq > head:
        raise ApiError(409, "offset_ahead", f"offset {raw} is beyond the last event")
    stored = await rt.streams.commit(
        sid, cid, str(off), rt.settings.connection_ttl, forward_only=True, owner=_owner(rt, who)
    )
    if stored is None:
        raise ApiError(404, "connection_not_found", f"no connection {cid!r}")


@delete("/v1/sessions/{session_id:str}/connections/{connection_id:str}", status_code=204)
async def delete_connection(
    request: Request[Any, Any, Any], session_id: FromPath[str], connection_id: FromPath[str]
) -> None:
    """Forget the consumer and end any stream attached to it, on any replica."""
    sid = _check_id(session_id, "session_id")
    cid = _check_id(connection_id, "connection_id")
    rt, who = _authz(request, "view", sid)
    _owned_conn(rt, who, await rt.streams.get_connection(sid, cid), cid)
    if not await rt.streams.delete_connection(sid, cid):
        raise ApiError(404, "connection_not_found", f"no connection {cid!r}")
    await rt.streams.announce_attach(sid, cid, "deleted")
    await rt.hub.evict(rt.streams.live_channel(sid), cid, "deleted")


# --- plain stream and publishing --------------------------------------------------------------
@get("/v1/sessions/{session_id:str}/events")
async def session_events(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Stream:
    """Resumable SSE without a stored consumer: ``?from=`` or ``Last-Event-ID``."""
    sid = _check_id(session_id, "session_id")
    rt, who = _authz(request, "view", sid)
    rt.refuse_if_draining()
    cursor = _last_event_id(request) or request.query_params.get("from") or "start"
    start = _resolve(await _meta_or_create(rt, sid), cursor)
    return _sse_stream(rt, sid, start, slot=await _admit(rt, who), expires=who.expires)


@post("/v1/sessions/{session_id:str}/events", status_code=201)
async def publish_events(
    request: Request[Any, Any, Any], session_id: FromPath[str]
) -> dict[str, Any]:
    """Publish one event or ``{"events": [...]}`` atomically: ``{"offsets": [...]}``."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "publish", sid)
    body = await _json_body(request)
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise ApiError(400, "invalid_request", "events must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise ApiError(413, "batch_too_large", f"at most {MAX_BATCH} events per batch")
    else:
        items = [body]
    batch = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_event", f"event {i} is not a JSON object")
        batch.append(EventIn(item.get("type"), item.get("data") or {}, item.get("run_id")))  # type: ignore[arg-type]
    try:
        offs = await rt.publisher.publish_batch(sid, batch)
    except events.InvalidEvent as exc:
        raise ApiError(413 if exc.code == "event_too_large" else 400, exc.code, str(exc)) from exc
    except PublishRejected as exc:
        raise ApiError(409, exc.code, f"publish rejected: {exc.code}") from exc
    rt.metrics.events_published.inc(len(offs))
    return {"offsets": offs}


# --- commands -------------------------------------------------------------------------------
@post("/v1/sessions/{session_id:str}/runs", status_code=202)
async def start_run(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    """Start a run: ``run.started``, its ``queued`` lease and its worker command are written
    by one script; the command is then sent to the workers (a reaper sends it again if this
    process dies first)."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "command", sid)
    body = await _json_body(request)
    text = body.get("input") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "invalid_input", "input must be a non-empty string")
    run_id = new_run_id()
    command = {"kind": "run", "session_id": sid, "run_id": run_id, "input": text}
    try:
        await rt.publisher.start_run(sid, text, run_id=run_id, command=command)
    except PublishRejected as exc:
        raise ApiError(409, exc.code, "the session already has a running run") from exc
    try:
        await rt.streams.enqueue_command(command)
    except RedisError as exc:
        # The run is accepted and kept with its command: a reaper sends it again.
        log.warning("run %s of %s: command not sent yet (%r)", run_id, sid, exc)
    return {"run_id": run_id}


@post("/v1/sessions/{session_id:str}/runs/{run_id:str}/cancel", status_code=202)
async def cancel_run(
    request: Request[Any, Any, Any], session_id: FromPath[str], run_id: FromPath[str]
) -> dict[str, Any]:
    """Ask the worker running ``run_id`` to stop; it publishes the one ``run.cancelled``.

    A run no worker holds (none took it yet, or its worker is gone) is cancelled here and
    now; a frozen worker's run is cancelled by the reaper once its lease expires."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "command", sid)
    _check_id(run_id, "run_id")
    meta = await rt.streams.meta(sid)
    if meta is None:
        raise ApiError(404, "session_not_found", f"no session {sid!r}")
    if meta.run_id != run_id or meta.status != "running":
        raise ApiError(409, "run_not_active", f"run {run_id!r} is not running")
    await rt.streams.request_cancel(sid, run_id)
    await end_orphan(rt.publisher, sid, run_id)
    return {}


@post("/v1/sessions/{session_id:str}/approvals/{approval_id:str}", status_code=200)
async def answer_approval(
    request: Request[Any, Any, Any], session_id: FromPath[str], approval_id: FromPath[str]
) -> dict[str, Any]:
    """Answer a pending approval once: publishes ``approval.resolved``."""
    sid = _check_id(session_id, "session_id")
    rt, _ = _authz(request, "approve", sid)
    aid = _check_id(approval_id, "approval_id")
    body = await _json_body(request)
    decision = body.get("decision") if isinstance(body, dict) else None
    if decision not in ("approve", "deny"):
        raise ApiError(400, "invalid_decision", "decision must be approve or deny")
    run_id = await rt.streams.approval_run(sid, aid)
    if run_id is None:
        raise ApiError(404, "approval_not_found", f"no approval {aid!r}")
    try:
        offs = await rt.publisher.publish_batch(
            sid, [EventIn("approval.resolved", {"approval_id": aid, "decision": decision}, run_id)]
        )
    except PublishRejected as exc:
        status = 404 if exc.code == "approval_not_found" else 409
        raise ApiError(status, exc.code, f"approval {aid!r}: {exc.code}") from exc
    return {"offset": offs[0]}


# --- activity feed and the multiplexed browser stream --------------------------------------------
@get("/v1/activity")
async def activity(request: Request[Any, Any, Any]) -> Stream:
    """SSE feed of status changes of the sessions the token may view; ``Last-Event-ID``
    resumes."""
    rt, who = _authz(request, "view")
    rt.refuse_if_draining()
    after = _last_event_id(request) or await rt.streams.last_activity_id()
    return _sse(activity_frames(rt.deps, after, who.sees, await _admit(rt, who), who.expires))


async def _mux(
    request: Request[Any, Any, Any], mux_id: str, sid: str | None = None
) -> tuple[Runtime, Principal, dict[str, tuple[str, bool]]]:
    """The caller's mux sessions; 404 unless the mux exists and the caller created it."""
    rt, who = _authz(request, "view", sid)
    mux = await rt.streams.get_mux(_check_id(mux_id, "mux_id"), rt.settings.connection_ttl)
    if mux is None or mux.subject != _owner(rt, who):
        raise ApiError(404, "mux_not_found", f"no mux {mux_id!r}")
    return rt, who, mux.sessions


@post("/v1/mux", status_code=201)
async def create_mux(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Create a browser's multiplexed stream: ``{"mux_id"}``."""
    rt, who = _authz(request, "view")
    await _rate(rt, who)
    mux_id = "m-" + secrets.token_hex(8)
    await rt.streams.create_mux(mux_id, rt.settings.connection_ttl, _owner(rt, who))
    return {"mux_id": mux_id}


@get("/v1/mux/{mux_id:str}")
async def get_mux(request: Request[Any, Any, Any], mux_id: FromPath[str]) -> dict[str, Any]:
    """The sessions this mux has viewed, with this device's committed offsets."""
    rt, who, subs = await _mux(request, mux_id)
    subs = {sid: v for sid, v in subs.items() if who.sees(sid)}
    pairs = [(sid, cid) for sid, (cid, _) in subs.items()]
    conns = await rt.streams.get_connections(pairs)
    return {
        "mux_id": mux_id,
        "sessions": {
            sid: {
                "connection_id": cid,
                "offset": conn.offset if conn else None,
                "subscribed": subs[sid][1],
            }
            for (sid, cid), conn in zip(pairs, conns, strict=True)
        },
    }


@put("/v1/mux/{mux_id:str}/sessions/{session_id:str}", status_code=200)
async def subscribe_mux(
    request: Request[Any, Any, Any], mux_id: FromPath[str], session_id: FromPath[str]
) -> dict[str, str]:
    """Subscribe the mux to a session (``from`` replaces the stored offset when given)."""
    sid = _check_id(session_id, "session_id")
    rt, who, subs = await _mux(request, mux_id, sid)
    body = await _json_body(request, optional=True)
    cursor = body.get("from") if isinstance(body, dict) else None
    if cursor is not None and not isinstance(cursor, str):
        raise ApiError(400, "invalid_offset", "from must be start, run, live or an offset")
    meta = await _meta_or_create(rt, sid)
    ttl = rt.settings.connection_ttl
    cid = subs[sid][0] if sid in subs else "c-" + secrets.token_hex(8)
    conn = await rt.streams.get_connection(sid, cid) if sid in subs else None
    if conn is None or cursor is not None:
        offset = _cursor_offset(meta, cursor or "live")
        if conn is None:
            await rt.streams.create_connection(sid, cid, offset, "manual", ttl, _owner(rt, who))
            rt.metrics.connections_created.inc()
        else:
            await rt.streams.commit(sid, cid, offset, ttl, forward_only=False)
    else:
        offset = conn.offset
    await rt.streams.set_mux_session(mux_id, sid, cid, True, ttl)
    await rt.streams.notify_mux(mux_id, f"S\t{sid}")
    return {"connection_id": cid, "offset": offset}


@delete("/v1/mux/{mux_id:str}/sessions/{session_id:str}", status_code=204)
async def unsubscribe_mux(
    request: Request[Any, Any, Any], mux_id: FromPath[str], session_id: FromPath[str]
) -> None:
    """Stop streaming a session on this mux; its committed offset is kept."""
    sid = _check_id(session_id, "session_id")
    rt, _, subs = await _mux(request, mux_id)
    if sid in subs:
        await rt.streams.set_mux_session(
            mux_id, sid, subs[sid][0], False, rt.settings.connection_ttl
        )
        await rt.streams.notify_mux(mux_id, f"D\t{sid}")


@post("/v1/mux/{mux_id:str}/ack", status_code=204)
async def ack_mux(request: Request[Any, Any, Any], mux_id: FromPath[str]) -> None:
    """Manual commit of several sessions: ``{"offsets": {session_id: offset}}``."""
    rt, who, subs = await _mux(request, mux_id)
    body = await _json_body(request)
    acks = body.get("offsets") if isinstance(body, dict) else None
    if not isinstance(acks, dict):
        raise ApiError(400, "invalid_request", 'body must be {"offsets": {session_id: offset}}')
    parsed = []
    for sid, raw in acks.items():
        if sid not in subs or not who.sees(sid):
            raise ApiError(404, "session_not_subscribed", f"mux never viewed {sid!r}")
        try:
            parsed.append((sid, str(offsets.parse(raw if isinstance(raw, str) else ""))))
        except offsets.InvalidOffset as exc:
            raise ApiError(400, "invalid_offset", f"{sid}: {exc}") from exc
    for sid, off in parsed:
        await rt.streams.commit(
            sid, subs[sid][0], off, rt.settings.connection_ttl, forward_only=True
        )


@get("/v1/mux/{mux_id:str}/events")
async def mux_events(request: Request[Any, Any, Any], mux_id: FromPath[str]) -> Stream:
    """The browser's one SSE stream: every subscribed session plus the activity feed."""
    rt, who, _ = await _mux(request, mux_id)
    rt.refuse_if_draining()
    token = secrets.token_hex(8)
    channel = rt.streams.mux_channel(mux_id)
    await rt.streams.set_mux_token(mux_id, token)  # before announcing: see MuxStream.frames
    await rt.streams.notify_mux(mux_id, f"K\t{mux_id}\t{token}")
    await rt.hub.evict(channel, mux_id, token)
    rt.metrics.attaches.inc()
    stream = MuxStream(
        rt.deps,
        mux_id=mux_id,
        token=token,
        visible=who.sees,
        slot=await _admit(rt, who),
        expires=who.expires,
    )
    return _sse(stream.frames())


# --- operations -----------------------------------------------------------------------------
@get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    """Readiness: Redis answers a PING and the replica is not draining."""
    rt = _rt(request)
    if rt.draining:
        return Response({"code": "draining", "message": "shutting down"}, status_code=503)
    try:
        await rt.streams.redis.ping()
    except (RedisError, OSError) as exc:
        return Response({"code": "redis_unavailable", "message": str(exc)}, status_code=503)
    return Response({"status": "ready"})


@get("/metrics")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition of this process's series."""
    return Response(generate_latest(_rt(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- errors and app -------------------------------------------------------------------------
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _reject_cross_site(request: Request[Any, Any, Any]) -> None:
    """Refuse state-changing requests a browser sends from another site (CSRF defence).

    Uses ``Sec-Fetch-Site`` (set by the browser, not by page scripts), else compares the
    ``Origin`` with the ``Host`` the request was sent to. Origins in ``GATEWAY_CORS_ORIGINS``
    are allowed; requests without either header (servers, curl) are not browser-driven.

    Raises:
        ApiError: 403 ``cross_site``.
    """
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    allowed = request.app.state.runtime.settings.cors_origins
    if origin and origin in allowed:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        cross = site not in ("same-origin", "none")
    elif origin:
        host = request.headers.get("host", "")
        theirs = urlsplit(origin)
        cross = (theirs.netloc if ":" in host else theirs.hostname or "") != host
    else:
        cross = False
    if cross:
        raise ApiError(
            403, "cross_site", "cross-site request refused (allow its origin in CORS settings)"
        )


def _auth_error(_: Request[Any, Any, Any], exc: AuthError) -> Response[dict[str, str]]:
    headers = {"WWW-Authenticate": f'Bearer error="{exc.code}"'} if exc.status == 401 else {}
    return Response(
        {"code": exc.code, "message": exc.message}, status_code=exc.status, headers=headers
    )


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, str]]:
    return Response(
        {"code": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return Response({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)


def _redis_error(request: Request[Any, Any, Any], exc: RedisError) -> Response[dict[str, str]]:
    log.warning("redis error: %r", exc)
    _rt(request).metrics.redis_errors.inc()
    return Response(
        {"code": "redis_unavailable", "message": "the event store is unavailable, retry"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    log.exception("unhandled error", exc_info=exc)
    return Response(
        {"code": "internal_error", "message": "internal error"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> Litestar:
    """Build the gateway application.

    Args:
        settings: defaults to :class:`Settings` read from the environment.
        run_worker: also run the demo agent worker in this process (``gateway demo``).
    """
    settings = settings or Settings()
    auth = Authenticator(settings)  # fails fast without a key unless insecure

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        redis = connect(settings)
        streams = Streams(redis, settings.key_prefix)
        m = Metrics()
        hub = Hub(redis, m)
        await hub.start()
        rt = Runtime(settings, streams, Publisher.from_settings(streams, settings), hub, m, auth)
        rt.background.append(
            asyncio.create_task(
                reap_forever(
                    streams, rt.publisher, settings.run_lease_ttl / 3, settings.requeue_grace
                ),
                name="reaper",
            )
        )
        if run_worker:
            from gateway.worker import demo_worker

            worker = demo_worker(streams, rt.publisher, settings)
            rt.background.append(asyncio.create_task(worker.run_forever()))
        app.state.runtime = rt
        restore_signals = _drain_on_signals(rt)
        try:
            yield
        finally:
            restore_signals()
            for task in rt.background:
                await cancel_and_wait(task, task.get_name())
            await hub.stop()
            await redis.aclose()

    handlers: list[Any] = [
        create_session,
        list_sessions,
        get_session,
        get_snapshot,
        create_connection,
        get_connection,
        connection_events,
        ack,
        delete_connection,
        session_events,
        publish_events,
        start_run,
        cancel_run,
        answer_approval,
        activity,
        create_mux,
        get_mux,
        subscribe_mux,
        unsubscribe_mux,
        ack_mux,
        mux_events,
        healthz,
        readyz,
        metrics,
    ]
    handlers.extend(durable.route_handlers)  # Durable Streams protocol under /ds
    if settings.frontend_dir.is_dir():
        handlers.append(
            create_static_files_router(
                path="/",
                directories=[settings.frontend_dir],
                html_mode=True,
                include_in_schema=False,
            )
        )
    cors = (
        CORSConfig(
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
        if settings.cors_origins
        else None  # off by default: same-origin only
    )
    return Litestar(
        route_handlers=handlers,
        cors_config=cors,
        before_request=_reject_cross_site,
        lifespan=[lifespan],
        exception_handlers={
            ApiError: _api_error,
            AuthError: _auth_error,
            HTTPException: _http_error,
            RedisError: _redis_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="Agent stream gateway", version="0.1.0"),
    )
