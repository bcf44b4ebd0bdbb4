"""Streams: the Redis key layout and every operation on it. No other module names a key.

Layout (``gw`` is the configurable prefix; ``{sid}`` is a Redis Cluster hash tag, so every
key of one session lives on one shard and its scripts stay single-slot):

==============================  ==========================================================
``gw:{sid}:log``                the session's event log, a Stream; entry ID ``<seq>-0``
``gw:{sid}:meta``               hash: epoch, seq, status, run_id, run_first_seq, title, …
``gw:{sid}:approvals``          hash: approval_id → ``pending`` | ``approve`` | ``deny``,
                                and ``<approval_id>:run`` → the run that asked
``gw:{sid}:conn:<cid>``         hash: a consumer's committed offset, commit mode, attach
                                token; expires when unused
``gw:{sid}:snap``               hash: the latest stored snapshot and its offset
``gw:{sid}:lease``              string: the holder of the active run's lease (expires);
                                ``queued`` from the run's start until a worker takes it
``gw:{sid}:runs``               hash: run_id → ``running`` | ``completed`` | ``failed`` |
                                ``cancelled`` (one terminal per run, nothing after it)
``gw:{sid}:producers``          hash: producer id → results of its last 32 batches, so a
                                retried batch is not appended twice (idempotent producer)
``gw:{sid}:live``               Pub/Sub channel: new entries (``E`` frames) and attach
                                take-overs (``K`` frames)
``gw:{_global}:sessions``       sorted set: session id scored by last activity (ms)
``gw:{_global}:activity``       capped Stream of session status changes (+ channel ``…:live``)
``gw:{_global}:running``        sorted set: sessions that may have an active run (a superset
                                read by the lease reapers), scored by ``…:running:n``
``gw:{_global}:commands``       Stream of browser commands, read by workers as a consumer group
``gw:{m:<mux>}``                hash: a browser's multiplexed stream: ``c:<sid>`` → its
                                connection id, ``a:<sid>`` → subscribed; expires when unused
``gw:{m:<mux>}:ctl``            Pub/Sub channel: subscription changes (``S``/``D`` frames)
                                and take-overs (``K``) for the mux's live stream
``gw:{u:<h>}:slots``            sorted set: a token subject's open streams (slot id → start
                                ms); ``<h>`` is a hash of the subject
``gw:{u:<h>}:ctl``              Pub/Sub channel: ``X`` frames ending an evicted slot's stream
``gw:{u:<h>}:rate:<minute>``    counter: streams and connections the subject opened that
                                minute (expires)
``gw:{ds:<path>}:m``            Durable Streams (``/ds``, gateway/durable.py): a stream's
                                metadata hash: generation, content type, tail (message
                                number ``n``, byte position ``b``), closed, TTL or
                                Expires-At, soft-deleted, fork base and ancestry
``gw:{ds:<path>}:l``            its messages, a Stream: entry ID ``<n>-0``, fields ``d``
                                (the bytes) and ``b`` (the byte position after it)
``gw:{ds:<path>}:p``            hash: producer id → ``epoch seq updated_ms``
``gw:{ds:<path>}:f``            set: paths of its forks (the reference count: while not
                                empty its keys do not expire and its log stays readable)
``gw:{ds:<path>}:live``         Pub/Sub channel: ``D`` frames (append, close, deletion)
==============================  ==========================================================

Wire format of a live ``E`` frame: ``E\t<epoch>`` then one line per event,
``<seq>\\t<ts_ms>\\t<type>\\t<run_id>\\t<data JSON>``. Types and ids are validated to hold no
tab or newline, and JSON text never holds a raw control character, so the split is exact.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from gateway import offsets
from gateway.cluster import with_retry

COMMAND_GROUP = "workers"
ACTIVITY_MAXLEN = 2000
COMMANDS_MAXLEN = 100_000
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


T = TypeVar("T")


async def _a(value: Awaitable[T] | T) -> T:
    """Await a redis-py result; its asyncio stubs type results as ``Awaitable[T] | T``."""
    if inspect.isawaitable(value):
        return await value
    return value


class _Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which also caches it) on NOSCRIPT.

    redis-py's ``register_script`` reloads with SCRIPT LOAD on the nodes it believes are
    masters; right after a failover that belief can be wrong and every call then fails with
    NOSCRIPT. EVAL is routed like EVALSHA, by the first key, so it always reaches the owner.
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self.redis = redis
        self.source = resources.files("gateway").joinpath("lua", name).read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await _a(self.redis.evalsha(self.sha, len(keys), *keys, *map(str, args)))
        except NoScriptError:
            return await _a(self.redis.eval(self.source, len(keys), *keys, *map(str, args)))


class PublishRejected(Exception):
    """The publish script refused a batch; ``code`` is machine readable.

    Codes: ``approval_not_found``, ``approval_already_resolved``, ``run_active``.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One log entry as read back from Redis (``data`` is JSON text, ``run_id`` may be '')."""

    seq: int
    ts: int
    type: str
    run_id: str
    data: str


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


@dataclass(frozen=True, slots=True)
class StoredConnection:
    """A consumer's stored state: committed ``offset``, ``commit`` mode, attach ``token``,
    and the token ``subject`` that created it ('' when created without authentication)."""

    connection_id: str
    offset: str
    commit: str
    token: str
    subject: str = ""


@dataclass(frozen=True, slots=True)
class StoredMux:
    """A mux: its creator's ``subject`` and ``{session_id: (connection_id, subscribed)}``."""

    subject: str
    sessions: dict[str, tuple[str, bool]]


def _conn(cid: str, raw: dict[str, str]) -> StoredConnection:
    return StoredConnection(
        cid, raw["offset"], raw.get("commit", "auto"), raw.get("token", ""), raw.get("sub", "")
    )


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


def parse_live_frame(payload: str) -> tuple[str, list[StoredEvent]]:
    """Parse an ``E`` frame into (epoch, events)."""
    head, _, body = payload.partition("\n")
    out = []
    for line in body.split("\n"):
        seq, ts, typ, run, data = line.split("\t", 4)
        out.append(StoredEvent(int(seq), int(ts), typ, run, data))
    return head[2:], out


class Streams:
    """All Redis operations of the gateway, publisher and workers.

    ``redis`` must be created with ``decode_responses=True`` (``gateway.redisconn.connect``).
    On a Redis Cluster client, live frames use sharded Pub/Sub (``SPUBLISH``), so each goes
    only to the shard that owns the session, and multi-command reads retry across a failover.
    """

    def __init__(self, redis: Redis, prefix: str = "gw", publish_retry_s: float = 10.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.publish_retry_s = publish_retry_s
        self.clustered = isinstance(redis, RedisCluster)
        self.publish_command = "SPUBLISH" if self.clustered else "PUBLISH"
        self._retry_budget = float(getattr(redis, "retry_budget_s", 0.0))
        self._publish = _Script(redis, "publish.lua")
        self._ensure = _Script(redis, "ensure.lua")
        self._commit = _Script(redis, "commit.lua")
        self._activity = _Script(redis, "activity.lua")
        self._lease = _Script(redis, "lease.lua")
        self._slots = _Script(redis, "slots.lua")
        self._running = _Script(redis, "running.lua")
        self._requeue = _Script(redis, "requeue.lua")
        self._snapshot = _Script(redis, "snapshot.lua")

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a publish-path command through a Redis restart or failover.

        A cluster client already retries every command for its own budget
        (``GatewayCluster``); retrying again here would only stack the two budgets.
        """
        if self.clustered:
            return await op()
        return await with_retry(self.publish_retry_s, op)

    async def _pipeline(self, build: Callable[[Pipeline], object], *, atomic: bool) -> list[Any]:
        """Queue commands with ``build`` and run them in one round trip per node.

        ``atomic`` wraps them in MULTI/EXEC (their keys must then share one hash slot).
        A failover-type error re-runs the whole pipeline on a cluster (see with_retry).
        """

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=atomic) as pipe:
                build(pipe)
                return await pipe.execute()

        if self._retry_budget:
            return await with_retry(self._retry_budget, run)
        return await run()

    # --- key names -------------------------------------------------------------------------
    def _k(self, sid: str, part: str) -> str:
        return f"{self.prefix}:{{{sid}}}:{part}"

    def live_channel(self, sid: str) -> str:
        """The Pub/Sub channel carrying a session's live frames."""
        return self._k(sid, "live")

    @property
    def activity_channel(self) -> str:
        """The Pub/Sub channel of the activity feed."""
        return f"{self.prefix}:{{_global}}:activity:live"

    @property
    def _sessions_key(self) -> str:
        return f"{self.prefix}:{{_global}}:sessions"

    @property
    def _activity_key(self) -> str:
        return f"{self.prefix}:{{_global}}:activity"

    @property
    def _running_key(self) -> str:
        return f"{self.prefix}:{{_global}}:running"

    @property
    def _commands_key(self) -> str:
        return f"{self.prefix}:{{_global}}:commands"

    # --- publishing --------------------------------------------------------------------------
    async def publish(
        self,
        sid: str,
        events: Sequence[tuple[str, str, str, str, str]],
        *,
        maxlen: int,
        guard: str = "0",
        producer: tuple[str, int] | None = None,
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
        Connection errors are retried for up to ``publish_retry_s`` seconds on one node (a
        Redis restart), and for the cluster client's own budget on a cluster (a failover).

        Raises:
            PublishRejected: ``approval_not_found``, ``approval_already_resolved``,
                ``run_active`` (a run is active), ``run_exists`` (that run id already
                started), ``run_ended`` (an event of a run that has its terminal),
                ``lease_lost`` (a fenced batch whose token was superseded), ``guard_failed``.
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
        ]
        for ev in events:
            args.extend(ev)
        keys = [
            self._k(sid, "meta"),
            self._k(sid, "log"),
            self._k(sid, "approvals"),
            self._k(sid, "lease"),
            self._k(sid, "producers"),
            self._k(sid, "runs"),
        ]
        # Retried through a Redis restart or failover with the same (producer, sequence), so
        # a batch whose reply was lost is answered from the producers hash, not appended again.
        res = cast(list[Any], await self._retrying(lambda: self._publish(keys=keys, args=args)))
        if res[0] != "ok":
            raise PublishRejected(str(res[0]))
        return PublishResult(str(res[1]), int(res[2]), int(res[3]), int(res[4]))

    async def record_activity(self, sid: str, change: dict[str, Any]) -> None:
        """Index the session and append ``change`` to the activity feed (low volume)."""
        payload = json.dumps({"session_id": sid, **change}, separators=(",", ":"))
        keys = [self._sessions_key, self._activity_key]
        args: list[str | int] = [
            sid,
            payload,
            self.activity_channel,
            ACTIVITY_MAXLEN,
            self.publish_command,
        ]
        # Part of a publish: ride out the same outages (a repeat only repeats a feed entry).
        await self._retrying(lambda: self._activity(keys=keys, args=args))

    # --- run leases ------------------------------------------------------------------------
    async def lease(
        self, op: str, sid: str, run_id: str, holder: str, ttl_s: float, token: int = 0
    ) -> int:
        """``acquire``/``renew``/``release``/``handback`` the lease of ``run_id``.

        ``acquire`` returns the new fencing token (0: refused); ``handback`` the token that
        replaces ``token``; the others 1 on success, 0 when the lease is lost. See
        ``lua/lease.lua``.
        """
        res = await self._lease(
            keys=[self._k(sid, "meta"), self._k(sid, "lease")],
            args=[op, run_id, holder, max(1, int(ttl_s * 1000)), token],
        )
        return int(res or 0)

    async def mark_running(self, sid: str) -> None:
        """Add ``sid`` to the reapers' index; called before a ``run.started`` is published."""
        await self._retrying(
            lambda: self._running(
                keys=[self._running_key, f"{self._running_key}:n"], args=["mark", sid, 0]
            )
        )

    async def running_sessions(self, limit: int = 10_000) -> list[tuple[str, int]]:
        """Sessions that may have an active run, as (session id, index score)."""
        pairs = await self.redis.zrange(self._running_key, 0, limit - 1, withscores=True)
        return [(str(sid), int(score)) for sid, score in pairs]

    async def forget_running(self, sid: str, score: int) -> bool:
        """Drop ``sid`` from the index unless it was marked again since it scored ``score``."""
        res = await self._running(
            keys=[self._running_key, f"{self._running_key}:n"], args=["forget", sid, score]
        )
        return bool(res)

    async def lease_holder(self, sid: str) -> str | None:
        """The current holder of the session's run lease, or None when none is held."""
        return await _a(self.redis.get(self._k(sid, "lease")))

    async def run_holder(self, sid: str) -> str:
        """Who took the active run's lease (a worker, or ``queued``); '' when nobody."""
        return await _a(self.redis.hget(self._k(sid, "meta"), "run_holder")) or ""

    async def run_state(self, sid: str, run_id: str) -> str | None:
        """``running``, ``completed``, ``failed``, ``cancelled``, or None for an unknown run."""
        return await _a(self.redis.hget(self._k(sid, "runs"), run_id))

    async def take_requeue(self, sid: str, grace_s: float) -> dict[str, str] | None:
        """The command of a run still ``queued`` after ``grace_s`` seconds, once per queued
        period (see ``lua/requeue.lua``); None when nothing needs sending again."""
        res = await self._requeue(keys=[self._k(sid, "meta")], args=[int(grace_s * 1000)])
        if not res:
            return None
        command = json.loads(res)
        return {str(k): str(v) for k, v in command.items()} if isinstance(command, dict) else None

    async def ensure_session(self, sid: str) -> tuple[str, int, bool]:
        """Create the session's metadata if absent. Returns (epoch, last seq, created)."""
        keys = [self._k(sid, "meta"), self._k(sid, "log"), self._k(sid, "approvals")]
        res = cast(list[Any], await self._ensure(keys=keys, args=[offsets.new_epoch()]))
        return str(res[0]), int(res[1]), bool(int(res[2]))

    # --- reading -----------------------------------------------------------------------------
    async def meta(self, sid: str) -> SessionMeta | None:
        """The session's metadata and its first retained sequence, or None if unknown."""
        raw, first = await self._pipeline(
            lambda p: (
                p.hgetall(self._k(sid, "meta")),
                p.xrange(self._k(sid, "log"), "-", "+", count=1),
            ),
            atomic=False,
        )
        return self._meta(sid, raw, first)

    @staticmethod
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

    async def read(self, sid: str, after_seq: int, count: int) -> list[StoredEvent]:
        """Up to ``count`` events with ``seq > after_seq``, in order (one XRANGE)."""
        entries = await self.redis.xrange(self._k(sid, "log"), f"{after_seq + 1}-0", "+", count)
        return [
            StoredEvent(int(eid.split("-", 1)[0]), int(f["ts"]), f["t"], f["r"], f["d"])
            for eid, f in entries
        ]

    async def head_seqs(self, sid: str) -> tuple[str | None, int]:
        """(epoch, last seq) from the metadata alone; (None, 0) for an unknown session."""
        epoch, seq = await _a(self.redis.hmget(self._k(sid, "meta"), ["epoch", "seq"]))
        return epoch, int(seq or 0)

    async def list_sessions(
        self,
        limit: int = 200,
        visible: Callable[[str], bool] | None = None,
        *,
        page: int = 500,
        scan_max: int = 50_000,
    ) -> list[SessionMeta]:
        """The ``limit`` most recently active sessions ``visible`` accepts, newest first.

        The index is paged newest first and filtered by id before any metadata is read, so a
        token that sees a few old sessions among many others still gets them; at most
        ``scan_max`` index entries are examined.
        """
        ids: list[str] = []
        start = 0
        while len(ids) < limit and start < scan_max:
            chunk = await self.redis.zrevrange(self._sessions_key, start, start + page - 1)
            ids.extend(s for s in chunk if visible is None or visible(s))
            if len(chunk) < page:
                break
            start += page
        ids = ids[:limit]
        # (Sessions that expired stay in the index until listed: their metadata is gone.)

        def build(pipe: Pipeline) -> None:
            for sid in ids:
                pipe.hgetall(self._k(sid, "meta"))
                pipe.xrange(self._k(sid, "log"), "-", "+", count=1)

        replies = await self._pipeline(build, atomic=False)
        metas = (self._meta(sid, replies[2 * i], replies[2 * i + 1]) for i, sid in enumerate(ids))
        return [m for m in metas if m is not None]

    async def read_activity(self, after_id: str, count: int = 500) -> list[tuple[str, str]]:
        """Activity entries after stream id ``after_id`` as (id, payload JSON)."""
        entries = await self.redis.xrange(self._activity_key, f"({after_id}", "+", count)
        return [(eid, f["p"]) for eid, f in entries]

    async def last_activity_id(self) -> str:
        """The id of the newest activity entry, or ``0-0``."""
        entries = await self.redis.xrevrange(self._activity_key, "+", "-", count=1)
        return str(entries[0][0]) if entries else "0-0"

    # --- approvals and cancel flags -----------------------------------------------------------
    async def approval_state(self, sid: str, approval_id: str) -> str | None:
        """``pending``, ``approve``, ``deny`` or None when unknown."""
        return await _a(self.redis.hget(self._k(sid, "approvals"), approval_id))

    async def approval_run(self, sid: str, approval_id: str) -> str | None:
        """The run that requested ``approval_id``, or None when unknown."""
        return await _a(self.redis.hget(self._k(sid, "approvals"), f"{approval_id}:run"))

    async def request_cancel(self, sid: str, run_id: str) -> None:
        """Flag ``run_id`` for cancellation; the worker running it polls the flag."""
        await _a(self.redis.hset(self._k(sid, "meta"), "cancel_requested", run_id))

    async def cancel_requested(self, sid: str, run_id: str) -> bool:
        """Whether a cancel was requested for ``run_id``."""
        return await _a(self.redis.hget(self._k(sid, "meta"), "cancel_requested")) == run_id

    # --- consumers (connections) -------------------------------------------------------------
    async def create_connection(
        self, sid: str, cid: str, offset: str, commit: str, ttl_s: float, subject: str = ""
    ) -> None:
        """Store a new consumer with its starting offset, TTL and owning token subject."""
        key = self._k(sid, f"conn:{cid}")
        fields = {"offset": offset, "commit": commit, "token": "", "sub": subject}
        await self._pipeline(
            lambda p: (
                p.hset(key, mapping=fields),
                p.pexpire(key, int(ttl_s * 1000)),
            ),
            atomic=True,
        )

    async def get_connection(self, sid: str, cid: str) -> StoredConnection | None:
        """The consumer's stored state, or None once expired or deleted."""
        raw = await _a(self.redis.hgetall(self._k(sid, f"conn:{cid}")))
        return _conn(cid, raw) if raw else None

    async def commit(
        self,
        sid: str,
        cid: str,
        offset: str,
        ttl_s: float,
        *,
        forward_only: bool,
        token: str = "",
        owner: str = "*",
    ) -> str | None:
        """Store ``offset`` for the consumer and refresh its TTL.

        ``forward_only`` ignores an offset older than the stored one (late acks);
        a non-empty ``token`` records the current attachment; ``owner`` (a token subject, or
        ``*`` for no check) must have created the consumer. Returns the stored offset, or
        None if the consumer no longer exists or belongs to another subject (it is never
        resurrected).
        """
        res = await self._commit(
            keys=[self._k(sid, f"conn:{cid}")],
            args=[offset, int(ttl_s * 1000), "forward" if forward_only else "set", token, owner],
        )
        return cast(str | None, res) if res else None

    async def connection_token(self, sid: str, cid: str) -> str | None:
        """The token of the consumer's latest attachment (None once it is gone)."""
        return await _a(self.redis.hget(self._k(sid, f"conn:{cid}"), "token"))

    async def touch_connection(self, sid: str, cid: str, ttl_s: float) -> None:
        """Refresh the consumer's TTL while its stream is attached."""
        await _a(self.redis.pexpire(self._k(sid, f"conn:{cid}"), int(ttl_s * 1000)))

    async def delete_connection(self, sid: str, cid: str) -> bool:
        """Delete the consumer; True if it existed."""
        return bool(await self.redis.delete(self._k(sid, f"conn:{cid}")))

    async def announce_attach(self, sid: str, cid: str, token: str) -> None:
        """Tell every replica's streams of ``cid`` but the one holding ``token`` to end."""
        await self.redis.execute_command(  # type: ignore[no-untyped-call]
            self.publish_command, self.live_channel(sid), f"K\t{cid}\t{token}"
        )

    # --- multiplexed browser streams ----------------------------------------------------------
    def _mux_key(self, mux_id: str) -> str:
        return f"{self.prefix}:{{m:{mux_id}}}"

    def mux_channel(self, mux_id: str) -> str:
        """The control channel of a mux's live stream."""
        return f"{self._mux_key(mux_id)}:ctl"

    async def create_mux(self, mux_id: str, ttl_s: float, subject: str = "") -> None:
        """Store a new, empty mux owned by the token ``subject``."""
        key = self._mux_key(mux_id)
        await self._pipeline(
            lambda p: (
                p.hset(key, mapping={"created": "1", "sub": subject}),
                p.pexpire(key, int(ttl_s * 1000)),
            ),
            atomic=True,
        )

    async def get_mux(self, mux_id: str, ttl_s: float) -> StoredMux | None:
        """The mux's owner and sessions, with a TTL refresh; None if unknown."""
        key = self._mux_key(mux_id)
        raw, _ = await self._pipeline(
            lambda p: (p.hgetall(key), p.pexpire(key, int(ttl_s * 1000))), atomic=False
        )
        if not raw:
            return None
        sessions = {
            f[2:]: (cid, raw.get(f"a:{f[2:]}") == "1")
            for f, cid in raw.items()
            if f.startswith("c:")
        }
        return StoredMux(raw.get("sub", ""), sessions)

    async def set_mux_session(
        self, mux_id: str, sid: str, cid: str, subscribed: bool, ttl_s: float
    ) -> None:
        """Record the session's connection id and whether the mux streams it."""
        key = self._mux_key(mux_id)
        fields = {f"c:{sid}": cid, f"a:{sid}": "1" if subscribed else "0"}
        await self._pipeline(
            lambda p: (p.hset(key, mapping=fields), p.pexpire(key, int(ttl_s * 1000))),
            atomic=True,
        )

    async def set_mux_token(self, mux_id: str, token: str) -> None:
        """Record the mux's latest attachment (checked by streams that start after it)."""
        await _a(self.redis.hset(self._mux_key(mux_id), "token", token))

    async def mux_token(self, mux_id: str) -> str | None:
        """The token of the mux's latest attachment."""
        return await _a(self.redis.hget(self._mux_key(mux_id), "token"))

    async def notify_mux(self, mux_id: str, frame: str) -> None:
        """Send a control frame (``S\t<sid>``, ``D\t<sid>``, ``K\t<mux>\t<token>``)."""
        await self.redis.execute_command(  # type: ignore[no-untyped-call]
            self.publish_command, self.mux_channel(mux_id), frame
        )

    async def get_connections(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[StoredConnection | None]:
        """Several consumers' stored state in one round trip: (session_id, connection_id)."""

        def build(pipe: Pipeline) -> None:
            for sid, cid in pairs:
                pipe.hgetall(self._k(sid, f"conn:{cid}"))

        replies = await self._pipeline(build, atomic=False)
        return [
            _conn(cid, raw) if raw else None for (_, cid), raw in zip(pairs, replies, strict=True)
        ]

    # --- per-subject limits -------------------------------------------------------------------
    def _subject(self, subject: str) -> str:
        digest = hashlib.sha1(subject.encode()).hexdigest()[:16]  # any subject is a safe tag
        return f"{self.prefix}:{{u:{digest}}}"

    def subject_channel(self, subject: str) -> str:
        """The channel that ends a subject's evicted streams (``X\t<slot>`` frames)."""
        return f"{self._subject(subject)}:ctl"

    async def open_slot(self, subject: str, slot: str, limit: int, max_age_s: float) -> int:
        """Register a stream of ``subject``; evicts its oldest beyond ``limit``. Returns the
        number evicted (each is told on :meth:`subject_channel`)."""
        res = await self._slots(
            keys=[f"{self._subject(subject)}:slots"],
            args=[
                "open",
                slot,
                limit,
                int(max_age_s * 1000),
                self.subject_channel(subject),
                self.publish_command,
            ],
        )
        return int(res)

    async def close_slot(self, subject: str, slot: str) -> None:
        """Forget an ended stream of ``subject``."""
        await self._slots(
            keys=[f"{self._subject(subject)}:slots"], args=["close", slot, 0, 0, "", ""]
        )

    async def hit_rate(self, subject: str, window_s: int = 60) -> tuple[int, int]:
        """Count one stream or connection opened by ``subject`` in the current fixed window.

        Returns (count in this window, seconds until the window ends).
        """
        now = int(time.time())
        window = now // window_s
        key = f"{self._subject(subject)}:rate:{window}"
        count, _ = await self._pipeline(
            lambda p: (p.incr(key), p.expire(key, window_s + 1)), atomic=True
        )
        return int(count), (window + 1) * window_s - now

    # --- snapshots ---------------------------------------------------------------------------
    async def load_snapshot(self, sid: str) -> tuple[str, str] | None:
        """The stored snapshot as (offset, state JSON), or None."""
        raw = await _a(self.redis.hgetall(self._k(sid, "snap")))
        if not raw:
            return None
        return raw["offset"], raw["state"]

    async def compact(self, sid: str, min_seq: int, ttl_s: float) -> int:
        """Drop log entries older than ``min_seq`` (XTRIM MINID; IDs are ``<seq>-0``) and
        give every key of the session an idle TTL. Returns the entries removed."""
        ms = int(ttl_s * 1000)
        parts = ("meta", "log", "approvals", "snap", "producers", "runs")
        replies = await self._pipeline(
            lambda p: (
                p.xtrim(self._k(sid, "log"), minid=f"{min_seq}-0", approximate=False),
                *(p.pexpire(self._k(sid, part), ms) for part in parts),
            ),
            atomic=True,
        )
        return int(replies[0])

    async def save_snapshot(self, sid: str, offset: str, state_json: str) -> bool:
        """Store the snapshot folded up to ``offset`` unless the stored one is as new or
        newer, or the log's epoch changed (``lua/snapshot.lua``). True when stored."""
        res = await self._snapshot(
            keys=[self._k(sid, "snap"), self._k(sid, "meta")], args=[offset, state_json]
        )
        return bool(res)

    # --- commands (browser → worker) ------------------------------------------------------
    async def enqueue_command(self, command: dict[str, str]) -> str:
        """Append a command for the workers' consumer group; returns its stream id."""
        return cast(
            str,
            await self.redis.xadd(
                self._commands_key,
                cast(Any, command),
                maxlen=COMMANDS_MAXLEN,
                approximate=True,
            ),
        )

    async def ensure_command_group(self) -> None:
        """Create the workers' consumer group (idempotent)."""
        try:
            await self.redis.xgroup_create(self._commands_key, COMMAND_GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_commands(
        self, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        """New commands for ``consumer`` (XREADGROUP ``>``); ack each with :meth:`ack_command`."""
        res = await self.redis.xreadgroup(
            COMMAND_GROUP, consumer, {self._commands_key: ">"}, count=count, block=block_ms
        )
        return [(eid, fields) for _, entries in res or [] for eid, fields in entries]

    async def claim_stale_commands(
        self, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[tuple[str, dict[str, str]]]:
        """Take over commands a crashed worker read but never acked (XAUTOCLAIM)."""
        res = await self.redis.xautoclaim(
            self._commands_key, COMMAND_GROUP, consumer, min_idle_ms, "0-0", count=count
        )
        return [(eid, fields) for eid, fields in res[1] if fields]

    async def ack_command(self, command_id: str) -> None:
        """Acknowledge a processed command (XACK)."""
        await self.redis.xack(self._commands_key, COMMAND_GROUP, command_id)


# --- Durable Streams ---------------------------------------------------------------------------
# The Redis side of the Durable Streams endpoint (gateway/durable.py): one hash tag per stream
# path, binary-safe scripts (replies are read as bytes: message data is arbitrary bytes).

_DS_RAW: dict[str, Any] = {"NEVER_DECODE": []}  # redis-py option: do not decode the reply
DS_ZERO_OFFSET = "0000000000000000_0000000000000000"


def ds_offset(n: int, b: int) -> str:
    """A Durable Streams offset: message number and byte position, 16 digits each."""
    return f"{n:016d}_{b:016d}"


def _ds_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _RawScript(_Script):
    """A :class:`_Script` whose reply is not decoded (it carries message bytes)."""

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        try:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self.sha, len(keys), *keys, *args, **_DS_RAW
            )
        except NoScriptError:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args, **_DS_RAW
            )


@dataclass(frozen=True, slots=True)
class DsMessage:
    """One stored message: number ``n``, byte position ``b`` after it, and its bytes."""

    n: int
    b: int
    data: bytes

    @property
    def offset(self) -> str:
        """The offset just after this message."""
        return ds_offset(self.n, self.b)


@dataclass(frozen=True, slots=True)
class DsMeta:
    """A stream's metadata (see the ``gw:{ds:<path>}:m`` fields in the module docstring)."""

    gen: str
    content_type: str
    normalized_type: str
    n: int
    b: int
    closed: bool
    ttl: int | None
    expires_at: str | None
    fork_n: int
    ancestry: tuple[tuple[str, int, int], ...]

    @property
    def tail(self) -> str:
        """The offset after the last message (where a reader is up to date)."""
        return ds_offset(self.n, self.b)

    @classmethod
    def parse(cls, flat: Sequence[Any]) -> DsMeta:
        """From a flat HGETALL reply (bytes or text)."""
        raw = {_ds_str(flat[i]): _ds_str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        anc = json.loads(raw["anc"]) if raw.get("anc") else []
        return cls(
            gen=raw["gen"],
            content_type=raw.get("ct", ""),
            normalized_type=raw.get("nct", ""),
            n=int(raw.get("n", 0)),
            b=int(raw.get("b", 0)),
            closed=raw.get("cl") == "1",
            ttl=int(raw["ttl"]) if raw.get("ttl") else None,
            expires_at=raw.get("ea") or None,
            fork_n=int(raw.get("fo_n", 0)),
            ancestry=tuple((str(p), int(lo), int(hi)) for p, lo, hi in anc),
        )


def _ds_messages(flat: Sequence[Any]) -> list[DsMessage]:
    return [
        DsMessage(int(flat[i]), int(flat[i + 1]), bytes(flat[i + 2]))
        for i in range(0, len(flat) - 2, 3)
    ]


@dataclass(frozen=True, slots=True)
class DsAppendResult:
    """What the append script answered: ``status`` and the tail after it (see ds_append.lua)."""

    status: str
    n: int
    b: int
    closed: bool
    x: int
    y: int

    @property
    def tail(self) -> str:
        """The stream's tail offset after this request."""
        return ds_offset(self.n, self.b)


class DurableStreams:
    """Every Redis operation of the Durable Streams endpoint; keys per stream path ``p``:

    ``gw:{ds:p}:m`` metadata hash, ``gw:{ds:p}:l`` message log (a Stream, entry ``<n>-0``
    with fields ``d`` data and ``b`` byte position), ``gw:{ds:p}:p`` producer states,
    ``gw:{ds:p}:f`` the set of its forks (reference count), channel ``gw:{ds:p}:live``.
    ``{``, ``}`` and ``%`` in a path are percent-encoded inside the hash tag.
    """

    def __init__(self, streams: Streams) -> None:
        self.redis = streams.redis
        self.prefix = streams.prefix
        self.publish_command = streams.publish_command
        self._create = _RawScript(self.redis, "ds_create.lua")
        self._append = _RawScript(self.redis, "ds_append.lua")
        self._read = _RawScript(self.redis, "ds_read.lua")
        self._range = _RawScript(self.redis, "ds_range.lua")
        self._ref = _RawScript(self.redis, "ds_ref.lua")
        self._unref = _RawScript(self.redis, "ds_unref.lua")
        self._delete = _RawScript(self.redis, "ds_delete.lua")

    def _tag(self, path: str) -> str:
        enc = path.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        return f"{self.prefix}:{{ds:{enc}}}"

    def _keys(self, path: str) -> list[str]:
        tag = self._tag(path)
        return [f"{tag}:m", f"{tag}:l", f"{tag}:p", f"{tag}:f"]

    def channel(self, path: str) -> str:
        """The Pub/Sub channel announcing the stream's appends, closes and deletion."""
        return f"{self._tag(path)}:live"

    async def create(
        self, path: str, args: Sequence[str | bytes]
    ) -> tuple[str, int, int, bool, str]:
        """Run ds_create.lua with ``args`` (ARGV 1-19): (status, n, b, closed, content type)."""
        res = await self._create(self._keys(path), args)
        status, closed, ct = _ds_str(res[0]), _ds_str(res[3]) == "1", _ds_str(res[4])
        return status, int(res[1]), int(res[2]), closed, ct

    async def append(self, path: str, args: Sequence[str | bytes]) -> DsAppendResult:
        """Run ds_append.lua with ``args`` (ARGV 1-9 and 12-13; the channel is added)."""
        full = [*args[:9], self.channel(path), self.publish_command, *args[9:]]
        res = await self._append(self._keys(path), full)
        return DsAppendResult(
            _ds_str(res[0]),
            int(res[1]),
            int(res[2]),
            _ds_str(res[3]) == "1",
            int(res[4]),
            int(res[5]),
        )

    async def read(
        self, path: str, mode: str, after: int = 0, count: int = 0, max_bytes: int = 0
    ) -> tuple[str, DsMeta | None, list[DsMessage]]:
        """``head`` / ``tail`` / ``read`` (see ds_read.lua): (status, meta, own messages)."""
        res = await self._read(self._keys(path), [mode, after, count, max_bytes])
        status = _ds_str(res[0])
        if status != "ok":
            return status, None, []
        return status, DsMeta.parse(res[1]), _ds_messages(res[2])

    async def range(
        self, path: str, after: int, upto: int, count: int, max_bytes: int
    ) -> list[DsMessage]:
        """Messages ``after < n <= upto`` of one log (an ancestor's, for a fork's reads)."""
        res = await self._range([self._keys(path)[1]], [after, upto, count, max_bytes])
        return _ds_messages(res)

    async def ref(
        self, source: str, child: str, normalized_type: str, fork_n: int | None, fork_b: int
    ) -> tuple[str, DsMeta | None, int, int]:
        """Take ``child``'s reference on ``source``: (status, source meta, fork n, fork b)."""
        res = await self._ref(
            self._keys(source),
            [child, normalized_type, "" if fork_n is None else fork_n, fork_b],
        )
        status = _ds_str(res[0])
        if status != "ok":
            return status, None, 0, 0
        return status, DsMeta.parse(res[1]), int(res[2]), int(res[3])

    async def release(self, source: str, child: str) -> None:
        """Drop ``child``'s reference on ``source``, deleting soft-deleted sources up the
        chain whose last fork went (cascade)."""
        while source:
            res = await self._unref(
                self._keys(source), [child, self.channel(source), self.publish_command]
            )
            if _ds_str(res[0]) != "deleted":
                return
            child, source = source, _ds_str(res[1])

    async def delete(self, path: str) -> str:
        """Delete the stream (ds_delete.lua) and release its source: the status."""
        res = await self._delete(self._keys(path), [self.channel(path), self.publish_command])
        status, source = _ds_str(res[0]), _ds_str(res[1])
        if source:
            await self.release(source, path)
        return status

    async def forks(self, path: str) -> list[str]:
        """The paths holding a reference on this stream."""
        members = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "SMEMBERS", self._keys(path)[3], **_DS_RAW
        )
        return [_ds_str(m) for m in members]

    async def exists(self, path: str) -> bool:
        """Whether the stream's metadata exists (expired keys count as gone)."""
        return bool(await self.redis.exists(self._keys(path)[0]))

    async def collect(self, path: str) -> None:
        """Drop references held by forks that no longer exist (they expired: key expiry
        tells nobody), so a soft-deleted or expired source can finally go."""
        for child in await self.forks(path):
            if not await self.exists(child):
                await self.release(path, child)
