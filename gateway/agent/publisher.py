"""Publisher: the asyncio API agent workers use to append events to a session's log.

Secrets in event data are redacted before anything is stored (``gateway.redaction``). Each
call is one Redis round trip: a server-side script assigns the next sequence numbers,
XADDs with explicit IDs, trims to the retention limit, updates the session's metadata and
notifies live readers. Status changes (run start/end, title) are also recorded in the global
activity feed with a second, rare round trip, kept apart so a session's script touches only
keys of its own Cluster slot.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.agent.redaction import Redactor
from gateway.core import events
from gateway.settings import Settings
from gateway.store import Store, snapshots
from gateway.store.sessions import PublishResult

log = logging.getLogger(__name__)

EventSpec = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EventIn:
    """An event to publish: ``type``, ``data`` (JSON object) and optional ``run_id``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


class Publisher:
    """Publishes events for agent workers.

    Args:
        store: the Redis store.
        retention_maxlen: events kept per session (approximate trim, in entries).
        redactor: masks secrets in every event's data before it is stored (default: the
            built-in patterns of :mod:`gateway.redaction`).
        max_event_bytes, max_depth: limits on one event's encoded data (bytes) and its
            nesting; larger or deeper events are refused before anything is stored.

    Every method raises :class:`gateway.core.events.InvalidEvent` for malformed input, before
    anything is stored, and :class:`gateway.store.sessions.PublishRejected` when the log refuses
    (an approval already answered, a run already active).
    """

    def __init__(
        self,
        store: Store,
        retention_maxlen: int = 20_000,
        redactor: Redactor | None = None,
        *,
        max_event_bytes: int = events.MAX_EVENT_BYTES,
        max_depth: int = events.MAX_DEPTH,
        keep_after_run: int = 0,
        session_ttl_s: float = 30 * 86_400,
        pickup_timeout_s: float = 60.0,
    ) -> None:
        self.store = store
        self.pickup_ms = int(pickup_timeout_s * 1000)
        self.keep_after_run = keep_after_run
        self.session_ttl_s = session_ttl_s
        self.retention_maxlen = retention_maxlen
        self.redactor = redactor or Redactor()
        self.limits = {"max_bytes": max_event_bytes, "max_depth": max_depth}
        self._indexed: set[str] = set()
        # Idempotent producer: each batch carries (producer id, sequence), so the Redis
        # client's retry of a publish whose reply was lost cannot append it twice.
        self.producer_id = uuid.uuid4().hex
        self._batch_seq = itertools.count(1)
        # Sequences sent and not yet answered; the smallest is the low-water mark the script
        # keeps results from, so a call retried late (one caller waiting out a Redis restart
        # while the others go on) still finds its first result. A heap with lazy deletion.
        self._unanswered: set[int] = set()
        self._low_heap: list[int] = []

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Publisher:
        """A publisher with the retention, redaction patterns and limits of ``settings``."""
        return cls(
            store,
            settings.retention_maxlen,
            Redactor(settings.redact_patterns),
            max_event_bytes=settings.max_event_bytes,
            max_depth=settings.max_event_depth,
            keep_after_run=settings.retention_after_run,
            session_ttl_s=settings.session_ttl,
            pickup_timeout_s=settings.run_pickup_timeout,
        )

    async def publish(
        self,
        session_id: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        """Append one event; returns its offset."""
        return (await self.publish_batch(session_id, [EventIn(type, data or {}, run_id)]))[0]

    async def publish_batch(
        self,
        session_id: str,
        batch: Sequence[EventIn],
        *,
        guard: str | None = None,
        fence: int | None = None,
        command: dict[str, str] | None = None,
    ) -> list[str]:
        """Append ``batch`` atomically and in order; returns the offsets, one per event.

        A ``run.started`` is refused while another run is active
        (``PublishRejected("run_active")``), takes the run's ``queued`` lease for the pickup
        timeout and keeps ``command`` (the worker command of the run) in the same script.
        ``fence`` is a worker's fencing token; ``guard`` passes a raw guard to the script
        (see :meth:`gateway.store.sessions.SessionLog.publish`).

        Raises:
            gateway.core.events.InvalidEvent: malformed input, before anything is stored.
            gateway.store.sessions.PublishRejected: the log refused the batch (its ``code``).
        """
        if not events.valid_id(session_id):
            raise events.InvalidEvent("invalid_id", f"session_id {session_id!r} is not valid")
        if not batch:
            return []
        encoded = [
            events.encode(
                e.type,
                self.redactor.value(e.data) if e.data else e.data,
                e.run_id,
                **self.limits,
            )
            for e in batch
        ]
        if any(e.type == "run.started" for e in batch):
            # Before the start: the reapers' index must never miss a running session.
            await self.store.runs.mark(session_id)
        seq = next(self._batch_seq)
        self._unanswered.add(seq)
        heapq.heappush(self._low_heap, seq)
        try:
            result = await self.store.sessions.publish(
                session_id,
                encoded,  # type: ignore[arg-type]
                maxlen=self.retention_maxlen,
                guard=guard or "0",
                producer=(self.producer_id, seq),
                producer_low=self._low_water(),
                fence=fence,
                pickup_ms=self.pickup_ms,
                command=json.dumps(command, separators=(",", ":")) if command else "",
            )
        finally:
            self._unanswered.discard(seq)
        await self._record_activity(session_id, batch, result)
        if self.keep_after_run and any(e.type in events.TERMINAL for e in batch):
            await self._compact(session_id)
        return result.offsets()

    def _low_water(self) -> int:
        """The oldest batch sequence sent and not yet answered (this call's at least)."""
        heap = self._low_heap
        while heap[0] not in self._unanswered:
            heapq.heappop(heap)
        return heap[0]

    async def _compact(self, session_id: str) -> None:
        # Housekeeping after the run is stored: a failure here must not fail the publish.
        try:
            await snapshots.compact(
                self.store.sessions, session_id, self.keep_after_run, self.session_ttl_s
            )
        except Exception:
            log.exception("compaction of %s failed; the log keeps its entries", session_id)

    async def _record_activity(
        self, session_id: str, batch: Sequence[EventIn], result: PublishResult
    ) -> None:
        change: dict[str, Any] = {}
        for e in batch:
            if e.type == "run.started":
                change.update(status="running", run_id=e.run_id)
            elif e.type in events.TERMINAL:
                change.update(status="idle", run_id=e.run_id, run_status=e.type[4:])
            elif e.type == "session.title":
                change["title"] = e.data.get("title")
        if not change and session_id in self._indexed:
            return
        self._indexed.add(session_id)
        change["ts"] = result.ts
        change["last_offset"] = result.offsets()[-1]
        await self.store.activity.record(session_id, change)

    async def start_run(
        self,
        session_id: str,
        input: str,
        *,
        run_id: str | None = None,
        command: dict[str, str] | None = None,
    ) -> Run:
        """Publish ``run.started`` and return a :class:`Run` handle for the rest of the turn.

        The start, the run's ``queued`` lease and ``command`` are written by one script.
        A run driven by this handle (no worker) stays alive while it publishes; one silent
        for the pickup timeout is ended as interrupted by a reaper.

        Raises:
            gateway.store.sessions.PublishRejected: ``run_active`` or ``run_exists``.
        """
        run = Run(self, session_id, run_id or new_run_id())
        await self.publish_batch(
            session_id, [EventIn("run.started", {"input": input}, run.run_id)], command=command
        )
        return run


def new_run_id() -> str:
    """A fresh run id (``r-`` + 12 hex digits)."""
    return "r-" + uuid.uuid4().hex[:12]


@dataclass
class Run:
    """Helpers for one run: each method publishes one event of ``run_id``, returns its offset.

    ``fence`` is the fencing token of the worker's lease (None: an unfenced publisher);
    with it every event is refused once the lease is lost (``PublishRejected``
    ``lease_lost`` or ``run_ended``), and the worker must stop at the first refusal.
    """

    publisher: Publisher
    session_id: str
    run_id: str
    fence: int | None = None

    async def _emit(self, type: str, data: dict[str, Any]) -> str:
        offs = await self.publisher.publish_batch(
            self.session_id, [EventIn(type, data, self.run_id)], fence=self.fence
        )
        return offs[0]

    async def text_delta(self, text: str) -> str:
        """``message.delta``: a piece of the answer."""
        return await self._emit("message.delta", {"text": text})

    async def reasoning_delta(self, text: str) -> str:
        """``reasoning.delta``: a piece of the model's visible reasoning."""
        return await self._emit("reasoning.delta", {"text": text})

    async def tool_started(self, tool_call_id: str, name: str, args: dict[str, Any]) -> str:
        """``tool.started``."""
        return await self._emit(
            "tool.started", {"tool_call_id": tool_call_id, "name": name, "args": args}
        )

    async def tool_completed(
        self, tool_call_id: str, output: str, *, is_error: bool = False, duration_ms: float = 0.0
    ) -> str:
        """``tool.completed``; ``duration_ms`` in milliseconds."""
        return await self._emit(
            "tool.completed",
            {
                "tool_call_id": tool_call_id,
                "output": output,
                "is_error": is_error,
                "duration_ms": duration_ms,
            },
        )

    async def request_approval(self, approval_id: str, prompt: str) -> str:
        """``approval.requested``: the run waits for a browser's decision."""
        return await self._emit(
            "approval.requested", {"approval_id": approval_id, "prompt": prompt}
        )

    async def set_title(self, title: str) -> str:
        """``session.title``."""
        return await self._emit("session.title", {"title": title})

    async def complete(self) -> str:
        """Terminal ``run.completed``."""
        return await self._emit("run.completed", {})

    async def fail(self, error: str) -> str:
        """Terminal ``run.failed``."""
        return await self._emit("run.failed", {"error": error})

    async def cancel(self) -> str:
        """Terminal ``run.cancelled``."""
        return await self._emit("run.cancelled", {})
