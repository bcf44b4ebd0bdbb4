"""Commands: browser commands for the agent workers. Owns ``gw:{_global}:commands``, a
Stream the workers read as the consumer group ``workers`` (XREADGROUP); a command is acked
(XACK) once handled, and one left pending by a crashed worker is reclaimed (XAUTOCLAIM)."""

from __future__ import annotations

from typing import Any, cast

from redis.exceptions import ResponseError

from gateway.store.base import Family

COMMAND_GROUP = "workers"
COMMANDS_MAXLEN = 100_000


class Commands(Family):
    """Append, read, claim and ack worker commands."""

    @property
    def _key(self) -> str:
        return f"{self.global_tag}:commands"

    async def enqueue(self, command: dict[str, str]) -> str:
        """Append a command for the workers' consumer group; returns its stream id."""
        return cast(
            str,
            await self.redis.xadd(
                self._key, cast(Any, command), maxlen=COMMANDS_MAXLEN, approximate=True
            ),
        )

    async def ensure_group(self) -> None:
        """Create the workers' consumer group (idempotent)."""
        try:
            await self.redis.xgroup_create(self._key, COMMAND_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        """New commands for ``consumer`` (XREADGROUP ``>``); ack each with :meth:`ack`."""
        res = await self.redis.xreadgroup(
            COMMAND_GROUP, consumer, {self._key: ">"}, count=count, block=block_ms
        )
        return [(eid, fields) for _, entries in res or [] for eid, fields in entries]

    async def claim_stale(
        self, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[tuple[str, dict[str, str]]]:
        """Take over commands a crashed worker read but never acked (XAUTOCLAIM)."""
        res = await self.redis.xautoclaim(
            self._key, COMMAND_GROUP, consumer, min_idle_ms, "0-0", count=count
        )
        return [(eid, fields) for eid, fields in res[1] if fields]

    async def ack(self, command_id: str) -> None:
        """Acknowledge a handled command (XACK)."""
        await self.redis.xack(self._key, COMMAND_GROUP, command_id)
