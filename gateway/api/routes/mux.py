"""Mux: a browser's one multiplexed stream (every session its tabs view, plus the activity
feed), its subscriptions and acks; and the activity feed on its own.

A mux belongs to the token subject that created it: any other gets ``404 mux_not_found``.
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, delete, get, post, put
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from gateway.api.deps import CallDep
from gateway.api.routes.connections import cursor_offset
from gateway.api.schemas import AckMux, MuxCreated, MuxInfo, MuxSession, MuxSubscribed, SubscribeMux
from gateway.api.sse import last_event_id, sse
from gateway.core import offsets
from gateway.core.errors import GatewayError
from gateway.live.activity_stream import activity_frames
from gateway.live.mux import MuxStream
from gateway.store.muxes import StoredMux

UNSCOPED = {"action": "view", "scoped": False}


async def owned(call: CallDep, mux_id: FromPath[str]) -> StoredMux:
    """The caller's mux, else ``404 mux_not_found``."""
    mux = await call.rt.store.muxes.get(mux_id, call.rt.settings.connection_ttl)
    if mux is None or mux.subject != call.owner:
        raise GatewayError(404, "mux_not_found", f"no mux {mux_id!r}")
    return mux


@get("/v1/activity", tags=["sse"], media_type="text/event-stream", opt={"action": "view"})
async def activity(call: CallDep, request: Request[Any, Any, Any]) -> Stream:
    """SSE feed of status changes of the sessions the token may view; ``Last-Event-ID``
    resumes."""
    rt = call.rt
    rt.refuse_if_draining()
    after = last_event_id(request) or await rt.store.activity.last_id()
    slot = await rt.admit(call.who)
    return sse(activity_frames(rt.deps, after, call.who.sees, slot, call.who.expires))


@post("/v1/mux", status_code=201, opt={"action": "view"})
async def create_mux(call: CallDep) -> MuxCreated:
    """Create a browser's multiplexed stream."""
    await call.rt.count_open(call.who)
    mux_id = "m-" + secrets.token_hex(8)
    await call.rt.store.muxes.create(mux_id, call.rt.settings.connection_ttl, call.owner)
    return MuxCreated(mux_id)


@get("/v1/mux/{mux_id:str}", opt={"action": "view"})
async def get_mux(call: CallDep, mux_id: FromPath[str]) -> MuxInfo:
    """The sessions this mux has viewed, with this device's committed offsets."""
    mux = await owned(call, mux_id)
    subs = {sid: v for sid, v in mux.sessions.items() if call.who.sees(sid)}
    pairs = [(sid, cid) for sid, (cid, _) in subs.items()]
    conns = await call.rt.store.consumers.get_many(pairs)
    return MuxInfo(
        mux_id,
        {
            sid: MuxSession(cid, conn.offset if conn else None, subs[sid][1])
            for (sid, cid), conn in zip(pairs, conns, strict=True)
        },
    )


@put(
    "/v1/mux/{mux_id:str}/sessions/{session_id:str}",
    status_code=200,
    opt={"action": "view", "codes": SubscribeMux.CODES},
)
async def subscribe_mux(
    call: CallDep, mux_id: FromPath[str], data: JSONBody[SubscribeMux | None] = None
) -> MuxSubscribed:
    """Subscribe the mux to a session (``from`` replaces the stored offset when given)."""
    rt, sid = call.rt, call.sid
    subs = (await owned(call, mux_id)).sessions
    cursor = data.from_ if data is not None else None
    meta = await rt.meta_or_create(sid)
    ttl = rt.settings.connection_ttl
    consumers = rt.store.consumers
    cid = subs[sid][0] if sid in subs else "c-" + secrets.token_hex(8)
    conn = await consumers.get(sid, cid) if sid in subs else None
    if conn is None or cursor is not None:
        offset = cursor_offset(meta, cursor or "live")
        if conn is None:
            await consumers.create(sid, cid, offset, "manual", ttl, call.owner)
            rt.metrics.connections_created.inc()
        else:
            await consumers.commit(sid, cid, offset, ttl, forward_only=False)
    else:
        offset = conn.offset
    await rt.store.muxes.set_session(mux_id, sid, cid, True, ttl)
    await rt.store.muxes.subscribed(mux_id, sid)
    return MuxSubscribed(cid, offset)


@delete("/v1/mux/{mux_id:str}/sessions/{session_id:str}", opt=UNSCOPED)
async def unsubscribe_mux(call: CallDep, mux_id: FromPath[str]) -> None:
    """Stop streaming a session on this mux; its committed offset is kept."""
    subs = (await owned(call, mux_id)).sessions
    sid = call.sid
    if sid in subs:
        muxes = call.rt.store.muxes
        await muxes.set_session(mux_id, sid, subs[sid][0], False, call.rt.settings.connection_ttl)
        await muxes.unsubscribed(mux_id, sid)


@post(
    "/v1/mux/{mux_id:str}/ack",
    status_code=204,
    opt={"action": "view", "codes": AckMux.CODES},
)
async def ack_mux(call: CallDep, mux_id: FromPath[str], data: JSONBody[AckMux]) -> None:
    """Manual commit of several sessions: ``{"offsets": {session_id: offset}}``."""
    subs = (await owned(call, mux_id)).sessions
    parsed = []
    for sid, raw in data.offsets.items():
        if sid not in subs or not call.who.sees(sid):
            raise GatewayError(404, "session_not_subscribed", f"mux never viewed {sid!r}")
        try:
            parsed.append((sid, str(offsets.parse(raw))))
        except offsets.InvalidOffset as exc:
            raise offsets.InvalidOffset(f"{sid}: {exc.message}") from exc
    for sid, off in parsed:
        await call.rt.store.consumers.commit(
            sid, subs[sid][0], off, call.rt.settings.connection_ttl, forward_only=True
        )


@get(
    "/v1/mux/{mux_id:str}/events",
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view"},
)
async def mux_events(call: CallDep, mux_id: FromPath[str]) -> Stream:
    """The browser's one SSE stream: every subscribed session plus the activity feed.

    Attaching ends any other stream of the same mux, on any replica."""
    rt = call.rt
    await owned(call, mux_id)
    rt.refuse_if_draining()
    token = secrets.token_hex(8)
    muxes = rt.store.muxes
    await muxes.set_token(mux_id, token)  # before announcing: see MuxStream.frames
    await muxes.taken_over(mux_id, token)
    await rt.hub.evict(muxes.channel(mux_id), mux_id, token)
    rt.metrics.attaches.inc()
    stream = MuxStream(
        rt.deps,
        mux_id=mux_id,
        token=token,
        visible=call.who.sees,
        slot=await rt.admit(call.who),
        expires=call.who.expires,
    )
    return sse(stream.frames())


HANDLERS = [
    activity,
    create_mux,
    get_mux,
    subscribe_mux,
    unsubscribe_mux,
    ack_mux,
    mux_events,
]
