"""Sessions: create, list (the sidebar), metadata and the folded snapshot."""

from __future__ import annotations

import secrets

from litestar import get, post
from litestar.params import JSONBody

from gateway.api.deps import CallDep, check_id
from gateway.api.schemas import (
    CreateSession,
    SessionCreated,
    SessionInfo,
    SessionList,
    SessionSummary,
    Snapshot,
)
from gateway.core import offsets
from gateway.core.errors import GatewayError
from gateway.store import snapshots
from gateway.store.sessions import SessionMeta


def session_info(m: SessionMeta) -> SessionInfo:
    """A session's metadata as the API shows it."""
    return SessionInfo(
        session_id=m.session_id,
        epoch=m.epoch,
        status=m.status,
        title=m.title,
        first_offset=offsets.format_offset(m.epoch, m.first_seq) if m.first_seq <= m.seq else None,
        last_offset=offsets.format_offset(m.epoch, m.seq),
        run_id=m.run_id or None,
        run_first_offset=(
            offsets.format_offset(m.epoch, m.run_first_seq) if m.run_first_seq else None
        ),
        updated_ms=m.updated_ms,
    )


@post("/v1/sessions", status_code=201, opt={"codes": CreateSession.CODES})
async def create_session(
    call: CallDep, data: JSONBody[CreateSession | None] = None
) -> SessionCreated:
    """Create a session (or return an existing one); needs ``command`` on it."""
    sid = data.session_id if data is not None and data.session_id is not None else None
    sid = check_id(sid, "session_id") if sid is not None else "s-" + secrets.token_hex(6)
    call.who.require("command", sid)
    store = call.rt.store
    epoch, seq, created = await store.sessions.ensure(sid)
    if created:
        await store.activity.record(sid, {"status": "idle", "created": True})
    return SessionCreated(sid, offsets.format_offset(epoch, seq))


@get("/v1/sessions", opt={"action": "view"})
async def list_sessions(call: CallDep) -> SessionList:
    """Sessions for a sidebar, most recently active first (those the token may view)."""
    metas = await call.rt.store.list_sessions(visible=call.who.sees)
    return SessionList(
        [
            SessionSummary(
                m.session_id,
                m.status,
                m.title,
                m.run_id or None,
                offsets.format_offset(m.epoch, m.seq),
                m.updated_ms,
            )
            for m in metas
        ]
    )


@get("/v1/sessions/{session_id:str}", opt={"action": "view"})
async def get_session(call: CallDep) -> SessionInfo:
    """A session's metadata; ``404 session_not_found``."""
    meta = await call.rt.store.sessions.meta(call.sid)
    if meta is None:
        raise GatewayError(404, "session_not_found", f"no session {call.sid!r}")
    return session_info(meta)


@get("/v1/sessions/{session_id:str}/snapshot", opt={"action": "view"})
async def get_snapshot(call: CallDep) -> Snapshot:
    """The session's folded state and the offset it is valid at; ``404 session_not_found``."""
    res = await snapshots.load(call.rt.store.sessions, call.sid)
    if res is None:
        raise GatewayError(404, "session_not_found", f"no session {call.sid!r}")
    return Snapshot(res[0], res[1])


HANDLERS = [create_session, list_sessions, get_session, get_snapshot]
