"""AG-UI ingest: ``POST /v1/sessions/{session_id}/agui/events`` stores AG-UI events, mapped to
the gateway's vocabulary (``gateway.protocols.agui_in``), through the normal publisher.

Run semantics: a ``RUN_STARTED`` starts a run (its ``runId`` becomes the run id when it is a
valid id, else a fresh one), with no worker command; the run stays alive while events arrive
and a reaper ends it as interrupted once it is silent for the pickup timeout. A
``RUN_STARTED`` whose ``runId`` is the session's running run attaches to it instead. Events
without a ``RUN_STARTED`` before them in the body attach to the session's running run
(``409 run_not_active`` when there is none). ``RUN_FINISHED`` / ``RUN_ERROR`` end the run;
anything sent for an ended run gets the publish script's ``409 run_ended``.

A JSON array is validated and mapped whole, then stored in one atomic batch: nothing is stored
when any event is refused. A ``text/event-stream`` body is processed as it arrives (a producer
may stream a whole run in one request): the events of each received chunk are stored together,
so a refusal leaves the earlier chunks stored. A tool call's ``TOOL_CALL_START`` … ``_END``
must be within one request body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from ag_ui.core import BaseEvent, Event
from litestar import Request, post
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from msgspec import Struct
from pydantic import TypeAdapter

from gateway.agent.publisher import EventIn, new_run_id
from gateway.api.deps import CallDep
from gateway.api.runtime import Runtime
from gateway.core import events
from gateway.core.errors import GatewayError
from gateway.protocols.agui_in import AguiInvalid, AguiMapper, SseParser, parse_event, parse_json

MAX_EVENTS = 500  # per JSON body, and per stored batch of an event-stream body


class AguiIngested(Struct):
    """What an ingest stored: the run the events went to (None when nothing needed one) and
    the offsets of the stored gateway events, in order (AG-UI events that are absorbed, such
    as ``TEXT_MESSAGE_START``, store nothing)."""

    run_id: str | None
    offsets: list[str]


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``$ref``s to ``defs`` replaced by their targets (the AG-UI schema is
    not recursive), so it stands alone inside the OpenAPI document."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return {
            k: _inline(v, defs) for k, v in schema.items() if k not in ("$defs", "discriminator")
        }
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


@cache
def _event_schema() -> dict[str, Any]:
    schema = TypeAdapter(Event).json_schema(by_alias=True)
    return _inline(schema, schema.get("$defs", {}))  # type: ignore[no-any-return]


@dataclass
class _IngestOperation(Operation):
    """The OpenAPI operation of the ingest route: its body is read by the handler (a JSON
    array or an event stream), so the body is described here, from the AG-UI models."""

    def __post_init__(self) -> None:
        array: Any = {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EVENTS,
            "items": _event_schema(),
            "description": "AG-UI 1.0 events (ag-ui-protocol models), in order",
        }
        stream: Any = {
            "type": "string",
            "description": "AG-UI events as Server-Sent Events: one JSON event per `data:`",
        }
        self.request_body = RequestBody(
            content={
                "application/json": OpenAPIMediaType(schema=array),
                "text/event-stream": OpenAPIMediaType(schema=stream),
            },
            required=True,
            description="AG-UI events: a JSON array, or a text/event-stream body",
        )


class Ingest:
    """One request's events on their way to the log: the mapper's state, the run they go to,
    and the offsets stored so far."""

    def __init__(self, rt: Runtime, sid: str) -> None:
        self.rt, self.sid = rt, sid
        self.mapper = AguiMapper()
        self.run_id: str | None = None
        self.offsets: list[str] = []

    async def map(self, batch: list[BaseEvent]) -> list[EventIn]:
        """The gateway events ``batch`` stands for, with their run ids.

        Raises:
            AguiInvalid: see :class:`AguiMapper`; GatewayError: ``409 run_not_active``.
        """
        out: list[EventIn] = []
        for event in batch:
            for m in self.mapper.map(event):
                if m.type == "run.started":
                    if await self._starts_run(str(m.data["agui_run_id"])):
                        out.append(EventIn(m.type, m.data, self.run_id))
                else:
                    out.append(EventIn(m.type, m.data, await self._run()))
        return out

    async def finish(self) -> list[EventIn]:
        """The events the end of the body completes (a chunked tool call in progress).

        Raises:
            AguiInvalid: ``agui_incomplete_tool_call``.
        """
        return [EventIn(m.type, m.data, await self._run()) for m in self.mapper.finish()]

    async def store(self, batch: list[EventIn]) -> None:
        """Publish ``batch`` atomically (the publish script's 409s apply)."""
        for i in range(0, len(batch), MAX_EVENTS):
            offs = await self.rt.publisher.publish_batch(self.sid, batch[i : i + MAX_EVENTS])
            self.rt.metrics.events_published.inc(len(offs))
            self.offsets += offs

    async def _starts_run(self, agui_run_id: str) -> bool:
        """Whether a ``RUN_STARTED`` starts a new run (False: it names the running one)."""
        meta = await self.rt.store.sessions.meta(self.sid)
        if meta is not None and meta.status == "running" and meta.run_id == agui_run_id:
            self.run_id = meta.run_id
            return False
        self.run_id = agui_run_id if events.valid_id(agui_run_id) else new_run_id()
        return True

    async def _run(self) -> str:
        if self.run_id is None:
            meta = await self.rt.store.sessions.meta(self.sid)
            if meta is None or meta.status != "running" or not meta.run_id:
                raise GatewayError(
                    409,
                    "run_not_active",
                    "no run is active in this session: send RUN_STARTED first",
                )
            self.run_id = meta.run_id
        return self.run_id


async def _json_events(request: Request[Any, Any, Any]) -> list[BaseEvent]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise GatewayError(400, "invalid_json", "request body is not JSON") from None
    if not isinstance(body, list) or not body:
        raise AguiInvalid("invalid_agui_body", "the body must be a non-empty JSON array")
    if len(body) > MAX_EVENTS:
        raise GatewayError(413, "batch_too_large", f"at most {MAX_EVENTS} events per body")
    return [parse_event(obj, f"event {i}") for i, obj in enumerate(body)]


@post(
    "/v1/sessions/{session_id:str}/agui/events",
    status_code=201,
    opt={"action": "publish"},
    operation_class=_IngestOperation,
)
async def ingest_agui_events(call: CallDep, request: Request[Any, Any, Any]) -> AguiIngested:
    """Store AG-UI events (a JSON array, or a ``text/event-stream`` body), each validated
    with the ``ag-ui-protocol`` models and mapped to the gateway's vocabulary (see
    docs/integrations.md); unmapped types are kept as ``agui.raw``.

    ``400`` ``invalid_json``, ``invalid_agui_body``, ``invalid_agui_event``,
    ``unknown_agui_event_type``, ``agui_unknown_tool_call``, ``agui_incomplete_tool_call``
    (and the event checks of docs/api.md); ``409`` ``run_not_active``, ``run_active``,
    ``run_exists``, ``run_ended``; ``413`` ``batch_too_large``; ``415``
    ``unsupported_media_type``."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    ingest = Ingest(call.rt, call.sid)
    if media == "text/event-stream":
        parser, seen = SseParser(), 0
        async for chunk in request.stream():
            datas = parser.feed(chunk)
            batch = [parse_json(d, f"event {seen + i}") for i, d in enumerate(datas)]
            seen += len(datas)
            await ingest.store(await ingest.map(batch))
        last = [parse_json(d, f"event {seen + i}") for i, d in enumerate(parser.close())]
        await ingest.store(await ingest.map(last) + await ingest.finish())
    elif media == "application/json" or media.endswith("+json"):
        mapped = await ingest.map(await _json_events(request))
        await ingest.store(mapped + await ingest.finish())
    else:
        raise GatewayError(
            415,
            "unsupported_media_type",
            "send application/json (an array of AG-UI events) or text/event-stream",
        )
    return AguiIngested(ingest.run_id, ingest.offsets)


HANDLERS = [ingest_agui_events]
