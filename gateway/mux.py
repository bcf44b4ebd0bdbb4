"""Mux: one SSE stream per browser carrying every session its tabs view, plus the activity feed.

A mux is a set of subscriptions, each backed by an ordinary manual-commit connection (so each
session resumes from its own stored offset). The live stream runs one
:class:`~gateway.connections.EventStream` per subscribed session and merges their frames into
one response through a bounded queue: a browser that reads slowly blocks the per-session
streams, whose hub queues then overflow into catch-up reads, so memory stays bounded.
Subscription changes reach the stream on whichever replica holds it through the mux's control
channel; so does a take-over when the same mux attaches twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import anyio

from gateway import offsets
from gateway.connections import (
    SUPERSEDED,
    TOKEN_EXPIRED,
    Consumer,
    EventStream,
    OffsetAhead,
    Start,
    StreamDeps,
    drain_frame,
    release_slot,
    resolve,
    seconds_left,
    until,
)
from gateway.hub import Slot, Subscriber, wait_event

log = logging.getLogger(__name__)

OUT_QUEUE = 64  # frames (each up to one catch-up page) buffered between sessions and socket


def _stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


Visible = Callable[[str], bool]


def _everything(_: str) -> bool:
    return True


class ActivityCursor:
    """Turns activity-feed lines (``<stream id>\\t<json>``) into SSE frames, once each,
    keeping only sessions ``visible`` to the viewer's token."""

    def __init__(self, after: str, visible: Visible = _everything) -> None:
        try:
            self.last = _stream_id_key(after)
        except ValueError:
            self.last = (0, 0)
        self.visible = visible

    def frames(self, lines: list[str]) -> list[str]:
        """SSE ``event: session`` frames for the lines newer than the cursor."""
        out = []
        for line in lines:
            eid, _, payload = line.partition("\t")
            key = _stream_id_key(eid)
            if key > self.last:
                self.last = key
                if self.visible is not _everything:
                    sid = json.loads(payload).get("session_id", "")
                    if not self.visible(str(sid)):
                        continue
                out.append(f"id: {eid}\nevent: session\ndata: {payload}\n\n")
        return out


async def activity_frames(
    deps: StreamDeps,
    after: str,
    visible: Visible = _everything,
    slot: Slot | None = None,
    expires: float | None = None,
) -> AsyncIterator[bytes]:
    """The activity feed as SSE, after stream id ``after`` (``GET /v1/activity``), of the
    sessions ``visible`` to the viewer, until the token's ``expires`` (Unix seconds)."""
    streams, hub, settings, metrics = deps.streams, deps.hub, deps.settings, deps.metrics
    inbox: list[str] = []
    sub = Subscriber(settings.queue_size, on_raw=inbox.append)
    cursor = ActivityCursor(after, visible)
    gauge = metrics.open_streams.labels("activity")
    gauge.inc()
    try:
        if slot is not None:
            await slot.hold(hub, sub)
        await hub.subscribe(streams.activity_channel, sub)
        yield f"retry: {settings.sse_retry_ms}\n\n".encode()
        backlog = [f"{i}\t{p}" for i, p in await streams.read_activity(after)]
        while True:
            out = cursor.frames(backlog + inbox)
            backlog, inbox[:] = [], []
            if out:
                yield "".join(out).encode()
            if sub.draining:
                yield drain_frame(settings)
                return
            if sub.kicked:
                yield SUPERSEDED
                return
            left = seconds_left(expires)
            if left is not None and left <= 0:
                yield TOKEN_EXPIRED
                return
            sub.wakeup.clear()
            if inbox or sub.draining or sub.kicked:
                continue
            if not await wait_event(sub.wakeup, until(settings.heartbeat_interval, expires)):
                left = seconds_left(expires)
                if left is None or left > 0:
                    yield b": hb\n\n"
    finally:
        hub.unsubscribe(streams.activity_channel, sub)
        gauge.dec()
        with anyio.CancelScope(shield=True):
            await _release(deps, slot, sub)


async def _release(deps: StreamDeps, slot: Slot | None, sub: Subscriber) -> None:
    """Give back a stream's slot; a failure is logged (the entry ages out by itself)."""
    try:
        await release_slot(deps.streams, deps.hub, slot, sub)
    except Exception as exc:
        deps.metrics.redis_errors.inc()
        log.warning("stream slot release failed: %r", exc)


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
        visible: Visible = _everything,
        slot: Slot | None = None,
        expires: float | None = None,
    ) -> None:
        self.deps = deps
        self.expires = expires
        self.visible = visible
        self.slot = slot
        self.streams, self.hub = deps.streams, deps.hub
        self.settings, self.metrics = deps.settings, deps.metrics
        self.mux_id, self.token = mux_id, token
        # (session, producing pump, frame): frames of a replaced pump are dropped.
        self.out: asyncio.Queue[tuple[str, asyncio.Task[None] | None, bytes]] = asyncio.Queue(
            OUT_QUEUE
        )
        self.control: list[str] = []
        self.activity: list[str] = []
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.stopping: set[asyncio.Task[None]] = set()
        self.active: dict[str, EventStream] = {}  # the current session stream of each pump
        self.wake = asyncio.Event()

    def _on_control(self, raw: str) -> None:
        self.control.append(raw)
        self.wake.set()

    def _on_activity(self, raw: str) -> None:
        self.activity.append(raw)
        self.wake.set()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE frames until the client leaves or the mux is attached elsewhere."""
        ctl = Subscriber(self.settings.queue_size, self.mux_id, self.token, self._on_control)
        act = Subscriber(self.settings.queue_size, on_raw=self._on_activity)
        ctl_channel = self.streams.mux_channel(self.mux_id)
        gauge = self.metrics.open_streams.labels("mux")
        gauge.inc()
        try:
            # Wake the merge loop on take-over too, not only on control frames.
            ctl.wakeup = act.wakeup = self.wake
            if self.slot is not None:
                await self.slot.hold(self.hub, ctl)  # an eviction kicks ctl: superseded
            await self.hub.subscribe(ctl_channel, ctl)
            # A newer attach may have announced itself before this stream listened.
            if await self.streams.mux_token(self.mux_id) != self.token:
                ctl.kick()
            await self.hub.subscribe(self.streams.activity_channel, act)
            cursor = ActivityCursor(await self.streams.last_activity_id(), self.visible)
            yield f"retry: {self.settings.sse_retry_ms}\n\n".encode()
            mux = await self.streams.get_mux(self.mux_id, self.settings.connection_ttl)
            for sid, (_, subscribed) in (mux.sessions if mux else {}).items():
                if subscribed and self.visible(sid):
                    await self._start(sid)
            while True:
                self.wake.clear()
                if ctl.kicked:
                    yield SUPERSEDED
                    return
                if ctl.draining:
                    yield drain_frame(self.settings)
                    return
                left = seconds_left(self.expires)
                if left is not None and left <= 0:
                    yield TOKEN_EXPIRED
                    return
                chunks = [f.encode() for f in cursor.frames(self.activity)]
                self.activity.clear()
                control, self.control = self.control, []
                for raw in control:
                    chunks.extend(await self._apply(raw))
                while not self.out.empty():
                    sid, pump, frame = self.out.get_nowait()
                    if self.pumps.get(sid) is pump:
                        chunks.append(frame)
                if chunks:
                    yield b"".join(chunks)
                    continue
                # Every producer sets the wake event after queueing, so it is enough.
                wait = until(self.settings.heartbeat_interval, self.expires)
                if not await wait_event(self.wake, wait):
                    left = seconds_left(self.expires)
                    if left is not None and left <= 0:
                        continue  # the loop's top ends the stream
                    self.metrics.heartbeats.inc()
                    await self.streams.get_mux(self.mux_id, self.settings.connection_ttl)
                    yield b": hb\n\n"
        finally:
            self.hub.unsubscribe(ctl_channel, ctl)
            self.hub.unsubscribe(self.streams.activity_channel, act)
            gauge.dec()
            # The response is being cancelled (client gone): shield the bounded teardown.
            with anyio.CancelScope(shield=True):
                await self._stop_all()
                await _release(self.deps, self.slot, ctl)

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

    async def _apply(self, raw: str) -> list[bytes]:
        kind, _, sid = raw.partition("\t")
        if kind == "S":
            await self._start(sid)
            return []
        if kind == "D" and sid in self.pumps:
            await self._stop(sid)
            return [f"event: unsubscribed\ndata: {json.dumps({'session_id': sid})}\n\n".encode()]
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
        mux = await self.streams.get_mux(self.mux_id, self.settings.connection_ttl)
        subs = mux.sessions if mux else {}
        if sid not in subs or not self.visible(sid):
            return False
        cid = subs[sid][0]
        conn = await self.streams.get_connection(sid, cid)
        meta = await self.streams.meta(sid)
        if meta is None:
            await self.streams.ensure_session(sid)
            meta = await self.streams.meta(sid)
        assert meta is not None
        head = Start(meta.epoch, meta.seq)
        if conn is None:
            # The connection expired: say so with a reset rather than skip silently.
            start = Start(head.epoch, head.after_seq, "connection_expired")
            await self.streams.create_connection(
                sid,
                cid,
                offsets.format_offset(head.epoch, head.after_seq),
                "manual",
                self.settings.connection_ttl,
            )
        else:
            try:
                start = resolve(meta, conn.offset)
            except OffsetAhead:
                start = Start(head.epoch, head.after_seq, "offset_ahead")
        subscribed = {
            "session_id": sid,
            "offset": offsets.format_offset(start.epoch, start.after_seq),
        }
        me = asyncio.current_task()
        frame = f"event: subscribed\ndata: {json.dumps(subscribed)}\n\n".encode()
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
        async with contextlib.aclosing(stream.frames()) as frames:
            async for chunk in frames:
                await self.out.put((sid, me, chunk))
                self.wake.set()
                if self.pumps.get(sid) is not me:
                    return False  # replaced or stopped
        return True
