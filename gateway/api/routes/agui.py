"""AG-UI: the session as an AG-UI agent (protocol 1.0, ``ag-ui-protocol`` / ``@ag-ui/client``).

``POST /v1/sessions/{sid}/agui`` takes a ``RunAgentInput``, starts a run and answers with it
as AG-UI Server-Sent Events, so an unmodified ``HttpAgent({url})`` runs against it; with
``resume`` it answers the approvals a previous answer was interrupted by and streams the run
going on. ``GET /v1/sessions/{sid}/agui`` attaches or resumes from a cursor and follows the
session across runs. Mapping and ids: :mod:`gateway.protocols.agui_out`; framing:
:mod:`gateway.live.agui_stream`; docs/integrations.md shows the ``HttpAgent`` subclass whose
``connect()`` uses the GET endpoint.
"""

from __future__ import annotations

from typing import Any

from ag_ui.core import RunAgentInput
from ag_ui.core.types import ResumeEntry
from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Stream
from redis.exceptions import RedisError

from gateway.agent.publisher import EventIn, new_run_id
from gateway.api.deps import CallDep
from gateway.api.routes.connections import attach
from gateway.api.routes.runs import log as runs_log
from gateway.api.sse import last_event_id, sse
from gateway.core import offsets
from gateway.core.cursors import Start, resolve
from gateway.core.errors import GatewayError
from gateway.core.events import valid_id
from gateway.live.agui_stream import AguiStream, prime
from gateway.live.session_stream import Consumer
from gateway.protocols.agui_out import AguiEncoder
from gateway.store.sessions import PublishRejected

CODES = {"": "invalid_agui_input"}


def user_text(body: RunAgentInput) -> tuple[str, str]:
    """The last user message of ``body``: (its id, its text; text parts joined).

    Raises:
        GatewayError: 400 ``invalid_input`` when there is none or it has no text.
    """
    for message in reversed(body.messages):
        msg: Any = getattr(message, "root", message)
        if getattr(msg, "role", None) != "user":
            continue
        content = msg.content
        if isinstance(content, str):
            text = content
        else:
            text = "".join(p.text for p in content if getattr(p, "type", None) == "text")
        if text.strip():
            return str(msg.id), text
        break
    raise GatewayError(400, "invalid_input", "messages must end with a user message with text")


def decision_of(entry: ResumeEntry) -> str:
    """``approve`` or ``deny`` from a resume entry answering an approval interrupt.

    ``status: "cancelled"`` denies. A resolved entry's ``payload`` is ``{"approved": bool}``
    (the interrupt's ``responseSchema``), or ``true``/``false``, ``"approve"``/``"deny"``,
    ``{"decision": "approve"|"deny"}``.

    Raises:
        GatewayError: 400 ``invalid_resume`` for any other payload.
    """
    if entry.status == "cancelled":
        return "deny"
    p = entry.payload
    if isinstance(p, dict):
        p = p.get("approved", p.get("decision"))
    if p is True or p == "approve":
        return "approve"
    if p is False or p == "deny":
        return "deny"
    raise GatewayError(
        400,
        "invalid_resume",
        f'resume for {entry.interrupt_id!r}: payload must be {{"approved": true|false}}',
    )


async def resolve_interrupts(call: CallDep, resume: list[ResumeEntry]) -> tuple[str, int]:
    """Publish ``approval.resolved`` for each entry (as ``POST …/approvals/{id}`` does).

    Returns (the run they belong to, the sequence number of the first answer).

    Raises:
        GatewayError: 400 ``invalid_resume``; 404 ``approval_not_found``; 409
            ``approval_already_resolved`` (and the publish script's other refusals).
    """
    rt, sid = call.rt, call.sid
    if not resume:
        raise GatewayError(400, "invalid_resume", "resume must name at least one interrupt")
    answers: list[tuple[str, str, str]] = []
    for entry in resume:
        aid = entry.interrupt_id
        decision = decision_of(entry)
        run_id = await rt.store.sessions.approval_run(sid, aid) if valid_id(aid) else None
        if run_id is None:
            raise GatewayError(404, "approval_not_found", f"no approval {aid!r}")
        answers.append((aid, decision, run_id))
    if len({run for _, _, run in answers}) != 1:
        raise GatewayError(400, "invalid_resume", "resume answers interrupts of several runs")
    batch = [
        EventIn("approval.resolved", {"approval_id": aid, "decision": d}, run)
        for aid, d, run in answers
    ]
    try:
        offs = await rt.publisher.publish_batch(sid, batch)
    except PublishRejected as exc:
        if exc.code == "approval_not_found":
            raise GatewayError(404, exc.code, "no such approval") from exc
        raise
    return answers[0][2], offsets.parse(offs[0]).seq


async def start_run(call: CallDep, body: RunAgentInput) -> tuple[str, int]:
    """Start a run answering ``body``'s last user message; the worker command carries the
    whole ``RunAgentInput`` as ``agui`` (JSON) for an AG-UI relay worker. The run id is
    ``body.runId`` when it is a valid gateway id. Returns (run id, its first sequence).
    The caller checked the ``command`` scope.

    Raises:
        GatewayError: 400 ``invalid_input``; 409 ``run_active`` / ``run_exists``.
    """
    rt, sid = call.rt, call.sid
    message_id, text = user_text(body)
    run_id = body.run_id if valid_id(body.run_id) else new_run_id()
    command = {
        "kind": "run",
        "session_id": sid,
        "run_id": run_id,
        "input": text,
        "agui": body.model_dump_json(by_alias=True),
    }
    started = {"input": text, "message_id": message_id}
    offs = await rt.publisher.publish_batch(
        sid, [EventIn("run.started", started, run_id)], command=command
    )
    try:
        await rt.store.commands.enqueue(command)
    except RedisError as exc:
        # Accepted and kept with its command: a reaper sends it again.
        runs_log.warning("run %s of %s: command not sent yet (%r)", run_id, sid, exc)
    return run_id, offsets.parse(offs[0]).seq


@post(
    "/v1/sessions/{session_id:str}/agui",
    status_code=200,
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view", "codes": CODES},
)
async def agui_run(call: CallDep, data: JSONBody[RunAgentInput]) -> Stream:
    """Run the agent over AG-UI: a ``RunAgentInput`` in, the run as AG-UI SSE out, ending
    with the run's ``RUN_FINISHED`` (success, ``cancelled``, or ``interrupt`` when it asks
    for an approval) or ``RUN_ERROR``.

    Without ``resume``: starts a run for the last user message (needs ``command``;
    ``400 invalid_input``, ``409 run_active``). With ``resume``: answers those approval
    interrupts (needs ``approve``; ``400 invalid_resume``, ``404 approval_not_found``,
    ``409 approval_already_resolved``) and streams the run as it goes on."""
    rt, sid = call.rt, call.sid
    rt.refuse_if_draining()
    call.who.require("approve" if data.resume else "command", sid)
    slot = await rt.admit(call.who)  # before the run starts: a 429 starts nothing
    try:
        if data.resume:
            run_id, seq = await resolve_interrupts(call, data.resume)
        else:
            run_id, seq = await start_run(call, data)
        meta = await rt.meta_or_create(sid)
        start = Start(meta.epoch, seq - 1)
        encoder = AguiEncoder(sid)
        preamble = await prime(rt.store.sessions, meta, start, encoder)
    except BaseException:
        if slot is not None:  # no stream will hold it
            await rt.store.limits.close_slot(slot.subject, slot.slot)
        raise
    stream = AguiStream(
        rt.deps,
        session_id=sid,
        start=start,
        encoder=encoder,
        until_run=run_id,
        slot=slot,
        expires=call.who.expires,
    )
    return sse(stream.agui_frames(preamble))


@get(
    "/v1/sessions/{session_id:str}/agui",
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view"},
)
async def agui_attach(call: CallDep, request: Request[Any, Any, Any]) -> Stream:
    """Attach to or resume a session as AG-UI SSE, following it across runs.

    The cursor: ``Last-Event-ID``, else ``?from=`` (``start`` (default), ``run``, ``live``
    or an offset); with ``?connection_id=`` the stored connection's offset (a cursor given
    wins) and the stream commits to it. A cursor inside a run starts with that run's
    ``RUN_STARTED`` and a start for each message it has open."""
    rt, sid = call.rt, call.sid
    rt.refuse_if_draining()
    cursor = last_event_id(request) or request.query_params.get("from")
    cid = request.query_params.get("connection_id")
    consumer: Consumer | None = None
    if cid:
        start, consumer = await attach(call, cid, cursor)
    meta = await rt.meta_or_create(sid)
    if not cid:
        start = resolve(meta, cursor or "start")
    encoder = AguiEncoder(sid)
    preamble = await prime(rt.store.sessions, meta, start, encoder)
    stream = AguiStream(
        rt.deps,
        session_id=sid,
        start=start,
        consumer=consumer,
        encoder=encoder,
        slot=await rt.admit(call.who),
        expires=call.who.expires,
    )
    return sse(stream.agui_frames(preamble))


HANDLERS = [agui_run, agui_attach]
