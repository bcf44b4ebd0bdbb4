"""Hub: the per-process fan-out of live frames from Redis to local viewers.

One Pub/Sub connection per process, shared by every local viewer. A session's channel is
subscribed only while at least one local viewer needs it (reference counted), so Redis
connections stay constant as viewers grow. Each viewer gets a bounded queue; a viewer whose
queue overflows is flagged to fall back to catch-up reads from the log instead of growing
memory. After a Pub/Sub reconnect every viewer is flagged the same way, because frames
published meanwhile were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.core import frames
from gateway.core.aio import cancel_and_wait
from gateway.core.events import StoredEvent
from gateway.metrics import Metrics
from gateway.store.sharded_pubsub import ShardedPubSub

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it was set.

    Uses ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11, ``wait_for``
    can swallow a cancellation that races with the event being set, which would leave a
    cancelled stream running.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Wakeup(asyncio.Event):
    """An ``asyncio.Event`` that holds no deque while nobody waits.

    ``asyncio.Event`` allocates a deque (about 600 bytes) per event for its waiters; every
    idle viewer has one wakeup, which usually has one waiter. This one keeps a short list,
    only while someone waits.
    """

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Wakeup {'set' if self._value else 'unset'}>"

    def set(self) -> None:
        if not self._value:
            self._value = True
            for fut in self._waiters or ():
                if not fut.done():
                    fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [fut]
        else:
            self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            waiters = self._waiters
            if waiters is not None:
                waiters.remove(fut)
                if not waiters:
                    self._waiters = None


NO_EVENTS: deque[StoredEvent] = deque(maxlen=0)  # shared by every empty inbox; never filled


class Subscriber:
    """One local viewer's live inbox for one channel.

    ``events`` holds at most ``maxsize`` entries; ``overflowed`` means entries were dropped
    and the viewer must re-read the log. ``epoch`` is the log epoch of the last live frame.
    ``kicked`` is set when the viewer's connection id was attached elsewhere; ``draining``
    when this process is shutting down and the viewer should reconnect to another replica.
    """

    __slots__ = (
        "connection_id",
        "done",
        "draining",
        "ended",
        "epoch",
        "events",
        "kicked",
        "maxsize",
        "on_frame",
        "overflowed",
        "slot",
        "token",
        "wakeup",
    )

    def __init__(
        self,
        maxsize: int,
        connection_id: str = "",
        token: str = "",
        on_frame: Callable[[frames.Frame], None] | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.connection_id = connection_id
        self.token = token
        # The shared empty queue until the first live event: an idle viewer holds no deque.
        self.events: deque[StoredEvent] = NO_EVENTS
        self.epoch = ""
        self.overflowed = False
        self.kicked = False
        self.draining = False
        self.wakeup: asyncio.Event = Wakeup()
        self.done: asyncio.Event | None = None  # created by the first waiter (see ended)
        self.on_frame = on_frame
        self.slot = ""
        self.ended = False

    def push(self, epoch: str, events: list[StoredEvent]) -> bool:
        """Queue live events; returns False when this push made the queue overflow."""
        self.wakeup.set()
        if self.overflowed:
            return True  # already falling back to the log; nothing to queue
        if (self.epoch and epoch != self.epoch) or len(self.events) + len(events) > self.maxsize:
            # Full queue, or a re-created log: only a read of the log can tell what follows.
            self.events.clear()
            self.overflowed = True
            return False
        self.epoch = epoch
        if self.events is NO_EVENTS:
            self.events = deque()
        self.events.extend(events)
        return True

    def lost_frames(self) -> None:
        """Frames may have been missed (reconnect): force a catch-up."""
        self.events.clear()
        self.overflowed = True
        self.wakeup.set()

    def drain(self) -> None:
        """End this viewer's stream with a reconnect hint: the process is shutting down."""
        self.draining = True
        self.wakeup.set()

    def kick(self) -> None:
        """End this viewer: its connection id was attached by a newer stream."""
        self.kicked = True
        self.wakeup.set()

    def finish(self) -> None:
        """The viewer's stream is gone (the hub unsubscribed it)."""
        self.ended = True
        if self.done is not None:
            self.done.set()

    async def wait_finished(self) -> None:
        """Until :meth:`finish` was called. The event is made on demand: an idle viewer
        that nobody waits for does not carry one."""
        if self.ended:
            return
        if self.done is None:
            self.done = asyncio.Event()
        await self.done.wait()


class _PubSub(Protocol):
    """What the hub uses of redis-py's ``PubSub`` (and of :class:`ShardedPubSub`)."""

    @property
    def subscribed(self) -> bool: ...
    async def subscribe(self, *channels: str) -> Any: ...
    async def unsubscribe(self, *channels: str) -> Any: ...
    async def get_message(self, timeout: float = ...) -> Any: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Slot:
    """A stream's place among its token subject's open streams: the subject's control
    ``channel`` and this stream's ``slot`` id. A newer stream of the subject beyond
    ``GATEWAY_MAX_STREAMS_PER_SUBJECT`` ends the oldest with ``event: close`` superseded."""

    subject: str
    channel: str
    slot: str

    async def hold(self, hub: Hub, sub: Subscriber) -> None:
        """Make ``sub`` the one an eviction of this slot kicks."""
        sub.slot = self.slot
        await hub.subscribe(self.channel, sub)

    def release(self, hub: Hub, sub: Subscriber) -> None:
        """Undo :meth:`hold`."""
        hub.unsubscribe(self.channel, sub)


class Hub:
    """Shares one Redis Pub/Sub connection among all local viewers.

    Usage: ``await hub.subscribe(channel, sub)`` (returns once Redis confirmed the
    subscription, so a catch-up read after it cannot miss a frame), then
    ``hub.unsubscribe(channel, sub)`` when the viewer goes away.
    """

    def __init__(self, redis: Redis, metrics: Metrics) -> None:
        self.redis = redis
        self.metrics = metrics
        self._pubsub: _PubSub | None = None
        self._subs: dict[str, set[Subscriber]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}  # channels awaiting confirmation
        self._task: asyncio.Task[None] | None = None
        self._active = asyncio.Event()
        # redis-py's PubSub takes its connection from the pool on the first command without
        # a lock: concurrent first subscribes each take one, and all but the last are
        # orphaned (their channels never deliver, the pool shrinks). One at a time.
        self._subscribing = asyncio.Lock()
        # Channels whose SUBSCRIBE failed (Redis unreachable): retried in the background;
        # their viewers rely on catch-up reads until Redis confirms.
        self._failed: set[str] = set()
        self._recovering: set[str] = set()
        self._retry_task: asyncio.Task[None] | None = None
        self._closing = False
        self.draining = False

    async def start(self) -> None:
        """Start the reader task (sharded Pub/Sub on a Redis Cluster)."""
        if isinstance(self.redis, RedisCluster):
            self._pubsub = ShardedPubSub(self.redis)
        else:
            self._pubsub = self.redis.pubsub()  # type: ignore[assignment]
        self._task = asyncio.create_task(self._run(), name="hub-reader")

    async def stop(self) -> None:
        """Stop reading and release the Pub/Sub connection."""
        self._closing = True
        await cancel_and_wait(self._retry_task, "hub subscribe retry")
        await cancel_and_wait(self._task, "hub reader")
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._subs)

    def confirmed(self, channel: str) -> bool:
        """Whether Redis confirmed the subscription of ``channel`` (which has viewers)."""
        return channel in self._subs and channel not in self._confirmed

    def drain(self, spread: float) -> None:
        """Ask every local viewer to reconnect elsewhere, spread over ``spread`` seconds.

        Spreading the closes keeps a replica's viewers from reconnecting to the survivors
        all in the same instant. Viewers that subscribe later are drained at once.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        for subs in self._subs.values():
            for sub in subs:
                loop.call_later(random.uniform(0, spread), sub.drain)

    async def subscribe(self, channel: str, sub: Subscriber) -> None:
        """Register ``sub`` on ``channel``; waits (bounded) for Redis to confirm.

        If the SUBSCRIBE fails (Redis unreachable) it returns at once with ``sub`` flagged
        to catch up from the log; the channel is subscribed again in the background, and
        its viewers catch up once more when Redis confirms.
        """
        assert self._pubsub is not None, "hub not started"
        if self.draining:
            sub.drain()
        subs = self._subs.get(channel)
        if subs is not None:
            subs.add(sub)
            confirmed = self._confirmed.get(channel)  # None once Redis confirmed
            if confirmed is not None and not confirmed.is_set():
                if channel in self._failed:
                    sub.lost_frames()  # no live frames yet: read the log meanwhile
                else:
                    await self._wait(channel, confirmed)
            return
        self._subs[channel] = {sub}
        confirmed = asyncio.Event()
        self._confirmed[channel] = confirmed
        self.metrics.hub_channels.set(len(self._subs))
        if await self._subscribe(channel):
            await self._wait(channel, confirmed)

    async def _subscribe(self, channel: str) -> bool:
        """Send SUBSCRIBE for ``channel``; False (and a retry scheduled) when it failed."""
        assert self._pubsub is not None
        try:
            async with self._subscribing:
                if channel not in self._subs:
                    return False  # every viewer left meanwhile
                await self._pubsub.subscribe(channel)
        except Exception as exc:
            self.metrics.redis_errors.inc()
            log.warning("hub: subscribe %s failed (%r); retrying in the background", channel, exc)
            self._failed.add(channel)
            self._recovering.add(channel)
            for sub in self._subs.get(channel, ()):
                sub.lost_frames()
            if self._retry_task is None or self._retry_task.done():
                self._retry_task = asyncio.create_task(self._retry(), name="hub-resubscribe")
            return False
        self._active.set()
        return True

    async def _retry(self) -> None:
        """Subscribe the failed channels again, with backoff, until none is left."""
        backoff = 0.1
        while self._failed and not self._closing:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            for channel in list(self._failed):
                self._failed.discard(channel)
                if channel in self._subs and not await self._subscribe(channel):
                    break  # still unreachable: _subscribe put it back

    async def _wait(self, channel: str, confirmed: asyncio.Event) -> None:
        if not await wait_event(confirmed, SUBSCRIBE_TIMEOUT):
            log.warning("hub: no confirmation for %s after %ss", channel, SUBSCRIBE_TIMEOUT)

    async def evict(
        self, channel: str, connection_id: str, token: str, timeout: float = 2.0
    ) -> None:
        """End local streams of ``connection_id`` not holding ``token``, and wait for them.

        Keeps a connection id at one open stream per process even while a browser's old
        response is still being torn down; other replicas are told through the channel.
        """
        old = [
            s
            for s in self._subs.get(channel, ())
            if s.connection_id == connection_id and s.token != token
        ]
        for sub in old:
            sub.kick()
        if old:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    for sub in old:
                        await sub.wait_finished()

    def unsubscribe(self, channel: str, sub: Subscriber) -> None:
        """Deregister ``sub``; the channel is unsubscribed when its last viewer leaves."""
        sub.finish()
        subs = self._subs.get(channel)
        if subs is None:
            return
        subs.discard(sub)
        if subs:
            return
        del self._subs[channel]
        self._confirmed.pop(channel, None)
        self._failed.discard(channel)
        self._recovering.discard(channel)
        self.metrics.hub_channels.set(len(self._subs))
        if self._pubsub is not None and not self._closing:
            task = asyncio.create_task(self._unsubscribe(channel))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _unsubscribe(self, channel: str) -> None:
        assert self._pubsub is not None
        # A viewer may have come back while this task was scheduled.
        if channel in self._subs:
            return
        try:
            await self._pubsub.unsubscribe(channel)
        except Exception:
            self.metrics.redis_errors.inc()

    async def _run(self) -> None:
        assert self._pubsub is not None
        backoff = 0.1
        while not self._closing:
            if not self._pubsub.subscribed:
                self._active.clear()
                await wait_event(self._active, 1.0)
                continue
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.redis_errors.inc()
                log.warning("hub: pubsub error %r; reconnecting in %.1fs", exc, backoff)
                for subs in self._subs.values():
                    for sub in subs:
                        sub.lost_frames()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, object]) -> None:
        kind = msg.get("type")
        channel = str(msg.get("channel"))
        if kind in ("subscribe", "ssubscribe"):
            # Forgotten once set: a confirmed channel holds no event (one per idle viewer).
            ev = self._confirmed.pop(channel, None)
            if ev is not None:
                ev.set()
            if channel in self._recovering:
                # Its viewers caught up while the SUBSCRIBE was failing, and frames published
                # until now reached nobody: they read the log once more.
                self._recovering.discard(channel)
                for sub in self._subs.get(channel, ()):
                    sub.lost_frames()
            return
        if kind == "sresubscribe":
            # Re-subscribed after a failover or a moved slot: frames meanwhile were lost.
            for sub in self._subs.get(channel, ()):
                sub.lost_frames()
            return
        if kind not in ("message", "smessage"):
            return
        subs = self._subs.get(channel)
        if not subs:
            return
        frame = frames.decode(str(msg["data"]))
        if isinstance(frame, frames.LiveEvents):
            for sub in subs:
                if not sub.push(frame.epoch, frame.events):
                    self.metrics.slow_consumer_fallbacks.inc()
        elif isinstance(frame, frames.TakeOver):
            for sub in subs:
                if sub.connection_id == frame.target and sub.token != frame.token:
                    sub.kick()
        elif isinstance(frame, frames.Evict):  # a slot was given to a newer stream
            for sub in subs:
                if sub.slot == frame.slot:
                    sub.kick()
        elif frame is not None:
            for sub in subs:
                if sub.on_frame is not None:
                    sub.on_frame(frame)
