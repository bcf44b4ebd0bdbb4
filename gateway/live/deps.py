"""What every live SSE stream of a process shares: the store, the hub, settings and
metrics, and the small rules common to all streams (stream slots, token expiry, drain)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.core import frames
from gateway.live.hub import Hub, Slot, Subscriber
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import Store


@dataclass(frozen=True, slots=True)
class StreamDeps:
    """What every SSE stream of a process shares: the store, hub, settings and metrics."""

    store: Store
    hub: Hub
    settings: Settings
    metrics: Metrics


async def release_slot(deps: StreamDeps, slot: Slot | None, sub: Subscriber) -> None:
    """Give back a stream's slot among its subject's open streams (see :class:`Slot`)."""
    if slot is not None:
        slot.release(deps.hub, sub)
        await deps.store.limits.close_slot(slot.subject, slot.slot)


def seconds_left(expires: float | None) -> float | None:
    """Seconds until a token's ``exp`` (Unix seconds); None when it never expires."""
    return None if expires is None else expires - time.time()


def until(timeout: float, expires: float | None) -> float:
    """``timeout`` shortened so that a wait ends when the token expires."""
    left = seconds_left(expires)
    return timeout if left is None else max(0.0, min(timeout, left))


def expired(expires: float | None) -> bool:
    """Whether a token's ``exp`` has passed."""
    left = seconds_left(expires)
    return left is not None and left <= 0


def drain_frame(settings: Settings) -> bytes:
    """The last frame of a stream closed by a drain: reconnect soon, to another replica."""
    return frames.close_frame("draining", settings.drain_retry_ms)
