"""Leases: who is running a run, and ending runs whose worker died.

A worker holds a lease on the run it plays (a Redis key with a TTL, renewed at a third of
it). The gateway takes a first lease, ``queued``, when it accepts a run, lasting
``run_pickup_timeout``, so a run no worker picks up is not left running forever. The reaper
runs in every gateway and worker process: for each session in the running index it tries a
guarded publish of ``run.failed`` {error, reason: "interrupted"} that succeeds only if the run
is still active, had a holder, and its lease has expired. A worker can take a run only from
the ``queued`` holder, never from another worker, so a dead worker's run is ended, not
replayed. The guard is checked inside the
publish script, so racing reapers produce exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from gateway.publisher import EventIn, Publisher
from gateway.streams import PublishRejected, Streams

log = logging.getLogger(__name__)

INTERRUPTED = {"error": "the worker running this run stopped responding", "reason": "interrupted"}


class RunLease:
    """Hold the lease of one run while a worker plays it (``async with``).

    ``lost`` is True when the lease could not be taken (the run ended, or another worker
    held it) or a renewal failed (the run was reaped); the holder must then stop
    publishing for the run.
    """

    def __init__(self, streams: Streams, session_id: str, run_id: str, holder: str, ttl: float):
        self.streams, self.sid, self.run_id = streams, session_id, run_id
        self.holder, self.ttl = holder, ttl
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLease:
        if not await self.streams.lease("acquire", self.sid, self.run_id, self.holder, self.ttl):
            self.lost = True  # the run is no longer active
        else:
            self._task = asyncio.create_task(self._renew())
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ok = await self.streams.lease("renew", self.sid, self.run_id, self.holder, self.ttl)
            except Exception:
                log.warning("lease: renewal of %s failed; retrying", self.run_id)
                continue
            if not ok:
                self.lost = True
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.streams.lease("release", self.sid, self.run_id, self.holder, self.ttl)


async def reap_once(streams: Streams, publisher: Publisher) -> list[str]:
    """End every run whose lease expired; returns the session ids it ended."""
    ended = []
    for sid in await streams.running_sessions():
        meta = await streams.meta(sid)
        if meta is None or meta.status != "running":
            # Its end is being (or was) recorded by the publisher; the entry is stale.
            await streams.forget_running(sid)
            continue
        run_id = meta.run_id
        if not await streams.run_holder(sid) or await streams.lease_holder(sid):
            continue
        try:
            await publisher.publish_batch(
                sid, [EventIn("run.failed", dict(INTERRUPTED), run_id)], guard="interrupt"
            )
        except PublishRejected:
            continue  # another reaper won, or the worker came back
        log.warning("reaper: run %s of %s interrupted (lease expired)", run_id, sid)
        ended.append(sid)
    return ended


async def reap_forever(streams: Streams, publisher: Publisher, interval: float) -> None:
    """Run :func:`reap_once` every ``interval`` seconds until cancelled."""
    while True:
        try:
            await reap_once(streams, publisher)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reaper: pass failed")
        await asyncio.sleep(interval)
