"""Connections: consumers with a stored offset, their SSE stream, acks and deletion.

Connections belong to the token subject that created them: any other subject gets
``404 connection_not_found``, so a leaked id reads nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from gateway.api.deps import CallDep
from gateway.api.schemas import Ack, ConnectionInfo, CreateConnection
from gateway.api.sse import last_event_id, sse
from gateway.core import offsets
from gateway.core.cursors import Start, resolve, resolve_stored
from gateway.core.errors import GatewayError
from gateway.live.session_stream import Consumer, EventStream
from gateway.store.consumers import StoredConnection
from gateway.store.sessions import SessionMeta


def not_found(cid: str) -> GatewayError:
    """``404 connection_not_found``."""
    return GatewayError(404, "connection_not_found", f"no connection {cid!r}")


async def owned(call: CallDep, cid: str) -> StoredConnection:
    """The caller's connection ``cid``, else ``404`` (a leaked id reads nothing)."""
    conn = await call.rt.store.consumers.get(call.sid, cid)
    if conn is None or conn.subject != call.owner:
        raise not_found(cid)
    return conn


def cursor_offset(meta: SessionMeta, cursor: str) -> str:
    """The offset to store for a consumer starting at ``cursor``.

    Named cursors resolve now; an explicit offset is validated (400/409) and stored as given,
    so another epoch or a trimmed offset is reported with a ``reset`` when it attaches.
    """
    start = resolve(meta, cursor)
    if cursor in ("start", "run", "live"):
        return start.offset
    return str(offsets.parse(cursor))


async def attach(call: CallDep, cid: str, explicit: str | None) -> tuple[Start, Consumer]:
    """Attach a stream to the caller's connection ``cid``: where it starts (``explicit``, a
    client's cursor, wins over the stored offset) and the consumer it commits to. Stores
    the start and this attach's token, and ends any other stream of the connection, on any
    replica. Raises ``404 connection_not_found``; a bad ``explicit`` cursor 400/409."""
    rt, sid = call.rt, call.sid
    conn = await owned(call, cid)
    meta = await rt.meta_or_create(sid)
    start: Start = resolve(meta, explicit) if explicit else resolve_stored(meta, conn.offset)
    token = secrets.token_hex(8)
    consumers = rt.store.consumers
    moved = await consumers.commit(
        sid,
        cid,
        start.offset,
        rt.settings.connection_ttl,
        forward_only=not (explicit or start.reset),
        token=token,
        owner=call.owner,
    )
    if moved is None:
        raise not_found(cid)
    rt.metrics.attaches.inc()
    if conn.token:
        rt.metrics.reattaches.inc()
    channel = rt.store.sessions.live_channel(sid)
    await consumers.announce_attach(channel, cid, token)
    await rt.hub.evict(channel, cid, token)
    return start, Consumer(cid, conn.commit, token)


@post(
    "/v1/sessions/{session_id:str}/connections",
    status_code=201,
    opt={"action": "view", "codes": CreateConnection.CODES},
)
async def create_connection(
    call: CallDep, data: JSONBody[CreateConnection | None] = None
) -> ConnectionInfo:
    """Create a consumer whose offset is stored in Redis: where it starts (``from``) and
    how it commits (``commit``)."""
    body = data or CreateConnection()
    rt = call.rt
    offset = cursor_offset(await rt.meta_or_create(call.sid), body.from_)
    await rt.count_open(call.who)
    cid = "c-" + secrets.token_hex(8)
    await rt.store.consumers.create(
        call.sid, cid, offset, body.commit, rt.settings.connection_ttl, call.owner
    )
    rt.metrics.connections_created.inc()
    return ConnectionInfo(cid, offset, body.commit)


@get("/v1/sessions/{session_id:str}/connections/{connection_id:str}", opt={"action": "view"})
async def get_connection(call: CallDep, connection_id: FromPath[str]) -> ConnectionInfo:
    """A consumer's stored offset and commit mode."""
    conn = await owned(call, connection_id)
    return ConnectionInfo(conn.connection_id, conn.offset, conn.commit)


@get(
    "/v1/sessions/{session_id:str}/connections/{connection_id:str}/events",
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view"},
)
async def connection_events(
    call: CallDep, connection_id: FromPath[str], request: Request[Any, Any, Any]
) -> Stream:
    """SSE from the consumer's stored offset (``Last-Event-ID`` wins when present).

    Attaching ends any other stream of the same connection, on any replica.
    """
    rt = call.rt
    rt.refuse_if_draining()
    start, consumer = await attach(call, connection_id, last_event_id(request))
    stream = EventStream(
        rt.deps,
        session_id=call.sid,
        start=start,
        consumer=consumer,
        slot=await rt.admit(call.who),
        expires=call.who.expires,
    )
    return sse(stream.frames())


@post(
    "/v1/sessions/{session_id:str}/connections/{connection_id:str}/ack",
    status_code=204,
    opt={"action": "view", "codes": Ack.CODES},
)
async def ack(call: CallDep, connection_id: FromPath[str], data: JSONBody[Ack]) -> None:
    """Manual commit: move the stored offset forward to ``offset``."""
    off = offsets.parse(data.offset)
    store = call.rt.store
    epoch, head = await store.sessions.head(call.sid)
    if epoch == off.epoch and off.seq > head:
        raise GatewayError(409, "offset_ahead", f"offset {data.offset} is beyond the last event")
    stored = await store.consumers.commit(
        call.sid,
        connection_id,
        str(off),
        call.rt.settings.connection_ttl,
        forward_only=True,
        owner=call.owner,
    )
    if stored is None:
        raise not_found(connection_id)


@delete("/v1/sessions/{session_id:str}/connections/{connection_id:str}", opt={"action": "view"})
async def delete_connection(call: CallDep, connection_id: FromPath[str]) -> None:
    """Forget the consumer and end any stream attached to it, on any replica."""
    await owned(call, connection_id)
    store = call.rt.store
    if not await store.consumers.delete(call.sid, connection_id):
        raise not_found(connection_id)
    channel = store.sessions.live_channel(call.sid)
    await store.consumers.announce_attach(channel, connection_id, "deleted")
    await call.rt.hub.evict(channel, connection_id, "deleted")


HANDLERS = [create_connection, get_connection, connection_events, ack, delete_connection]
