"""Consumers: each viewer's committed offset in Redis. Owns ``gw:{sid}:conn:<cid>``, a hash
of the connection's ``offset``, ``commit`` mode (``auto``/``manual``), the ``token`` of its
latest attachment and the ``sub`` (token subject) that created it; it expires when unused.
Take-overs of a connection go out as ``K`` frames on the session's live channel."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.client import Pipeline

from gateway.core import frames
from gateway.store.base import Family, Script, resolved


@dataclass(frozen=True, slots=True)
class StoredConnection:
    """A consumer's stored state: committed ``offset``, ``commit`` mode, attach ``token``,
    and the token ``subject`` that created it ('' when created without authentication)."""

    connection_id: str
    offset: str
    commit: str
    token: str
    subject: str = ""


def _conn(cid: str, raw: dict[str, str]) -> StoredConnection:
    return StoredConnection(
        cid, raw["offset"], raw.get("commit", "auto"), raw.get("token", ""), raw.get("sub", "")
    )


class Consumers(Family):
    """Create, read, commit and forget consumers (connections)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._commit = Script(self.redis, "commit.lua")

    def key(self, sid: str, cid: str) -> str:
        """The consumer's hash (in its session's Cluster slot)."""
        return f"{self.prefix}:{{{sid}}}:conn:{cid}"

    async def create(
        self, sid: str, cid: str, offset: str, commit: str, ttl_s: float, subject: str = ""
    ) -> None:
        """Store a new consumer with its starting offset, TTL and owning token subject."""
        key = self.key(sid, cid)
        fields = {"offset": offset, "commit": commit, "token": "", "sub": subject}
        await self.pipeline(
            lambda p: (p.hset(key, mapping=fields), p.pexpire(key, int(ttl_s * 1000))),
            atomic=True,
        )

    async def get(self, sid: str, cid: str) -> StoredConnection | None:
        """The consumer's stored state, or None once expired or deleted."""
        raw = await resolved(self.redis.hgetall(self.key(sid, cid)))
        return _conn(cid, raw) if raw else None

    async def get_many(self, pairs: Sequence[tuple[str, str]]) -> list[StoredConnection | None]:
        """Several consumers' stored state in one round trip: (session_id, connection_id)."""

        def build(pipe: Pipeline) -> None:
            for sid, cid in pairs:
                pipe.hgetall(self.key(sid, cid))

        replies = await self.pipeline(build, atomic=False)
        return [
            _conn(cid, raw) if raw else None for (_, cid), raw in zip(pairs, replies, strict=True)
        ]

    async def commit(
        self,
        sid: str,
        cid: str,
        offset: str,
        ttl_s: float,
        *,
        forward_only: bool,
        token: str = "",
        owner: str = "*",
    ) -> str | None:
        """Store ``offset`` for the consumer and refresh its TTL.

        ``forward_only`` ignores an offset older than the stored one (late acks);
        a non-empty ``token`` records the current attachment; ``owner`` (a token subject, or
        ``*`` for no check) must have created the consumer. Returns the stored offset, or
        None if the consumer no longer exists or belongs to another subject (it is never
        resurrected).
        """
        res = await self._commit(
            keys=[self.key(sid, cid)],
            args=[offset, int(ttl_s * 1000), "forward" if forward_only else "set", token, owner],
        )
        return cast(str | None, res) if res else None

    async def token(self, sid: str, cid: str) -> str | None:
        """The token of the consumer's latest attachment (None once it is gone)."""
        # Batched: checked by every stream that attaches, so bursts of attaches read together.
        return await self.batch.call("HGET", self.key(sid, cid), "token")  # type: ignore[no-any-return]

    def touch(self, sid: str, cid: str, ttl_s: float) -> Awaitable[Any]:
        """Refresh the consumer's TTL while its stream is attached. Batched with the other
        streams' heartbeat commands (store.base.Batch): sent once awaited or at the loop's
        next turn, whichever comes first, so a caller may queue more before awaiting."""
        return self.batch.call("PEXPIRE", self.key(sid, cid), int(ttl_s * 1000))

    async def delete(self, sid: str, cid: str) -> bool:
        """Delete the consumer; True if it existed."""
        return bool(await self.redis.delete(self.key(sid, cid)))

    async def announce_attach(self, channel: str, cid: str, token: str) -> None:
        """Tell every replica's streams of ``cid`` on the session's live ``channel`` but the
        one holding ``token`` to end (a ``K`` frame)."""
        await self.notify(channel, frames.encode(frames.TakeOver(cid, token)))
