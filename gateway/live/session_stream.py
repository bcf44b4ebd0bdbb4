"""Session stream: one viewer's SSE stream of one session, from a cursor to the live tail.

A stream registers with the hub first, then catches up from its cursor with XRANGE pages,
then delivers live frames, dropping what catch-up already sent (by sequence). Subscribe-
then-read closes the race between history and live. A sequence jump, a queue overflow or a
lost Pub/Sub frame sends the stream back to catch-up, and an idle stream re-checks the log's
head on every heartbeat, so a lost notification delays a viewer by one heartbeat at most and
never leaves a hole. Offsets from another epoch or older than retention get an explicit
``reset`` frame (see docs/api.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import anyio
from redis.exceptions import RedisError

from gateway.core import frames as wire
from gateway.core import offsets
from gateway.core.cursors import Start
from gateway.core.events import StoredEvent
from gateway.live.deps import StreamDeps, drain_frame, expired, release_slot, until
from gateway.live.hub import Slot, Subscriber
from gateway.live.ticker import ticker
from gateway.store.sessions import envelope_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Consumer:
    """The stored connection a stream serves: id, commit mode and this attach's token."""

    connection_id: str
    commit: str
    token: str


class EventStream:
    """The SSE frames of one viewer of one session; iterate :meth:`frames`.

    ``consumer`` is None for the plain resumable stream (no stored offset). ``mux``: the
    stream is one session inside a browser's multiplexed stream (``gateway.mux``): no
    ``retry``/heartbeat frames of its own, envelopes as unnamed events, resets name the
    session. ``expires``: the token's ``exp`` (Unix seconds); the stream then ends with
    ``event: close`` ``{"reason": "token_expired"}`` (a mux session ends with its mux).
    """

    # Held by every idle viewer for as long as it stays: no per-instance __dict__.
    __slots__ = (
        "_committed",
        "_last_commit",
        "_stopped",
        "_sub",
        "consumer",
        "consumers",
        "deps",
        "epoch",
        "expires",
        "hub",
        "kind",
        "last",
        "metrics",
        "mux",
        "pending_reset",
        "sessions",
        "settings",
        "sid",
        "sid_json",
        "slot",
    )

    def __init__(
        self,
        deps: StreamDeps,
        *,
        session_id: str,
        start: Start,
        consumer: Consumer | None = None,
        mux: bool = False,
        slot: Slot | None = None,
        expires: float | None = None,
    ) -> None:
        self.deps = deps
        self.sessions, self.consumers = deps.store.sessions, deps.store.consumers
        self.hub = deps.hub
        self.expires = None if mux else expires
        self.settings, self.metrics = deps.settings, deps.metrics
        self.sid = session_id
        self.sid_json = json.dumps(session_id)
        self.epoch = start.epoch
        self.last = start.after_seq
        self.pending_reset = start.reset
        self.consumer = consumer
        self.mux = mux
        self.slot = slot
        self.kind = "mux-session" if mux else "connection" if consumer else "plain"
        self._committed = self.last
        self._last_commit = time.monotonic()
        self._sub: Subscriber | None = None
        self._stopped = False

    def stop(self) -> None:
        """End the stream at its next step, whether or not its task is cancelled."""
        self._stopped = True
        if self._sub is not None:
            self._sub.kick()

    def _frame(self, ev: StoredEvent) -> str:
        env = envelope_json(self.sid_json, self.epoch, ev)
        off = offsets.format_offset(self.epoch, ev.seq)
        # In a mux, one onmessage handler gets every type, known or not: no event name.
        return wire.sse_event(env, id=off, event=None if self.mux else ev.type)

    def _reset_frame(self, reason: str) -> bytes:
        off = offsets.format_offset(self.epoch, self.last)
        body = {"reason": reason, "offset": off, "snapshot": f"/v1/sessions/{self.sid}/snapshot"}
        if self.mux:
            body["session_id"] = self.sid
        self.metrics.resets.labels(reason).inc()
        return wire.sse_event(json.dumps(body), id=off, event="reset").encode()

    def _closing(self, frame: bytes, reason: str) -> bytes:
        """The frame ending the stream for ``reason`` (a subclass speaking another protocol
        replaces the ``event: close`` frame)."""
        return frame

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE frames until the client goes away or the connection is taken over."""
        sub = Subscriber(
            self.settings.queue_size,
            self.consumer.connection_id if self.consumer else "",
            self.consumer.token if self.consumer else "",
        )
        sub.epoch = self.epoch
        self._sub = sub
        if self._stopped:
            sub.kick()
        channel = self.sessions.live_channel(self.sid)
        gauge = self.metrics.open_streams.labels(self.kind)
        gauge.inc()
        try:
            if self.slot is not None:
                await self.slot.hold(self.hub, sub)
            async with contextlib.aclosing(self._frames(sub, channel)) as frames:
                async for frame in frames:
                    yield frame
        except RedisError as exc:
            # End the response; the client's retry resumes from its offset once Redis is back.
            self.metrics.redis_errors.inc()
            log.warning("stream of %s ended on a Redis error: %r", self.sid, exc)
        finally:
            self.hub.unsubscribe(channel, sub)
            gauge.dec()
            with anyio.CancelScope(shield=True):
                # Separately: a failed final commit must not keep the subject's slot.
                try:
                    await self._auto_commit(final=True)
                except Exception as exc:
                    # The stored offset trails by one commit interval: a reconnect without
                    # Last-Event-ID sees those events again (at-least-once).
                    self.metrics.redis_errors.inc()
                    log.warning("stream of %s: final commit failed: %r", self.sid, exc)
                try:
                    await release_slot(self.deps, self.slot, sub)
                except Exception as exc:
                    # The slot entry ages out of the subject's set (SLOT_MAX_AGE_S).
                    self.metrics.redis_errors.inc()
                    log.warning("stream of %s: slot release failed: %r", self.sid, exc)

    async def _frames(self, sub: Subscriber, channel: str) -> AsyncGenerator[bytes, None]:
        await self.hub.subscribe(channel, sub)
        # A newer attach may have announced itself before this stream listened: it stored
        # its token first, so checking after subscribing closes that window.
        c = self.consumer
        if (
            c is not None
            and not self.mux
            and await self.consumers.token(self.sid, c.connection_id) != c.token
        ):
            sub.kick()
        if not self.mux:
            yield wire.sse_retry(self.settings.sse_retry_ms).encode()
        if self.pending_reset:
            yield self._reset_frame(self.pending_reset)
        need_catchup = True
        alarms = ticker()
        interval = self.settings.heartbeat_interval
        # At random in 0.5-1 x the interval: viewers attached together (a deploy, a reconnect
        # storm) do not all beat, and re-check Redis, in the same instant.
        next_beat = alarms.loop.time() + interval * random.uniform(0.5, 1.0)
        while True:
            if sub.kicked:
                if not self.mux:  # a mux session just stops; the mux reports its own close
                    yield self._closing(wire.SUPERSEDED, "superseded")
                return
            if sub.draining and not self.mux:  # a mux session ends with its mux
                # Commit first: the reconnect may reach another replica before this returns.
                await self._auto_commit(final=True)
                yield self._closing(drain_frame(self.settings), "draining")
                return
            if expired(self.expires):
                await self._auto_commit(final=True)
                yield self._closing(wire.TOKEN_EXPIRED, "token_expired")
                return
            if need_catchup or sub.overflowed:
                sub.overflowed = False
                sub.events.clear()
                async for chunk in self._catch_up():
                    yield chunk
                sub.epoch = self.epoch
                need_catchup = False
                continue
            if sub.events:
                out: list[str] = []
                while sub.events:
                    ev = sub.events.popleft()
                    if ev.seq <= self.last:
                        continue  # catch-up already sent it
                    if ev.seq != self.last + 1:
                        self.metrics.gap_fills.inc()
                        need_catchup = True
                        break
                    out.append(self._frame(ev))
                    self.last = ev.seq
                if out:
                    self.metrics.events_delivered.inc(len(out))
                    yield "".join(out).encode()
                    await self._auto_commit()
                    next_beat = alarms.loop.time() + interval  # a busy stream needs no beat
                continue
            sub.wakeup.clear()
            if sub.events or sub.kicked or sub.overflowed or sub.draining:
                continue
            uncommitted = self._uncommitted()
            timeout = next_beat - alarms.loop.time()
            if uncommitted:
                timeout = min(timeout, self.settings.auto_commit_interval)
            if not await alarms.wait(sub.wakeup, until(max(0.0, timeout), self.expires)):
                if expired(self.expires):
                    continue  # the loop's top ends the stream
                if uncommitted:
                    await self._auto_commit(final=True)
                    continue
                if alarms.loop.time() < next_beat:
                    continue  # cut short for the token's expiry (its clock is not the loop's)
                # Fixed rate: the next beat is due one interval after this one was *due*, so
                # the head check's round trip and event-loop lag do not add up beat after
                # beat. A stream that fell a whole interval behind starts afresh.
                next_beat = max(next_beat + interval, alarms.loop.time() + interval / 2)
                if not self.mux:  # the mux sends one heartbeat for all its sessions
                    self.metrics.heartbeats.inc()
                    yield wire.HEARTBEAT
                need_catchup = await self._tail_check()

    async def _catch_up(self) -> AsyncIterator[bytes]:
        """Read the log from ``self.last`` to its end in pages; handles trims and new epochs."""
        page = self.settings.catchup_page
        while True:
            batch = await self.sessions.read(self.sid, self.last, page)
            self.metrics.catchup_reads.inc()
            if batch and batch[0].seq != self.last + 1:
                yield await self._reset_to_head("offset_trimmed")
                return
            if batch:
                self.last = batch[-1].seq
                self.metrics.events_delivered.inc(len(batch))
                yield "".join(self._frame(ev) for ev in batch).encode()
                await self._auto_commit()
            if len(batch) < page:
                break
        epoch, head = await self.sessions.head(self.sid)
        if epoch is not None and epoch != self.epoch:
            yield await self._reset_to_head("epoch_changed")
        elif epoch is not None and head < self.last:
            # Events this viewer already got are gone (a failover lost them): say so.
            yield await self._reset_to_head("offset_ahead")
        elif head > self.last:
            # Entries exist past what XRANGE returned: the log was trimmed under us.
            batch = await self.sessions.read(self.sid, self.last, 1)
            if not batch or batch[0].seq != self.last + 1:
                yield await self._reset_to_head("offset_trimmed")

    async def _reset_to_head(self, reason: str) -> bytes:
        epoch, head = await self.sessions.head(self.sid)
        self.epoch, self.last = epoch or self.epoch, head
        return self._reset_frame(reason)

    async def _tail_check(self) -> bool:
        """On an idle heartbeat: refresh the consumer's TTL, and report a missed tail."""
        touch = None
        if self.consumer is not None:  # queued now, sent in one pipeline with the head read
            touch = self.consumers.touch(
                self.sid, self.consumer.connection_id, self.settings.connection_ttl
            )
        epoch, head = await self.sessions.head(self.sid)
        if touch is not None:
            await touch
        return (epoch is not None and epoch != self.epoch) or head != self.last

    def _uncommitted(self) -> bool:
        c = self.consumer
        return c is not None and c.commit == "auto" and self.last != self._committed

    async def _auto_commit(self, final: bool = False) -> None:
        c = self.consumer
        if c is None or not self._uncommitted():
            return
        now = time.monotonic()
        if not final and now - self._last_commit < self.settings.auto_commit_interval:
            return
        self._last_commit = now
        self._committed = self.last
        await self.consumers.commit(
            self.sid,
            c.connection_id,
            offsets.format_offset(self.epoch, self.last),
            self.settings.connection_ttl,
            forward_only=True,
        )
