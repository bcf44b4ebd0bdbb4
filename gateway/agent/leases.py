"""Leases: who is running a run, fencing tokens, and ending runs whose worker is gone.

Every run has a lease from its first instant: the publish script that writes ``run.started``
also takes the ``queued`` lease (``run_pickup_timeout``). A worker takes the run over from
``queued`` with :class:`RunLease` (TTL ``run_lease_ttl``, renewed at a third of it) and gets a
**fencing token** that only grows; it publishes with that token, and the publish script
refuses its events once the token is no longer current (M. Kleppmann, "How to do distributed
locking", 2016). A worker can take a run only from ``queued``, never from another worker, so
a dead worker's run is ended, not replayed; a draining worker *hands back* its run (a new
token, ``queued`` again) so another worker continues it.

The reaper runs in every gateway and worker process. For each session in the running index
whose active run has no live lease, whatever its holder field says, it publishes the run's one
terminal: ``run.cancelled`` if a cancel was asked, else ``run.failed``
``{reason: "interrupted"}``. The condition is checked inside the publish script, so racing
reapers and a late worker produce exactly one terminal. The reaper also re-sends the command
of a run still ``queued`` after a grace period (the gateway died before sending it).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from gateway.agent.publisher import EventIn, Publisher
from gateway.core.aio import cancel_and_wait
from gateway.store import Store
from gateway.store.sessions import PublishRejected

log = logging.getLogger(__name__)

INTERRUPTED = {"error": "the worker running this run stopped responding", "reason": "interrupted"}
QUEUED = "queued"


class RunLease:
    """Hold the lease of one run while a worker plays it (``async with``).

    ``token`` is the fencing token to publish with (0 when the lease could not be taken).
    ``lost`` is True when the lease could not be taken (the run ended, or another worker
    holds it) or a renewal was refused (the run was ended or handed over); the holder must
    then stop publishing for the run. Set ``hand_back`` before leaving the block to give the
    run back to the queue (a draining worker) instead of releasing it.
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        run_id: str,
        holder: str,
        ttl: float,
        pickup_timeout: float = 60.0,
    ) -> None:
        self.sessions, self.sid, self.run_id = store.sessions, session_id, run_id
        self.holder, self.ttl, self.pickup_timeout = holder, ttl, pickup_timeout
        self.token = 0
        self.lost = False
        self.hand_back = False
        self.handed_back = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLease:
        self.token = await self.sessions.lease(
            "acquire", self.sid, self.run_id, self.holder, self.ttl
        )
        if not self.token:
            self.lost = True  # the run is no longer active, or another worker holds it
        else:
            self._task = asyncio.create_task(self._renew(), name=f"lease-{self.run_id}")
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ok = await self.sessions.lease(
                    "renew", self.sid, self.run_id, self.holder, self.ttl, self.token
                )
            except Exception as exc:
                # Redis is unreachable: keep trying. The token stays valid until someone else
                # ends the run; if a reaper does, the next renewal (and publish) is refused.
                log.warning("lease: renewal of %s failed (%r); retrying", self.run_id, exc)
                continue
            if not ok:
                log.warning("lease: %s was ended or handed over elsewhere", self.run_id)
                self.lost = True
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await cancel_and_wait(self._task, f"lease renewal of {self.run_id}")
        if self.lost or not self.token:
            return
        op, ttl = ("handback", self.pickup_timeout) if self.hand_back else ("release", self.ttl)
        try:
            res = await self.sessions.lease(op, self.sid, self.run_id, self.holder, ttl, self.token)
        except Exception as e:
            # Nothing is lost: the lease expires and a reaper ends the run (or, for a hand
            # back, it is ended as interrupted instead of continued).
            log.warning("lease: %s of %s failed: %r", op, self.run_id, e)
            return
        self.handed_back = self.hand_back and bool(res)


async def end_orphan(publisher: Publisher, session_id: str, run_id: str) -> bool:
    """Publish ``run.cancelled`` for a run no worker holds (no live lease, or only the
    ``queued`` one); False when a worker holds it (it sees the cancel flag itself)."""
    try:
        await publisher.publish_batch(
            session_id, [EventIn("run.cancelled", {}, run_id)], guard="orphan"
        )
    except PublishRejected:
        return False
    return True


async def reap_once(store: Store, publisher: Publisher, requeue_grace_s: float = 5.0) -> list[str]:
    """End every active run that has no live lease; returns the session ids it ended.

    Also forgets sessions whose run ended, and re-sends the command of runs still
    ``queued`` after ``requeue_grace_s`` seconds (once per queued period).
    """
    ended = []
    for sid, score in await store.runs.sessions():
        meta = await store.sessions.meta(sid)
        if meta is None or meta.status != "running":
            # Its end was recorded; forget it unless a new run was marked meanwhile.
            await store.runs.forget(sid, score)
            continue
        run_id = meta.run_id
        holder = await store.sessions.lease_holder(sid)
        if holder == QUEUED:
            command = await store.sessions.take_requeue(sid, requeue_grace_s)
            if command is not None:
                log.warning("reaper: sending the command of queued run %s again", run_id)
                await store.commands.enqueue(command)
            continue
        if holder is not None:
            continue
        cancelled = meta.cancel_requested == run_id
        terminal = (
            EventIn("run.cancelled", {}, run_id)
            if cancelled
            else EventIn("run.failed", dict(INTERRUPTED), run_id)
        )
        try:
            await publisher.publish_batch(sid, [terminal], guard="interrupt")
        except PublishRejected:
            continue  # another reaper won, or the worker came back
        log.warning("reaper: run %s of %s ended (%s; no live lease)", run_id, sid, terminal.type)
        ended.append(sid)
    return ended


async def reap_forever(
    store: Store, publisher: Publisher, interval: float, requeue_grace_s: float = 5.0
) -> None:
    """Run :func:`reap_once` every ``interval`` seconds until cancelled."""
    while True:
        try:
            await reap_once(store, publisher, requeue_grace_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reaper: pass failed")
        await asyncio.sleep(interval)
