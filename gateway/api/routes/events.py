"""Events: the plain resumable SSE stream of a session (no stored consumer) and the HTTP
publish endpoint."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Stream

from gateway.agent.publisher import EventIn
from gateway.api.deps import CallDep
from gateway.api.schemas import Publish, Published
from gateway.api.sse import last_event_id, sse
from gateway.core.cursors import resolve
from gateway.core.errors import GatewayError
from gateway.live.session_stream import EventStream

MAX_BATCH = 500


@get(
    "/v1/sessions/{session_id:str}/events",
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view"},
)
async def session_events(call: CallDep, request: Request[Any, Any, Any]) -> Stream:
    """Resumable SSE without a stored consumer: from ``Last-Event-ID``, else ``?from=``
    (``start``, ``run``, ``live`` or an offset; default ``start``)."""
    rt = call.rt
    rt.refuse_if_draining()
    cursor = last_event_id(request) or request.query_params.get("from") or "start"
    start = resolve(await rt.meta_or_create(call.sid), cursor)
    stream = EventStream(
        rt.deps,
        session_id=call.sid,
        start=start,
        slot=await rt.admit(call.who),
        expires=call.who.expires,
    )
    return sse(stream.frames())


@post(
    "/v1/sessions/{session_id:str}/events",
    status_code=201,
    opt={"action": "publish", "codes": Publish.CODES},
)
async def publish_events(call: CallDep, data: JSONBody[Publish]) -> Published:
    """Publish one event or ``{"events": [...]}`` (at most 500) atomically, in order.

    The publish script's rules apply (``409 run_active``, ``run_exists``, ``run_ended``,
    ``approval_*``), and each event's validation (``400``/``413``, see docs/api.md).
    """
    if data.events is not None:
        if not data.events:
            raise GatewayError(400, "invalid_request", "events must be a non-empty list")
        if len(data.events) > MAX_BATCH:
            raise GatewayError(413, "batch_too_large", f"at most {MAX_BATCH} events per batch")
        batch = [EventIn(e.type, e.data or {}, e.run_id) for e in data.events]
    else:
        batch = [EventIn(data.type, data.data or {}, data.run_id)]  # type: ignore[arg-type]
    offs = await call.rt.publisher.publish_batch(call.sid, batch)
    call.rt.metrics.events_published.inc(len(offs))
    return Published(offs)


HANDLERS = [session_events, publish_events]
