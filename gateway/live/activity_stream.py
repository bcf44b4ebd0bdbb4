"""Activity stream: the activity feed as SSE (``GET /v1/activity``, and inside the mux),
each entry once, only for sessions the viewer's token may see."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio

from gateway.core import frames
from gateway.live.deps import StreamDeps, drain_frame, expired, release_slot, until
from gateway.live.hub import Slot, Subscriber, wait_event

log = logging.getLogger(__name__)

Visible = Callable[[str], bool]


def everything(_: str) -> bool:
    """The visibility of the insecure anonymous viewer: every session."""
    return True


def _stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class ActivityCursor:
    """Turns activity-feed entries into SSE frames, once each, keeping only sessions
    ``visible`` to the viewer's token."""

    def __init__(self, after: str, visible: Visible = everything) -> None:
        try:
            self.last = _stream_id_key(after)
        except ValueError:
            self.last = (0, 0)
        self.visible = visible

    def frames(self, entries: list[frames.Activity]) -> list[str]:
        """SSE ``event: session`` frames for the entries newer than the cursor."""
        out = []
        for entry in entries:
            key = _stream_id_key(entry.id)
            if key > self.last:
                self.last = key
                if self.visible is not everything:
                    sid = json.loads(entry.payload).get("session_id", "")
                    if not self.visible(str(sid)):
                        continue
                out.append(frames.sse_event(entry.payload, id=entry.id, event="session"))
        return out


async def release(deps: StreamDeps, slot: Slot | None, sub: Subscriber) -> None:
    """Give back a stream's slot; a failure is logged (the entry ages out by itself)."""
    try:
        await release_slot(deps, slot, sub)
    except Exception as exc:
        deps.metrics.redis_errors.inc()
        log.warning("stream slot release failed: %r", exc)


async def activity_frames(
    deps: StreamDeps,
    after: str,
    visible: Visible = everything,
    slot: Slot | None = None,
    expires: float | None = None,
) -> AsyncIterator[bytes]:
    """The activity feed as SSE, after stream id ``after``, of the sessions ``visible`` to
    the viewer, until the token's ``expires`` (Unix seconds)."""
    activity, hub, settings = deps.store.activity, deps.hub, deps.settings
    inbox: list[frames.Activity] = []

    def on_frame(frame: frames.Frame) -> None:
        if isinstance(frame, frames.Activity):
            inbox.append(frame)

    sub = Subscriber(settings.queue_size, on_frame=on_frame)
    cursor = ActivityCursor(after, visible)
    gauge = deps.metrics.open_streams.labels("activity")
    gauge.inc()
    try:
        if slot is not None:
            await slot.hold(hub, sub)
        await hub.subscribe(activity.channel, sub)
        yield frames.sse_retry(settings.sse_retry_ms).encode()
        backlog = [frames.Activity(i, p) for i, p in await activity.read(after)]
        while True:
            out = cursor.frames(backlog + inbox)
            backlog, inbox[:] = [], []
            if out:
                yield "".join(out).encode()
            if sub.draining:
                yield drain_frame(settings)
                return
            if sub.kicked:
                yield frames.SUPERSEDED
                return
            if expired(expires):
                yield frames.TOKEN_EXPIRED
                return
            sub.wakeup.clear()
            if inbox or sub.draining or sub.kicked:
                continue
            woke = await wait_event(sub.wakeup, until(settings.heartbeat_interval, expires))
            if not woke and not expired(expires):
                yield frames.HEARTBEAT
    finally:
        hub.unsubscribe(activity.channel, sub)
        gauge.dec()
        with anyio.CancelScope(shield=True):
            await release(deps, slot, sub)
