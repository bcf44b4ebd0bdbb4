"""Run index: the sessions that may have an active run, read by the lease reapers. Owns
``gw:{_global}:running`` (sorted set: session id → a unique score) and its counter
``gw:{_global}:running:n``. It is a superset: a session is marked before its run starts and
forgotten only by a reaper that saw it idle and whose reading is still current
(``lua/running.lua``), so no running session is ever missing from it."""

from __future__ import annotations

from typing import Any

from gateway.store.base import Family, Script


class RunIndex(Family):
    """Mark, list and forget sessions that may have an active run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running = Script(self.redis, "running.lua")

    @property
    def _keys(self) -> list[str]:
        key = f"{self.global_tag}:running"
        return [key, f"{key}:n"]

    async def mark(self, sid: str) -> None:
        """Add ``sid``; called before a ``run.started`` is published."""
        await self.retrying(lambda: self._running(keys=self._keys, args=["mark", sid, 0]))

    async def sessions(self, limit: int = 10_000) -> list[tuple[str, int]]:
        """Sessions that may have an active run, as (session id, index score)."""
        pairs = await self.redis.zrange(self._keys[0], 0, limit - 1, withscores=True)
        return [(str(sid), int(score)) for sid, score in pairs]

    async def forget(self, sid: str, score: int) -> bool:
        """Drop ``sid`` unless it was marked again since it scored ``score``."""
        return bool(await self._running(keys=self._keys, args=["forget", sid, score]))
