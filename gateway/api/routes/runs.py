"""Runs: commands from browsers to workers: start a run, cancel it, answer an approval."""

from __future__ import annotations

import logging

from litestar import post
from litestar.params import FromPath, JSONBody
from redis.exceptions import RedisError

from gateway.agent.leases import end_orphan
from gateway.agent.publisher import EventIn, new_run_id
from gateway.api.deps import CallDep
from gateway.api.schemas import ApprovalAnswered, Decision, Empty, RunAccepted, StartRun
from gateway.core.errors import GatewayError
from gateway.store.sessions import PublishRejected

log = logging.getLogger(__name__)


@post(
    "/v1/sessions/{session_id:str}/runs",
    status_code=202,
    opt={"action": "command", "codes": StartRun.CODES},
)
async def start_run(call: CallDep, data: JSONBody[StartRun]) -> RunAccepted:
    """Start a run: ``run.started``, its ``queued`` lease and its worker command are written
    by one script; the command is then sent to the workers (a reaper sends it again if this
    process dies first). ``409 run_active`` while the session has a running run."""
    if not data.input.strip():
        raise GatewayError(400, "invalid_input", "input must be a non-empty string")
    rt, sid = call.rt, call.sid
    run_id = new_run_id()
    command = {"kind": "run", "session_id": sid, "run_id": run_id, "input": data.input}
    await rt.publisher.start_run(sid, data.input, run_id=run_id, command=command)
    try:
        await rt.store.commands.enqueue(command)
    except RedisError as exc:
        # The run is accepted and kept with its command: a reaper sends it again.
        log.warning("run %s of %s: command not sent yet (%r)", run_id, sid, exc)
    return RunAccepted(run_id)


@post(
    "/v1/sessions/{session_id:str}/runs/{run_id:str}/cancel",
    status_code=202,
    opt={"action": "command"},
)
async def cancel_run(call: CallDep, run_id: FromPath[str]) -> Empty:
    """Ask the worker running ``run_id`` to stop; it publishes the one ``run.cancelled``.

    A run no worker holds (none took it yet, or its worker is gone) is cancelled here and
    now; a frozen worker's run is cancelled by the reaper once its lease expires.
    ``409 run_not_active`` when ``run_id`` is not the session's running run."""
    rt, sid = call.rt, call.sid
    meta = await rt.store.sessions.meta(sid)
    if meta is None:
        raise GatewayError(404, "session_not_found", f"no session {sid!r}")
    if meta.run_id != run_id or meta.status != "running":
        raise GatewayError(409, "run_not_active", f"run {run_id!r} is not running")
    await rt.store.sessions.request_cancel(sid, run_id)
    await end_orphan(rt.publisher, sid, run_id)
    return Empty()


@post(
    "/v1/sessions/{session_id:str}/approvals/{approval_id:str}",
    status_code=200,
    opt={"action": "approve", "codes": Decision.CODES},
)
async def answer_approval(
    call: CallDep, approval_id: FromPath[str], data: JSONBody[Decision]
) -> ApprovalAnswered:
    """Answer a pending approval once: publishes ``approval.resolved``.

    ``404 approval_not_found``; ``409 approval_already_resolved`` for every answer after
    the first, from any device."""
    rt, sid = call.rt, call.sid
    run_id = await rt.store.sessions.approval_run(sid, approval_id)
    if run_id is None:
        raise GatewayError(404, "approval_not_found", f"no approval {approval_id!r}")
    resolved = {"approval_id": approval_id, "decision": data.decision}
    try:
        offs = await rt.publisher.publish_batch(
            sid, [EventIn("approval.resolved", resolved, run_id)]
        )
    except PublishRejected as exc:
        if exc.code == "approval_not_found":  # the hash was lost meanwhile: still a 404 here
            raise GatewayError(404, exc.code, f"no approval {approval_id!r}") from exc
        raise
    return ApprovalAnswered(offs[0])


HANDLERS = [start_run, cancel_run, answer_approval]
