"""Sessions: a session's log and run state in Redis, the keys one publish script changes
atomically. This module owns every key of the ``{<session id>}`` family but consumers:

==============================  ==========================================================
``gw:{sid}:log``                the event log, a Stream; entry ID ``<seq>-0``, fields ``t``
                                type, ``r`` run id, ``d`` data JSON, ``ts`` server ms
``gw:{sid}:meta``               hash: epoch, seq, status, run_id, run_first_seq, title,
                                fence (fencing token), run_holder, queued_ms, run_command,
                                cancel_requested, last_run_status, created_ms, updated_ms
``gw:{sid}:runs``               hash: run_id → ``running`` | ``completed`` | ``failed`` |
                                ``cancelled`` (one terminal per run, nothing after it)
``gw:{sid}:lease``              string: the active run's lease holder (expires); ``queued``
                                from the run's start until a worker takes it
``gw:{sid}:approvals``          hash: approval_id → ``pending`` | ``approve`` | ``deny``,
                                and ``<approval_id>:run`` → the run that asked
``gw:{sid}:producers``          hash: producer id → results of its recent batches
``gw:{sid}:snap``               hash: the latest folded snapshot and its offset
``gw:{sid}:live``               Pub/Sub channel: ``E`` and ``K`` frames (core.frames)
==============================  ==========================================================

``gw`` is the configurable prefix; ``{sid}`` is a Redis Cluster hash tag, so a session's keys
live on one shard and its scripts stay single-slot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.client import Pipeline

from gateway.core import offsets
from gateway.core.errors import GatewayError
from gateway.core.events import StoredEvent
from gateway.store.base import Family, Script, resolved

PARTS = ("meta", "log", "approvals", "snap", "producers", "runs")  # what idle sessions expire


class PublishRejected(GatewayError):
    """The publish script refused a batch; nothing of it was stored.

    Status ``409``; codes: ``approval_not_found``, ``approval_already_resolved``,
    ``run_active``, ``run_exists``, ``run_ended``, ``lease_lost``, ``guard_failed``.
    """

    def __init__(self, code: str) -> None:
        super().__init__(409, code, f"publish rejected: {code}")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a batch landed: offsets ``first_seq`` … ``last_seq`` of ``epoch``; ``ts`` in ms."""

    epoch: str
    first_seq: int
    last_seq: int
    ts: int

    def offsets(self) -> list[str]:
        """The batch's offsets, in order."""
        return [
            offsets.format_offset(self.epoch, s) for s in range(self.first_seq, self.last_seq + 1)
        ]


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """A session's metadata. ``first_seq`` is the oldest retained entry (``seq + 1`` if empty)."""

    session_id: str
    epoch: str
    seq: int
    first_seq: int
    status: str
    title: str
    run_id: str
    run_first_seq: int
    updated_ms: int
    created_ms: int
    cancel_requested: str


def envelope_json(session_json: str, epoch: str, ev: StoredEvent) -> str:
    """Serialize an event envelope without re-encoding ``data`` (it is stored as JSON text).

    ``session_json`` is the JSON-encoded session id; types and ids are validated at publish
    time to be plain ASCII tokens, so quoting them directly is exact.
    """
    run = f'"{ev.run_id}"' if ev.run_id else "null"
    return (
        f'{{"offset":"{offsets.format_offset(epoch, ev.seq)}","session_id":{session_json},'
        f'"run_id":{run},"type":"{ev.type}","data":{ev.data},"ts":{ev.ts}}}'
    )


class SessionLog(Family):
    """Every operation on a session's log and run state (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publish = Script(self.redis, "publish.lua")
        self._ensure = Script(self.redis, "ensure.lua")
        self._lease = Script(self.redis, "lease.lua")
        self._requeue = Script(self.redis, "requeue.lua")
        self._snapshot = Script(self.redis, "snapshot.lua")

    def key(self, sid: str, part: str) -> str:
        """The name of one of the session's keys (``part``: see the module docstring)."""
        return f"{self.prefix}:{{{sid}}}:{part}"

    def live_channel(self, sid: str) -> str:
        """The Pub/Sub channel carrying a session's live frames."""
        return self.key(sid, "live")

    # --- publishing --------------------------------------------------------------------------
    async def publish(
        self,
        sid: str,
        events: Sequence[tuple[str, str, str, str, str]],
        *,
        maxlen: int,
        guard: str = "0",
        producer: tuple[str, int] | None = None,
        producer_low: int | None = None,
        fence: int | None = None,
        pickup_ms: int = 60_000,
        command: str = "",
    ) -> PublishResult:
        """Append ``events`` (type, run_id, data JSON, aux1, aux2) atomically, in one round trip.

        The script (``lua/publish.lua``) enforces the run lifecycle: a run starts once and
        only while none is active, and its ``run.started`` takes the ``queued`` lease for
        ``pickup_ms`` and keeps ``command`` (the run's worker command, JSON) with it; a run
        has exactly one terminal event and nothing after it.

        ``guard``: ``"interrupt"`` publishes only if the batch's run is active and has no live
        lease (the reaper); ``"orphan"``, also if only the ``queued`` lease holds it (a cancel
        no worker will see). ``fence`` is a worker's fencing token (from :meth:`lease`): the
        batch is refused once the token is not the session's current one. ``producer`` is
        (producer id, batch sequence): sending the same pair again returns the first result
        and appends nothing, so a publish retried after a lost reply is never duplicated.
        ``producer_low`` is the producer's oldest sequence still unanswered (its low-water
        mark): results from there on are remembered (up to 4,096 batches per session), so a
        call retried late still finds its result; without it, the newest 32 are.
        Connection errors are retried for up to ``publish_retry_s`` seconds on one node (a
        Redis restart), and for the cluster client's own budget on a cluster (a failover).

        Raises:
            PublishRejected: the batch broke a rule (its ``code``); nothing was stored.
        """
        args: list[str | int] = [
            offsets.new_epoch(),
            maxlen,
            self.live_channel(sid),
            guard,
            self.publish_command,
            len(events),
            producer[0] if producer else "",
            producer[1] if producer else 0,
            "" if fence is None else fence,
            max(1, pickup_ms),
            command,
            "" if producer_low is None else producer_low,
        ]
        for ev in events:
            args.extend(ev)
        keys = [self.key(sid, p) for p in ("meta", "log", "approvals", "lease", "producers")]
        keys.append(self.key(sid, "runs"))
        # Retried through a Redis restart or failover with the same (producer, sequence), so
        # a batch whose reply was lost is answered from the producers hash, not appended again.
        res = cast(list[Any], await self.retrying(lambda: self._publish(keys=keys, args=args)))
        if res[0] != "ok":
            raise PublishRejected(str(res[0]))
        return PublishResult(str(res[1]), int(res[2]), int(res[3]), int(res[4]))

    async def ensure(self, sid: str) -> tuple[str, int, bool]:
        """Create the session's metadata if absent. Returns (epoch, last seq, created)."""
        keys = [self.key(sid, "meta"), self.key(sid, "log"), self.key(sid, "approvals")]
        res = cast(list[Any], await self._ensure(keys=keys, args=[offsets.new_epoch()]))
        return str(res[0]), int(res[1]), bool(int(res[2]))

    # --- reading -----------------------------------------------------------------------------
    async def meta(self, sid: str) -> SessionMeta | None:
        """The session's metadata and its first retained sequence, or None if unknown."""
        return (await self.metas([sid]))[0]

    async def metas(self, sids: Sequence[str]) -> list[SessionMeta | None]:
        """Several sessions' metadata in one round trip (None for unknown ones)."""

        def build(pipe: Pipeline) -> None:
            for sid in sids:
                pipe.hgetall(self.key(sid, "meta"))
                pipe.xrange(self.key(sid, "log"), "-", "+", count=1)

        replies = await self.pipeline(build, atomic=False)
        return [_meta(sid, replies[2 * i], replies[2 * i + 1]) for i, sid in enumerate(sids)]

    async def read(self, sid: str, after_seq: int, count: int) -> list[StoredEvent]:
        """Up to ``count`` events with ``seq > after_seq``, in order (one XRANGE)."""
        # Batched: a burst of viewers attaching (a deploy, a reconnect storm) reads together.
        entries = await self.batch.call(
            "XRANGE", self.key(sid, "log"), f"{after_seq + 1}-0", "+", "COUNT", count
        )
        return [
            StoredEvent(int(eid.split("-", 1)[0]), int(f["ts"]), f["t"], f["r"], f["d"])
            for eid, f in entries
        ]

    async def head(self, sid: str) -> tuple[str | None, int]:
        """(epoch, last seq) from the metadata alone; (None, 0) for an unknown session."""
        # Batched: every idle stream re-checks its head on each heartbeat (store.base.Batch).
        epoch, seq = await self.batch.call("HMGET", self.key(sid, "meta"), "epoch", "seq")
        return epoch, int(seq or 0)

    # --- approvals and cancel flags -----------------------------------------------------------
    async def approval_state(self, sid: str, approval_id: str) -> str | None:
        """``pending``, ``approve``, ``deny`` or None when unknown."""
        return await resolved(self.redis.hget(self.key(sid, "approvals"), approval_id))

    async def approval_run(self, sid: str, approval_id: str) -> str | None:
        """The run that requested ``approval_id``, or None when unknown."""
        return await resolved(self.redis.hget(self.key(sid, "approvals"), f"{approval_id}:run"))

    async def request_cancel(self, sid: str, run_id: str) -> None:
        """Flag ``run_id`` for cancellation; the worker running it polls the flag."""
        await resolved(self.redis.hset(self.key(sid, "meta"), "cancel_requested", run_id))

    async def cancel_requested(self, sid: str, run_id: str) -> bool:
        """Whether a cancel was requested for ``run_id``."""
        return await resolved(self.redis.hget(self.key(sid, "meta"), "cancel_requested")) == run_id

    # --- runs and leases ---------------------------------------------------------------------
    async def lease(
        self, op: str, sid: str, run_id: str, holder: str, ttl_s: float, token: int = 0
    ) -> int:
        """``acquire``/``renew``/``release``/``handback`` the lease of ``run_id``.

        ``acquire`` returns the new fencing token (0: refused); ``handback`` the token that
        replaces ``token``; the others 1 on success, 0 when the lease is lost. See
        ``lua/lease.lua``.
        """
        res = await self._lease(
            keys=[self.key(sid, "meta"), self.key(sid, "lease")],
            args=[op, run_id, holder, max(1, int(ttl_s * 1000)), token],
        )
        return int(res or 0)

    async def lease_holder(self, sid: str) -> str | None:
        """The current holder of the session's run lease, or None when none is held."""
        return await resolved(self.redis.get(self.key(sid, "lease")))

    async def run_holder(self, sid: str) -> str:
        """Who took the active run's lease (a worker, or ``queued``); '' when nobody."""
        return await resolved(self.redis.hget(self.key(sid, "meta"), "run_holder")) or ""

    async def run_state(self, sid: str, run_id: str) -> str | None:
        """``running``, ``completed``, ``failed``, ``cancelled``, or None for an unknown run."""
        return await resolved(self.redis.hget(self.key(sid, "runs"), run_id))

    async def take_requeue(self, sid: str, grace_s: float) -> dict[str, str] | None:
        """The command of a run still ``queued`` after ``grace_s`` seconds, once per queued
        period (see ``lua/requeue.lua``); None when nothing needs sending again."""
        res = await self._requeue(keys=[self.key(sid, "meta")], args=[int(grace_s * 1000)])
        if not res:
            return None
        command = json.loads(res)
        return {str(k): str(v) for k, v in command.items()} if isinstance(command, dict) else None

    # --- snapshots and retention ---------------------------------------------------------------
    async def load_snapshot(self, sid: str) -> tuple[str, str] | None:
        """The stored snapshot as (offset, state JSON), or None."""
        raw = await resolved(self.redis.hgetall(self.key(sid, "snap")))
        if not raw:
            return None
        return raw["offset"], raw["state"]

    async def save_snapshot(self, sid: str, offset: str, state_json: str) -> bool:
        """Store the snapshot folded up to ``offset`` unless the stored one is as new or
        newer, or the log's epoch changed (``lua/snapshot.lua``). True when stored."""
        res = await self._snapshot(
            keys=[self.key(sid, "snap"), self.key(sid, "meta")], args=[offset, state_json]
        )
        return bool(res)

    async def compact(self, sid: str, min_seq: int, ttl_s: float) -> int:
        """Drop log entries older than ``min_seq`` (XTRIM MINID; IDs are ``<seq>-0``) and
        give every key of the session an idle TTL. Returns the entries removed."""
        ms = int(ttl_s * 1000)
        replies = await self.pipeline(
            lambda p: (
                p.xtrim(self.key(sid, "log"), minid=f"{min_seq}-0", approximate=False),
                *(p.pexpire(self.key(sid, part), ms) for part in PARTS),
            ),
            atomic=True,
        )
        return int(replies[0])


def _meta(sid: str, raw: dict[str, str], first: list[Any]) -> SessionMeta | None:
    if not raw or "epoch" not in raw:
        return None
    seq = int(raw.get("seq", 0))
    first_seq = int(first[0][0].split("-")[0]) if first else seq + 1
    return SessionMeta(
        session_id=sid,
        epoch=raw["epoch"],
        seq=seq,
        first_seq=first_seq,
        status=raw.get("status", "idle"),
        title=raw.get("title", ""),
        run_id=raw.get("run_id", ""),
        run_first_seq=int(raw.get("run_first_seq", 0)),
        updated_ms=int(raw.get("updated_ms", raw.get("created_ms", 0))),
        created_ms=int(raw.get("created_ms", 0)),
        cancel_requested=raw.get("cancel_requested", ""),
    )
