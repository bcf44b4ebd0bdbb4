"""Chat: the Vercel AI SDK's chat endpoints over a session (the chat id is the session id).

``POST /v1/chat`` starts a run (or continues one paused at an approval) and answers with
the run as a UI message stream; ``GET /v1/chat/{id}/stream`` replays the active run from its
``run.started`` and follows it live (``204`` when none is active); ``POST
/v1/chat/{id}/stop`` cancels it; ``GET /v1/chat/{id}/messages`` is the history as
``UIMessage[]``. The streams are the session's :class:`EventStream` with the chunks of
:mod:`gateway.protocols.ai_sdk` as frames, ended after the run's terminal (or at a pending
approval) with ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromQuery, JSONBody
from litestar.response import Stream
from redis.exceptions import RedisError

from gateway.agent.leases import end_orphan
from gateway.agent.publisher import EventIn, new_run_id
from gateway.api.deps import Call, CallDep, check_id
from gateway.api.runtime import Runtime
from gateway.api.schemas import RunAccepted
from gateway.api.sse import last_event_id, sse, sse_headers
from gateway.core import frames as wire
from gateway.core import offsets
from gateway.core.cursors import OffsetAhead, Start, resolve
from gateway.core.errors import GatewayError
from gateway.core.events import StoredEvent
from gateway.live.deps import StreamDeps, drain_frame
from gateway.live.hub import Slot
from gateway.live.session_stream import EventStream
from gateway.protocols import ai_sdk
from gateway.protocols.ai_sdk import ChatRequest, UIMessage, UIMessageEncoder
from gateway.protocols.ai_sdk_messages import session_messages
from gateway.store import snapshots
from gateway.store.sessions import PublishRejected

log = logging.getLogger(__name__)

STREAM_HEADERS = sse_headers(ai_sdk.HEADERS)


class ChatStream(EventStream):
    """A session's :class:`EventStream` whose frames are one run's UI message stream chunks:
    ``data:`` lines (all the AI SDK reads), the last chunk of each event with ``id:
    <offset>``. The encoder sees the run from its ``run.started``; chunks of events up to
    ``skip_seq`` (a resume after ``Last-Event-ID``) are not sent again."""

    __slots__ = ("encoder", "skip_seq")

    def __init__(
        self,
        deps: StreamDeps,
        encoder: UIMessageEncoder,
        *,
        session_id: str,
        start: Start,
        slot: Slot | None,
        expires: float | None,
    ) -> None:
        super().__init__(deps, session_id=session_id, start=start, slot=slot, expires=expires)
        self.encoder = encoder
        self.skip_seq = 0

    def _frame(self, ev: StoredEvent) -> str:
        chunks = self.encoder.feed_event(ev)
        if ev.seq <= self.skip_seq:
            return ""
        return ai_sdk.sse(chunks, offsets.format_offset(self.epoch, ev.seq))

    def _reset_frame(self, reason: str) -> bytes:
        # The run's start is gone (retention, a new epoch): the message cannot be rebuilt.
        self.metrics.resets.labels(reason).inc()
        text = f"the run's events are no longer in the log ({reason}); reload the messages"
        return ai_sdk.sse(self.encoder.fail(text)).encode()


async def ui_stream(rt: Runtime, stream: ChatStream) -> AsyncIterator[bytes]:
    """The response body: the stream's frames until its run ends or pauses at a pending
    approval, then ``data: [DONE]``. A stream closed under it (drain, expired token) ends
    with an ``error`` chunk and no ``[DONE]``: the client resumes with ``GET …/stream``."""
    enc = stream.encoder
    closing = {wire.SUPERSEDED, wire.TOKEN_EXPIRED, drain_frame(rt.settings)}
    async with contextlib.aclosing(stream.frames()) as frames:
        async for frame in frames:
            if frame in closing:
                reason = json.loads(frame.rsplit(b"data: ", 1)[1])["reason"]
                yield ai_sdk.sse(
                    [ai_sdk.error_chunk(f"stream closed ({reason}): resume it")]
                ).encode()
                return
            if frame:
                yield frame
            if not enc.finished and enc.awaiting is not None and await _waits(rt, stream, enc):
                yield ai_sdk.sse(enc.pause()).encode()
            if enc.finished:
                break
    yield ai_sdk.DONE


async def _waits(rt: Runtime, stream: ChatStream, enc: UIMessageEncoder) -> bool:
    """Whether the run still waits for the approval the encoder reached. A run that ended
    meanwhile leaves its approval pending: its terminal, already in the log, ends the stream
    instead (a pause there would have the client answer, and pause, again and again)."""
    sessions = rt.store.sessions
    if await sessions.approval_state(stream.sid, enc.awaiting or "") not in (None, "pending"):
        return False
    return await sessions.run_state(stream.sid, enc.run_id) == "running"


async def _respond(
    call: Call, sid: str, encoder: UIMessageEncoder, start: Start, skip_seq: int = 0
) -> Stream:
    rt = call.rt
    stream = ChatStream(
        rt.deps,
        encoder,
        session_id=sid,
        start=start,
        slot=await rt.admit(call.who),
        expires=call.who.expires,
    )
    stream.skip_seq = skip_seq
    return sse(ui_stream(rt, stream), STREAM_HEADERS)


async def _start_run(rt: Runtime, sid: str, text: str) -> tuple[str, Start]:
    """Start a run as ``POST …/runs`` does; returns its id and where its stream starts."""
    run_id = new_run_id()
    command = {"kind": "run", "session_id": sid, "run_id": run_id, "input": text}
    offs = await rt.publisher.publish_batch(
        sid, [EventIn("run.started", {"input": text}, run_id)], command=command
    )
    try:
        await rt.store.commands.enqueue(command)
    except RedisError as exc:
        # As in POST …/runs: the run is kept with its command and a reaper sends it again.
        log.warning("run %s of %s: command not sent yet (%r)", run_id, sid, exc)
    off = offsets.parse(offs[0])
    return run_id, Start(off.epoch, off.seq - 1)


async def _answer(call: Call, sid: str, answers: dict[str, bool]) -> tuple[str, Start]:
    """Resolve the approvals a request answers, as ``POST …/approvals/{id}`` does; one
    answered already (from another device) or whose run ended meanwhile stays as it is.
    Returns their run and where its stream starts (its ``run.started``).

    Raises:
        GatewayError: 403 without ``approve``; 400 ``invalid_id``; 404
            ``approval_not_found``; 409 ``run_not_active`` when they are not of the
            session's last run.
    """
    rt = call.rt
    call.who.require("approve", sid)
    runs = set()
    for approval_id in answers:
        check_id(approval_id, "approval id")
        run_id = await rt.store.sessions.approval_run(sid, approval_id)
        if run_id is None:
            raise GatewayError(404, "approval_not_found", f"no approval {approval_id!r}")
        runs.add(run_id)
    meta = await rt.store.sessions.meta(sid)
    if meta is None or runs != {meta.run_id}:
        raise GatewayError(409, "run_not_active", "the answered approvals are not of the last run")
    for approval_id, approved in answers.items():
        decision = {"approval_id": approval_id, "decision": "approve" if approved else "deny"}
        try:
            await rt.publisher.publish_batch(
                sid, [EventIn("approval.resolved", decision, meta.run_id)]
            )
        except PublishRejected as exc:
            if exc.code not in ("approval_already_resolved", "run_ended"):
                raise
    return meta.run_id, resolve(meta, "run")


@post(
    "/v1/chat",
    status_code=200,
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "command", "scoped": False, "codes": ChatRequest.CODES},
)
async def chat(call: CallDep, data: JSONBody[ChatRequest]) -> Stream:
    """Start a run with the last user message's text (``DefaultChatTransport.sendMessages``)
    and answer with the run as a UI message stream; a last assistant message carrying
    approval answers (``tool-approval-response``) resolves them and continues the run.

    ``400 invalid_id`` / ``invalid_input``; ``403`` without ``command`` (and ``approve`` for
    answers) on the chat; ``404 approval_not_found``; ``409 run_active``."""
    sid = check_id(data.id, "chat id")
    call.who.require("command", sid)
    call.rt.refuse_if_draining()
    answers = ai_sdk.approval_answers(data.history)
    if answers:
        run_id, start = await _answer(call, sid, answers)
        encoder = UIMessageEncoder(run_id)
        encoder.continue_after(answers)
        return await _respond(call, sid, encoder, start)
    text = ai_sdk.input_text(data.history)
    if not text or not text.strip():
        raise GatewayError(
            400, "invalid_input", "the last message must be a user message with text"
        )
    run_id, start = await _start_run(call.rt, sid, text)
    return await _respond(call, sid, UIMessageEncoder(run_id), start)


@get(
    "/v1/chat/{session_id:str}/stream",
    tags=["sse"],
    media_type="text/event-stream",
    opt={"action": "view"},
    responses={204: ResponseSpec(None, description="No run is active: nothing to resume.")},
)
async def resume_chat(call: CallDep, request: Request[Any, Any, Any]) -> Response[None] | Stream:
    """The active run as a UI message stream from its ``run.started`` (a full replay, as
    ``DefaultChatTransport`` expects, then live), ending at its terminal or a pending
    approval; ``204`` when no run is active.

    With ``Last-Event-ID`` (or ``?last_event_id=``) of this run, only what follows that
    offset is sent (a client that keeps its partial message, e.g. a transport with
    ``resumeStreamIsReplay: false``); an offset of another run or log replays the run.
    ``400 invalid_offset``, ``409 offset_ahead``."""
    rt = call.rt
    rt.refuse_if_draining()
    meta = await rt.store.sessions.meta(call.sid)
    cursor = last_event_id(request)
    off = offsets.parse(cursor) if cursor else None
    if meta is None or meta.status != "running" or not meta.run_id:
        return Response(None, status_code=204)
    skip = 0
    if off is not None and off.epoch == meta.epoch:
        if off.seq > meta.seq:
            raise OffsetAhead(f"offset {cursor} is beyond the last event {meta.seq}")
        skip = off.seq if off.seq >= meta.run_first_seq else 0
    encoder = UIMessageEncoder(meta.run_id)
    return await _respond(call, call.sid, encoder, resolve(meta, "run"), skip)


@post(
    "/v1/chat/{session_id:str}/stop",
    status_code=202,
    opt={"action": "command"},
    responses={204: ResponseSpec(None, description="No run is active: nothing to stop.")},
)
async def stop_chat(
    call: CallDep, run_id: FromQuery[str | None] = None
) -> Response[RunAccepted | None]:
    """Cancel the active run: ``202`` with its id (the run then ends with ``run.cancelled``,
    which open streams deliver as ``abort``); ``204`` when no run is active. ``?run_id=``
    (the assistant message id) stops only that run: ``409 run_not_active`` when another
    run is active, so a late stop cannot cancel the next message's run."""
    rt, sid = call.rt, call.sid
    meta = await rt.store.sessions.meta(sid)
    if meta is None or meta.status != "running" or not meta.run_id:
        return Response(None, status_code=204)
    if run_id is not None and run_id != meta.run_id:
        raise GatewayError(409, "run_not_active", f"run {run_id!r} is not running")
    await rt.store.sessions.request_cancel(sid, meta.run_id)
    await end_orphan(rt.publisher, sid, meta.run_id)
    return Response(RunAccepted(meta.run_id), status_code=202)


@get("/v1/chat/{session_id:str}/messages", opt={"action": "view"})
async def chat_messages(call: CallDep) -> list[UIMessage]:
    """The session's history as ``UIMessage[]`` (for ``useChat({messages})``); ``[]`` for
    an unknown session. See :mod:`gateway.protocols.ai_sdk_messages`."""
    sessions = call.rt.store.sessions
    meta = await sessions.meta(call.sid)
    if meta is None:
        return []
    trimmed: list[dict[str, object]] = []
    if meta.first_seq > 1:
        res = await snapshots.load(sessions, call.sid)
        trimmed = res[1]["runs"] if res is not None else []
    events: list[StoredEvent] = []
    page, seq = call.rt.settings.catchup_page, meta.first_seq - 1
    while True:
        batch = await sessions.read(call.sid, seq, page)
        events += batch
        if len(batch) < page:
            break
        seq = batch[-1].seq
    return [UIMessage(m["id"], m["role"], m["parts"]) for m in session_messages(events, trimmed)]


HANDLERS = [chat, resume_chat, stop_chat, chat_messages]
