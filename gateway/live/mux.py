"""Mux: one SSE stream per browser carrying every session its tabs view, plus the activity feed.

A mux is a set of subscriptions, each backed by an ordinary manual-commit connection (so each
session resumes from its own stored offset). The live stream runs one
:class:`~gateway.live.session_stream.EventStream` per subscribed session and merges their
frames into one response through a bounded queue: a browser that reads slowly blocks the
per-session streams, whose hub queues then overflow into catch-up reads, so memory stays
bounded. Subscription changes reach the stream on whichever replica holds it through the
mux's control channel (``S``/``U`` frames); so does a take-over (``K``) when the same mux
attaches twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator

import anyio

from gateway.core import frames as wire
from gateway.core.cursors import Start, resolve_stored
from gateway.live.activity_stream import ActivityCursor, Visible, everything, release
from gateway.live.deps import StreamDeps, drain_frame, expired, until
from gateway.live.hub import Slot, Subscriber, wait_event
from gateway.live.session_stream import Consumer, EventStream

log = logging.getLogger(__name__)

OUT_QUEUE = 64  # frames (each up to one catch-up page) buffered between sessions and socket


class MuxStream:
    """The live stream of one mux (``GET /v1/mux/{mux_id}/events``); iterate :meth:`frames`.

    ``token`` identifies this attachment: a newer attachment of the same mux ends this one.
    ``visible`` says which sessions the viewer's token may read: others are not streamed.
    ``expires`` is the token's ``exp`` (Unix seconds): the stream then ends with
    ``event: close`` ``{"reason": "token_expired"}`` and the client resumes with a fresh token.
    """

    def __init__(
        self,
        deps: StreamDeps,
        *,
        mux_id: str,
        token: str,
        visible: Visible = everything,
        slot: Slot | None = None,
        expires: float | None = None,
    ) -> None:
        self.deps = deps
        self.expires = expires
        self.visible = visible
        self.slot = slot
        self.store, self.hub = deps.store, deps.hub
        self.settings, self.metrics = deps.settings, deps.metrics
        self.mux_id, self.token = mux_id, token
        # (session, producing pump, frame): frames of a replaced pump are dropped.
        self.out: asyncio.Queue[tuple[str, asyncio.Task[None] | None, bytes]] = asyncio.Queue(
            OUT_QUEUE
        )
        self.control: list[wire.Frame] = []
        self.activity: list[wire.Activity] = []
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.stopping: set[asyncio.Task[None]] = set()
        self.active: dict[str, EventStream] = {}  # the current session stream of each pump
        self.wake = asyncio.Event()

    def _on_control(self, frame: wire.Frame) -> None:
        self.control.append(frame)
        self.wake.set()

    def _on_activity(self, frame: wire.Frame) -> None:
        if isinstance(frame, wire.Activity):
            self.activity.append(frame)
            self.wake.set()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE frames until the client leaves or the mux is attached elsewhere."""
        ctl = Subscriber(self.settings.queue_size, self.mux_id, self.token, self._on_control)
        act = Subscriber(self.settings.queue_size, on_frame=self._on_activity)
        ctl_channel = self.store.muxes.channel(self.mux_id)
        activity = self.store.activity
        gauge = self.metrics.open_streams.labels("mux")
        gauge.inc()
        try:
            # Wake the merge loop on take-over too, not only on control frames.
            ctl.wakeup = act.wakeup = self.wake
            if self.slot is not None:
                await self.slot.hold(self.hub, ctl)  # an eviction kicks ctl: superseded
            await self.hub.subscribe(ctl_channel, ctl)
            # A newer attach may have announced itself before this stream listened.
            if await self.store.muxes.token(self.mux_id) != self.token:
                ctl.kick()
            await self.hub.subscribe(activity.channel, act)
            cursor = ActivityCursor(await activity.last_id(), self.visible)
            yield wire.sse_retry(self.settings.sse_retry_ms).encode()
            mux = await self.store.muxes.get(self.mux_id, self.settings.connection_ttl)
            for sid, (_, subscribed) in (mux.sessions if mux else {}).items():
                if subscribed and self.visible(sid):
                    await self._start(sid)
            while True:
                self.wake.clear()
                if ctl.kicked:
                    yield wire.SUPERSEDED
                    return
                if ctl.draining:
                    yield drain_frame(self.settings)
                    return
                if expired(self.expires):
                    yield wire.TOKEN_EXPIRED
                    return
                chunks = [f.encode() for f in cursor.frames(self.activity)]
                self.activity.clear()
                control, self.control = self.control, []
                for frame in control:
                    chunks.extend(await self._apply(frame))
                while not self.out.empty():
                    sid, pump, chunk = self.out.get_nowait()
                    if self.pumps.get(sid) is pump:
                        chunks.append(chunk)
                if chunks:
                    yield b"".join(chunks)
                    continue
                # Every producer sets the wake event after queueing, so it is enough.
                wait = until(self.settings.heartbeat_interval, self.expires)
                if not await wait_event(self.wake, wait):
                    if expired(self.expires):
                        continue  # the loop's top ends the stream
                    self.metrics.heartbeats.inc()
                    await self.store.muxes.get(self.mux_id, self.settings.connection_ttl)
                    yield wire.HEARTBEAT
        finally:
            self.hub.unsubscribe(ctl_channel, ctl)
            self.hub.unsubscribe(activity.channel, act)
            gauge.dec()
            # The response is being cancelled (client gone): shield the bounded teardown.
            with anyio.CancelScope(shield=True):
                await self._stop_all()
                await release(self.deps, self.slot, ctl)

    async def _stop_all(self) -> None:
        """Cancel every pump, draining the queue so none stays blocked on a full one."""
        tasks = [*self.pumps.values(), *self.stopping]
        self.pumps.clear()
        for stream in self.active.values():
            stream.stop()
        self.active.clear()
        for task in tasks:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + 2.0
        while tasks and asyncio.get_running_loop().time() < deadline:
            while not self.out.empty():
                self.out.get_nowait()
            _, pending = await asyncio.wait(tasks, timeout=0.05)
            tasks = list(pending)

    async def _apply(self, frame: wire.Frame) -> list[bytes]:
        if isinstance(frame, wire.Subscribe):
            await self._start(frame.session_id)
        elif isinstance(frame, wire.Unsubscribe) and frame.session_id in self.pumps:
            await self._stop(frame.session_id)
            data = json.dumps({"session_id": frame.session_id})
            return [wire.sse_event(data, event="unsubscribed").encode()]
        return []

    async def _stop(self, sid: str) -> None:
        # Never await the pump here: it may be blocked on the full queue that only this
        # loop drains. Its frames are dropped from now on, and its session stream is told to
        # stop as well as cancelled, so it ends even if a cancellation is lost.
        task = self.pumps.pop(sid, None)
        stream = self.active.pop(sid, None)
        if stream is not None:
            stream.stop()
        if task is not None:
            task.cancel()
            self.stopping.add(task)
            task.add_done_callback(self.stopping.discard)

    async def _start(self, sid: str) -> None:
        """(Re)start delivering ``sid`` from its connection's stored offset."""
        await self._stop(sid)
        self.pumps[sid] = asyncio.create_task(self._pump(sid), name=f"mux-{self.mux_id}-{sid}")

    async def _pump(self, sid: str) -> None:
        """Deliver ``sid`` until cancelled; a stream ended by a Redis error starts again."""
        while self.pumps.get(sid) is asyncio.current_task():
            try:
                if not await self._deliver(sid):
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.redis_errors.inc()
                log.exception("mux %s: session %s stream failed; retrying", self.mux_id, sid)
            await asyncio.sleep(1.0)

    async def _deliver(self, sid: str) -> bool:
        """One attachment of ``sid``'s connection; False when the session is not subscribed."""
        store, ttl = self.store, self.settings.connection_ttl
        mux = await store.muxes.get(self.mux_id, ttl)
        subs = mux.sessions if mux else {}
        if mux is None or sid not in subs or not self.visible(sid):
            return False
        cid = subs[sid][0]
        conn = await store.consumers.get(sid, cid)
        meta = await store.sessions.meta(sid)
        if meta is None:
            await store.sessions.ensure(sid)
            meta = await store.sessions.meta(sid)
        assert meta is not None
        if conn is None:
            # The connection expired: say so with a reset rather than skip silently.
            start = Start(meta.epoch, meta.seq, "connection_expired")
            await store.consumers.create(sid, cid, start.offset, "manual", ttl, mux.subject)
        else:
            start = resolve_stored(meta, conn.offset)
        subscribed = {"session_id": sid, "offset": start.offset}
        me = asyncio.current_task()
        frame = wire.sse_event(json.dumps(subscribed), event="subscribed").encode()
        await self.out.put((sid, me, frame))
        self.wake.set()
        stream = EventStream(
            self.deps,
            session_id=sid,
            start=start,
            consumer=Consumer(cid, "manual", self.token),
            mux=True,
        )
        if self.pumps.get(sid) is not me:
            return False  # replaced while starting
        self.active[sid] = stream
        async with contextlib.aclosing(stream.frames()) as chunks:
            async for chunk in chunks:
                await self.out.put((sid, me, chunk))
                self.wake.set()
                if self.pumps.get(sid) is not me:
                    return False  # replaced or stopped
        return True
