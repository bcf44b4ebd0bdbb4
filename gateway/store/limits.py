"""Limits: what each token subject holds open and opens, across replicas. Owns, per subject
(``<h>``: a hash of the subject, so any subject is a safe Cluster hash tag):

- ``gw:{u:<h>}:slots``: sorted set of the subject's open streams (slot id → start ms);
- ``gw:{u:<h>}:rate:<minute>``: streams and connections opened that minute (expires);
- ``gw:{u:<h>}:ctl``: Pub/Sub channel of ``X`` frames ending an evicted slot's stream.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gateway.store.base import Family, Script


class Limits(Family):
    """Stream slots and open rates per token subject."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = Script(self.redis, "slots.lua")

    def _tag(self, subject: str) -> str:
        digest = hashlib.sha1(subject.encode()).hexdigest()[:16]
        return f"{self.prefix}:{{u:{digest}}}"

    def channel(self, subject: str) -> str:
        """The channel that ends a subject's evicted streams (``X`` frames)."""
        return f"{self._tag(subject)}:ctl"

    async def open_slot(self, subject: str, slot: str, limit: int, max_age_s: float) -> int:
        """Register a stream of ``subject``; evicts its oldest beyond ``limit``. Returns the
        number evicted (each is told on :meth:`channel`)."""
        res = await self._slots(
            keys=[f"{self._tag(subject)}:slots"],
            args=[
                "open",
                slot,
                limit,
                int(max_age_s * 1000),
                self.channel(subject),
                self.publish_command,
            ],
        )
        return int(res)

    async def close_slot(self, subject: str, slot: str) -> None:
        """Forget an ended stream of ``subject``."""
        await self._slots(keys=[f"{self._tag(subject)}:slots"], args=["close", slot, 0, 0, "", ""])

    async def hit_rate(self, subject: str, window_s: int = 60) -> tuple[int, int]:
        """Count one stream or connection opened by ``subject`` in the current fixed window.

        Returns (count in this window, seconds until the window ends).
        """
        now = int(time.time())
        window = now // window_s
        key = f"{self._tag(subject)}:rate:{window}"
        count, _ = await self.pipeline(
            lambda p: (p.incr(key), p.expire(key, window_s + 1)), atomic=True
        )
        return int(count), (window + 1) * window_s - now
