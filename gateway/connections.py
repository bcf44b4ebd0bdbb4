"""Connections: one viewer's SSE stream, from a cursor to the live tail.

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
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import anyio
from redis.exceptions import RedisError

from gateway import offsets
from gateway.hub import Hub, Slot, Subscriber, wait_event
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.streams import SessionMeta, StoredEvent, Streams, envelope_json

log = logging.getLogger(__name__)


class OffsetAhead(Exception):
    """A cursor of the current epoch beyond the log's last event (``409 offset_ahead``)."""


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream begins: deliver events after ``after_seq`` of ``epoch``.

    ``reset`` names why the requested cursor could not be honoured (``epoch_changed``,
    ``offset_trimmed``); the stream then starts at the head with a ``reset`` frame.
    """

    epoch: str
    after_seq: int
    reset: str | None = None


async def release_slot(streams: Streams, hub: Hub, slot: Slot | None, sub: Subscriber) -> None:
    """Give back a stream's slot among its subject's open streams (see :class:`Slot`)."""
    if slot is not None:
        slot.release(hub, sub)
        await streams.close_slot(slot.subject, slot.slot)


SUPERSEDED = b'event: close\ndata: {"reason":"superseded"}\n\n'
TOKEN_EXPIRED = b'event: close\ndata: {"reason":"token_expired"}\n\n'


def seconds_left(expires: float | None) -> float | None:
    """Seconds until a token's ``exp`` (Unix seconds); None when it never expires."""
    return None if expires is None else expires - time.time()


def until(timeout: float, expires: float | None) -> float:
    """``timeout`` shortened so that a wait ends when the token expires."""
    left = seconds_left(expires)
    return timeout if left is None else max(0.0, min(timeout, left))


def drain_frame(settings: Settings) -> bytes:
    """The last frame of a stream closed by a drain: reconnect soon, to another replica."""
    return (
        f'retry: {settings.drain_retry_ms}\nevent: close\ndata: {{"reason":"draining"}}\n\n'
    ).encode()


def resolve(meta: SessionMeta, cursor: str) -> Start:
    """Turn a cursor (``start``, ``run``, ``live`` or an offset) into a :class:`Start`.

    Raises:
        offsets.InvalidOffset: malformed cursor.
        OffsetAhead: an offset of this epoch beyond the last event.
    """
    if cursor == "start":
        return Start(meta.epoch, meta.first_seq - 1)
    if cursor == "live":
        return Start(meta.epoch, meta.seq)
    if cursor == "run":
        after = meta.run_first_seq - 1 if meta.run_first_seq else meta.first_seq - 1
        return _check(meta, after)
    off = offsets.parse(cursor)
    if off.epoch != meta.epoch:
        return Start(meta.epoch, meta.seq, "epoch_changed")
    if off.seq > meta.seq:
        raise OffsetAhead(f"offset {cursor} is beyond the last event {meta.seq}")
    return _check(meta, off.seq)


def _check(meta: SessionMeta, after: int) -> Start:
    if after + 1 < meta.first_seq:
        return Start(meta.epoch, meta.seq, "offset_trimmed")
    return Start(meta.epoch, after)


@dataclass(frozen=True, slots=True)
class StreamDeps:
    """What every SSE stream of a process shares: Redis layer, hub, settings and metrics."""

    streams: Streams
    hub: Hub
    settings: Settings
    metrics: Metrics


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
        self.streams, self.hub = deps.streams, deps.hub
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
        if self.mux:  # one onmessage handler gets every type, known or not
            return f"id: {off}\ndata: {env}\n\n"
        return f"id: {off}\nevent: {ev.type}\ndata: {env}\n\n"

    def _reset_frame(self, reason: str) -> bytes:
        off = offsets.format_offset(self.epoch, self.last)
        body = {"reason": reason, "offset": off, "snapshot": f"/v1/sessions/{self.sid}/snapshot"}
        if self.mux:
            body["session_id"] = self.sid
        data = json.dumps(body)
        self.metrics.resets.labels(reason).inc()
        return f"id: {off}\nevent: reset\ndata: {data}\n\n".encode()

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
        channel = self.streams.live_channel(self.sid)
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
                    await release_slot(self.streams, self.hub, self.slot, sub)
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
            and await self.streams.connection_token(self.sid, c.connection_id) != c.token
        ):
            sub.kick()
        if not self.mux:
            yield f"retry: {self.settings.sse_retry_ms}\n\n".encode()
        if self.pending_reset:
            yield self._reset_frame(self.pending_reset)
        need_catchup = True
        while True:
            if sub.kicked:
                if not self.mux:  # a mux session just stops; the mux reports its own close
                    yield SUPERSEDED
                return
            if sub.draining and not self.mux:  # a mux session ends with its mux
                # Commit first: the reconnect may reach another replica before this returns.
                await self._auto_commit(final=True)
                yield drain_frame(self.settings)
                return
            left = seconds_left(self.expires)
            if left is not None and left <= 0:
                await self._auto_commit(final=True)
                yield TOKEN_EXPIRED
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
                continue
            sub.wakeup.clear()
            if sub.events or sub.kicked or sub.overflowed or sub.draining:
                continue
            uncommitted = self._uncommitted()
            timeout = (
                self.settings.auto_commit_interval
                if uncommitted
                else self.settings.heartbeat_interval
            )
            if not await wait_event(sub.wakeup, until(timeout, self.expires)):
                left = seconds_left(self.expires)
                if left is not None and left <= 0:
                    continue  # the token expired: the loop's top ends the stream
                if uncommitted:
                    await self._auto_commit(final=True)
                    continue
                if not self.mux:  # the mux sends one heartbeat for all its sessions
                    self.metrics.heartbeats.inc()
                    yield b": hb\n\n"
                need_catchup = await self._tail_check()

    async def _catch_up(self) -> AsyncIterator[bytes]:
        """Read the log from ``self.last`` to its end in pages; handles trims and new epochs."""
        page = self.settings.catchup_page
        while True:
            batch = await self.streams.read(self.sid, self.last, page)
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
        epoch, head = await self.streams.head_seqs(self.sid)
        if epoch is not None and epoch != self.epoch:
            yield await self._reset_to_head("epoch_changed")
        elif epoch is not None and head < self.last:
            # Events this viewer already got are gone (a failover lost them): say so.
            yield await self._reset_to_head("offset_ahead")
        elif head > self.last:
            # Entries exist past what XRANGE returned: the log was trimmed under us.
            batch = await self.streams.read(self.sid, self.last, 1)
            if not batch or batch[0].seq != self.last + 1:
                yield await self._reset_to_head("offset_trimmed")

    async def _reset_to_head(self, reason: str) -> bytes:
        epoch, head = await self.streams.head_seqs(self.sid)
        self.epoch, self.last = epoch or self.epoch, head
        return self._reset_frame(reason)

    async def _tail_check(self) -> bool:
        """On an idle heartbeat: refresh the consumer's TTL, and report a missed tail."""
        if self.consumer is not None:
            await self.streams.touch_connection(
                self.sid, self.consumer.connection_id, self.settings.connection_ttl
            )
        epoch, head = await self.streams.head_seqs(self.sid)
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
        await self.streams.commit(
            self.sid,
            c.connection_id,
            offsets.format_offset(self.epoch, self.last),
            self.settings.connection_ttl,
            forward_only=True,
        )
