"""Muxes: a browser's multiplexed stream in Redis. Owns ``gw:{m:<mux>}``, a hash of its
creator's ``sub``, ``c:<sid>`` → the session's connection id, ``a:<sid>`` → whether the mux
streams it, and ``token`` (its latest attachment); it expires when unused. Its control
channel ``gw:{m:<mux>}:ctl`` carries ``S``/``U`` (subscribe, unsubscribe) and ``K``
(take-over) frames to whichever replica holds the stream."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core import frames
from gateway.store.base import Family, resolved


@dataclass(frozen=True, slots=True)
class StoredMux:
    """A mux: its creator's ``subject`` and ``{session_id: (connection_id, subscribed)}``."""

    subject: str
    sessions: dict[str, tuple[str, bool]]


class Muxes(Family):
    """Create and read muxes, record their subscriptions, signal their live stream."""

    def key(self, mux_id: str) -> str:
        """The mux's hash (its own Cluster slot)."""
        return f"{self.prefix}:{{m:{mux_id}}}"

    def channel(self, mux_id: str) -> str:
        """The control channel of a mux's live stream."""
        return f"{self.key(mux_id)}:ctl"

    async def create(self, mux_id: str, ttl_s: float, subject: str = "") -> None:
        """Store a new, empty mux owned by the token ``subject``."""
        key = self.key(mux_id)
        await self.pipeline(
            lambda p: (
                p.hset(key, mapping={"created": "1", "sub": subject}),
                p.pexpire(key, int(ttl_s * 1000)),
            ),
            atomic=True,
        )

    async def get(self, mux_id: str, ttl_s: float) -> StoredMux | None:
        """The mux's owner and sessions, with a TTL refresh; None if unknown."""
        key = self.key(mux_id)
        raw, _ = await self.pipeline(
            lambda p: (p.hgetall(key), p.pexpire(key, int(ttl_s * 1000))), atomic=False
        )
        if not raw:
            return None
        sessions = {
            f[2:]: (cid, raw.get(f"a:{f[2:]}") == "1")
            for f, cid in raw.items()
            if f.startswith("c:")
        }
        return StoredMux(raw.get("sub", ""), sessions)

    async def set_session(
        self, mux_id: str, sid: str, cid: str, subscribed: bool, ttl_s: float
    ) -> None:
        """Record the session's connection id and whether the mux streams it."""
        key = self.key(mux_id)
        fields = {f"c:{sid}": cid, f"a:{sid}": "1" if subscribed else "0"}
        await self.pipeline(
            lambda p: (p.hset(key, mapping=fields), p.pexpire(key, int(ttl_s * 1000))),
            atomic=True,
        )

    async def set_token(self, mux_id: str, token: str) -> None:
        """Record the mux's latest attachment (checked by streams that start after it)."""
        await resolved(self.redis.hset(self.key(mux_id), "token", token))

    async def token(self, mux_id: str) -> str | None:
        """The token of the mux's latest attachment."""
        return await resolved(self.redis.hget(self.key(mux_id), "token"))

    async def subscribed(self, mux_id: str, sid: str) -> None:
        """Tell the mux's live stream to start streaming ``sid`` (an ``S`` frame)."""
        await self.notify(self.channel(mux_id), frames.encode(frames.Subscribe(sid)))

    async def unsubscribed(self, mux_id: str, sid: str) -> None:
        """Tell the mux's live stream to stop streaming ``sid`` (a ``U`` frame)."""
        await self.notify(self.channel(mux_id), frames.encode(frames.Unsubscribe(sid)))

    async def taken_over(self, mux_id: str, token: str) -> None:
        """End every live stream of the mux but the one holding ``token`` (a ``K`` frame)."""
        await self.notify(self.channel(mux_id), frames.encode(frames.TakeOver(mux_id, token)))
