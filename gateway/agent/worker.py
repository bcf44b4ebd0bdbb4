"""Worker: the runtime agent workers share. Consumes run commands, holds fenced leases,
resumes handed-back runs, honours cancel, and drains on SIGTERM.

Commands arrive on the global command stream through the ``workers`` consumer group
(XREADGROUP); a command is acked when its run has ended (or was handed back), so a worker that
crashes mid-run leaves it pending and another worker reclaims it with XAUTOCLAIM after
``claim_idle`` (and finds the run ended by a reaper, or plays it if it was never taken).

An :class:`Agent` plays one :class:`Turn`. Every event it publishes carries the lease's
fencing token: the first refusal (``run_ended``, ``lease_lost``) stops the run, and nothing
more is published for it. ``turn.prior`` is the run's state folded from the log: empty for a
new run, what an earlier holder published for a run handed back to the queue, so an agent
that can continue (the demo agent) picks up where the other worker stopped.

Drain (SIGTERM, :meth:`Worker.begin_drain`): the worker stops taking commands, lets its runs
finish for up to ``worker_drain_timeout`` seconds, hands the rest back (a new fencing token,
holder ``queued``, the command sent again) and exits. A planned restart ends no run as
interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.agent.leases import RunLease, reap_forever
from gateway.agent.publisher import Publisher, Run
from gateway.core import fold
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.sessions import PublishRejected

log = logging.getLogger(__name__)

APPROVAL_POLL_S = 0.1
T = TypeVar("T")
# Redis unreachable (a restart, a dropped or stalled connection): worth waiting out.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class Cancelled(Exception):
    """The run was cancelled by a browser."""


class LeaseLost(Exception):
    """The run's lease was lost (the run was ended or handed over): stop publishing."""


@dataclass
class Turn:
    """One run an :class:`Agent` plays.

    ``run`` publishes with the lease's fencing token. ``prior`` is the run's state folded
    from its events so far (the run shape of docs/api.md: ``text``, ``reasoning``,
    ``tools``, ``approvals``); a fresh run has only its ``run.started``.
    """

    session_id: str
    run_id: str
    input: str
    command: dict[str, str]
    run: Run
    prior: dict[str, Any]
    worker: Worker
    lease: RunLease = field(repr=False)

    async def patient(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis read, waiting out outages for as long as the lease is held.

        A reaper ends the run if the outage outlasts the lease; the renewal then learns it
        and this raises :class:`LeaseLost`.
        """
        pause = 0.05
        while True:
            if self.lease.lost:
                raise LeaseLost()
            try:
                return await op()
            except TRANSIENT as exc:
                log.info("worker: run %s: Redis unreachable (%r); waiting", self.run_id, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease is gone, :class:`Cancelled` when a browser
        asked to cancel; call it between events."""
        store = self.worker.store
        if await self.patient(
            lambda: store.sessions.cancel_requested(self.session_id, self.run_id)
        ):
            raise Cancelled()

    async def approval(self, approval_id: str, prompt: str) -> str:
        """Ask for approval (unless an earlier holder already did) and wait for a browser's
        decision: ``approve`` or ``deny``.

        Raises:
            Cancelled, LeaseLost: while waiting.
        """
        asked = {a["approval_id"]: a for a in self.prior.get("approvals", [])}
        if approval_id in asked and asked[approval_id].get("decision"):
            return str(asked[approval_id]["decision"])
        if approval_id not in asked:
            await self.run.request_approval(approval_id, prompt)
        store = self.worker.store
        while True:
            state = await self.patient(
                lambda: store.sessions.approval_state(self.session_id, approval_id)
            )
            if state in ("approve", "deny"):
                return state
            await self.check()
            await asyncio.sleep(APPROVAL_POLL_S)


class Agent(Protocol):
    """What plays runs: publish through ``turn.run``, call ``turn.check()`` between events,
    finish with ``turn.run.complete()``. Raise :class:`Cancelled` to end as cancelled; any
    other exception ends the run as failed."""

    async def play(self, turn: Turn) -> None: ...


def remaining(full: str, already: str) -> str:
    """What is left of ``full`` once ``already`` (a prefix published earlier) is removed."""
    return full[len(already) :] if full.startswith(already) else full


class Worker:
    """Consumes run commands from the ``workers`` consumer group and plays them with ``agent``.

    Args:
        store: the Redis store; publisher: where run events go; settings: name, lease and
            pickup timeouts, ``command_claim_idle``, ``worker_drain_timeout``.
    """

    def __init__(
        self, store: Store, publisher: Publisher, settings: Settings, agent: Agent
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self.agent = agent
        self.name = settings.worker_name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.claim_idle = settings.command_claim_idle
        self.draining = False
        self._wake = asyncio.Event()
        self._runs: dict[asyncio.Task[None], RunLease | None] = {}

    def begin_drain(self) -> None:
        """Stop taking commands; :meth:`run_forever` then finishes or hands back its runs."""
        if not self.draining:
            log.warning("worker %s: draining (%d run(s) in flight)", self.name, len(self._runs))
        self.draining = True
        self._wake.set()

    async def run_forever(self) -> None:
        """Consume commands until cancelled, or until a drain has finished."""
        await self.store.commands.ensure_group()
        reaper = asyncio.create_task(
            reap_forever(
                self.store,
                self.publisher,
                self.settings.run_lease_ttl / 3,
                self.settings.requeue_grace,
            ),
            name="reaper",
        )
        try:
            await self._consume()
            await self._drain(self.settings.worker_drain_timeout)
        finally:
            reaper.cancel()
            await self._drain(0)  # cancelled: whatever still runs is handed back

    async def _consume(self) -> None:
        last_claim = 0.0
        while not self.draining:
            try:
                if time.monotonic() - last_claim > self.claim_idle / 2:
                    last_claim = time.monotonic()
                    for cid, fields in await self.store.commands.claim_stale(
                        self.name, int(self.claim_idle * 1000)
                    ):
                        self._spawn(cid, fields)
                t0 = time.monotonic()
                batch = await self.store.commands.read(self.name, 10, 1000)
                for cid, fields in batch:
                    self._spawn(cid, fields)
                if not batch and time.monotonic() - t0 < 0.05:
                    # The embedded fakeredis does not honour BLOCK; do not spin.
                    self._wake.clear()
                    await _wait(self._wake, 0.05)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker: command loop error; retrying")
                self._wake.clear()
                await _wait(self._wake, 1.0)

    async def _drain(self, timeout: float) -> None:
        """Let the runs in flight finish for ``timeout`` seconds, then hand back the rest."""
        if self._runs and timeout > 0:
            await asyncio.wait(list(self._runs), timeout=timeout)
        pending = list(self._runs)
        if not pending:
            return
        log.warning("worker %s: handing back %d run(s)", self.name, len(pending))
        for task in pending:
            lease = self._runs.get(task)
            if lease is not None:
                lease.hand_back = True
            task.cancel()
        await asyncio.wait(pending, timeout=10)

    def _spawn(self, command_id: str, fields: dict[str, str]) -> None:
        if self.draining:
            return  # read but not started: left pending, reclaimed by another worker
        task = asyncio.create_task(self._handle(command_id, fields))
        self._runs[task] = None
        task.add_done_callback(lambda t: self._runs.pop(t, None))

    async def _handle(self, command_id: str, fields: dict[str, str]) -> None:
        try:
            if fields.get("kind") == "run":
                await self._play_command(fields)
        except asyncio.CancelledError:
            lease = self._runs.get(asyncio.current_task())  # type: ignore[arg-type]
            if lease is None or not lease.handed_back:
                raise  # stopping: the command stays pending for another worker
            await self._requeue(command_id, fields)
            raise
        except TRANSIENT as exc:
            # Before the run was taken: leave the command pending; it is claimed again.
            log.warning("worker: command %s: Redis unreachable (%r)", command_id, exc)
            return
        except Exception:
            log.exception("worker: command %s failed", command_id)
        try:
            await self.store.commands.ack(command_id)
        except TRANSIENT as exc:
            log.warning("worker: ack of %s failed (%r); it may be claimed again", command_id, exc)

    async def _requeue(self, command_id: str, fields: dict[str, str]) -> None:
        try:
            await self.store.commands.enqueue(fields)
            await self.store.commands.ack(command_id)
        except Exception as exc:
            # The run is queued again either way: the reaper re-sends its command.
            log.warning("worker: re-sending the command of a handed-back run failed: %r", exc)

    async def _play_command(self, fields: dict[str, str]) -> None:
        """Play the run a command names (a drain may hand it back: see ``_drain``)."""
        sid, run_id = fields["session_id"], fields["run_id"]
        meta = await self.store.sessions.meta(sid)
        # A reclaimed or repeated command whose run already ended must not play again.
        if meta is None or meta.run_id != run_id or meta.status != "running":
            return
        lease = RunLease(
            self.store,
            sid,
            run_id,
            self.name,
            self.settings.run_lease_ttl,
            self.settings.run_pickup_timeout,
        )
        me = asyncio.current_task()
        assert me is not None
        self._runs[me] = lease
        async with lease:
            if lease.lost:
                log.info("worker: run %s is held or ended elsewhere; not playing it", run_id)
                return
            run = Run(self.publisher, sid, run_id, fence=lease.token)
            turn = Turn(sid, run_id, fields.get("input", ""), fields, run, {}, self, lease)
            try:
                turn.prior = await turn.patient(
                    lambda: self._prior(sid, meta.epoch, meta.run_first_seq, run_id)
                )
            except LeaseLost:
                return
            await self._play(turn)

    async def _prior(self, sid: str, epoch: str, first_seq: int, run_id: str) -> dict[str, Any]:
        """The run's state folded from its events in the log (a handed-back run's progress)."""
        state = fold.empty_state(sid)
        after = max(0, first_seq - 1)
        while True:
            batch = await self.store.sessions.read(sid, after, 500)
            for ev in batch:
                if ev.run_id == run_id:
                    fold.apply(state, ev.type, run_id, json.loads(ev.data))
            if len(batch) < 500:
                break
            after = batch[-1].seq
        for run in state["runs"]:
            if run["run_id"] == run_id:
                return dict(run)
        return {"run_id": run_id, "text": "", "reasoning": "", "tools": [], "approvals": []}

    async def _play(self, turn: Turn) -> None:
        run = turn.run
        try:
            try:
                await self.agent.play(turn)
            except Cancelled:
                await run.cancel()
            except (LeaseLost, PublishRejected, *TRANSIENT):
                raise
            except Exception as exc:
                log.exception("worker: run %s failed", run.run_id)
                await run.fail(f"{type(exc).__name__}: {exc}")
        except LeaseLost:
            log.warning("worker: lost the lease of %s; stopping it", run.run_id)
        except PublishRejected as exc:
            # Fenced out: a reaper ended the run, or it was handed over. Publish nothing more.
            log.warning("worker: run %s refused (%s); stopping it", run.run_id, exc.code)
        except TRANSIENT as exc:
            # A publish outlived its retry budget (Redis down for long): stop; the lease is
            # released or expires and a reaper ends the run with its one terminal.
            log.warning("worker: run %s: Redis unreachable (%r); stopping it", run.run_id, exc)


def demo_worker(store: Store, publisher: Publisher, settings: Settings) -> Worker:
    """The demo agent (``gateway.agent.demo``) on the worker runtime: ``gateway worker``."""
    from gateway.agent.demo import DemoAgent

    agent = DemoAgent(settings.docs_dir.parent, settings.tokens_per_second)
    return Worker(store, publisher, settings, agent)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
