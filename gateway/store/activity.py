"""Activity: the low-volume global feed of session status changes, and the index of sessions
by last activity. Owns ``gw:{_global}:sessions`` (sorted set: session id → last activity ms),
``gw:{_global}:activity`` (a capped Stream of changes) and its channel
``gw:{_global}:activity:live`` (``A`` frames, written by ``lua/activity.lua``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.store.base import Family, Script

ACTIVITY_MAXLEN = 2000


class Activity(Family):
    """Append to and read the activity feed; page the sessions index."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._activity = Script(self.redis, "activity.lua")

    @property
    def channel(self) -> str:
        """The Pub/Sub channel of the activity feed."""
        return f"{self.global_tag}:activity:live"

    @property
    def _sessions_key(self) -> str:
        return f"{self.global_tag}:sessions"

    @property
    def _feed_key(self) -> str:
        return f"{self.global_tag}:activity"

    async def record(self, sid: str, change: dict[str, Any]) -> None:
        """Index the session and append ``change`` to the activity feed."""
        payload = json.dumps({"session_id": sid, **change}, separators=(",", ":"))
        keys = [self._sessions_key, self._feed_key]
        args: list[str | int] = [
            sid,
            payload,
            self.channel,
            ACTIVITY_MAXLEN,
            self.publish_command,
        ]
        # Part of a publish: ride out the same outages (a repeat only repeats a feed entry).
        await self.retrying(lambda: self._activity(keys=keys, args=args))

    async def read(self, after_id: str, count: int = 500) -> list[tuple[str, str]]:
        """Feed entries after stream id ``after_id`` as (id, payload JSON)."""
        entries = await self.redis.xrange(self._feed_key, f"({after_id}", "+", count)
        return [(eid, f["p"]) for eid, f in entries]

    async def last_id(self) -> str:
        """The id of the newest feed entry, or ``0-0``."""
        entries = await self.redis.xrevrange(self._feed_key, "+", "-", count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def recent_sessions(
        self,
        limit: int,
        visible: Callable[[str], bool] | None = None,
        *,
        page: int = 500,
        scan_max: int = 50_000,
    ) -> list[str]:
        """The ``limit`` most recently active session ids ``visible`` accepts, newest first.

        The index is paged newest first and filtered by id, so a token that sees a few old
        sessions among many others still gets them; at most ``scan_max`` entries are read.
        (Expired sessions stay in the index until listed: their metadata is gone.)
        """
        ids: list[str] = []
        start = 0
        while len(ids) < limit and start < scan_max:
            chunk = await self.redis.zrevrange(self._sessions_key, start, start + page - 1)
            ids.extend(s for s in chunk if visible is None or visible(s))
            if len(chunk) < page:
                break
            start += page
        return ids[:limit]
