"""Runtime: what every request handler of a process shares, built once in the lifespan, and
the per-subject admission rules (open rate, stream slots) that new streams pass."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from gateway.agent.publisher import Publisher
from gateway.api.auth import Authenticator, Principal
from gateway.core.errors import GatewayError
from gateway.live.deps import StreamDeps
from gateway.live.hub import Hub, Slot
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.sessions import SessionMeta

log = logging.getLogger(__name__)

SLOT_MAX_AGE_S = 86_400.0  # a slot left by a crashed replica stops counting after a day


@dataclass
class Runtime:
    """Everything a request handler needs, built once per process in the lifespan."""

    settings: Settings
    store: Store
    publisher: Publisher
    hub: Hub
    metrics: Metrics
    auth: Authenticator
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def draining(self) -> bool:
        """Whether a drain began (the hub holds the flag: it also drains late streams)."""
        return self.hub.draining

    @property
    def deps(self) -> StreamDeps:
        """What the SSE streams of this process share."""
        return StreamDeps(self.store, self.hub, self.settings, self.metrics)

    def begin_drain(self) -> None:
        """Start a graceful shutdown (SIGTERM): readiness fails, new streams are refused
        with 503 ``draining``, and open streams end with a short ``retry`` hint so their
        viewers resume from their stored offsets on another replica."""
        if self.draining:
            return
        log.warning("draining: closing %d channel(s) of open streams", self.hub.channel_count)
        self.hub.drain(self.settings.drain_spread)

    def refuse_if_draining(self) -> None:
        """Raises GatewayError 503 ``draining`` (with ``Retry-After``) once a drain began."""
        if self.draining:
            raise GatewayError(
                503,
                "draining",
                "this replica is shutting down; retry (another replica will answer)",
                {"Retry-After": "1"},
            )

    def owner(self, who: Principal) -> str:
        """What is stored as a connection's or mux's owner ('' when tokens are not checked)."""
        return who.subject if self.auth.configured else ""

    async def count_open(self, who: Principal) -> None:
        """Count a stream or connection opened by ``who``; 429 ``rate_limited`` past the limit.

        Only with tokens: without them every caller is the one anonymous subject.
        """
        if not self.auth.configured:
            return
        count, retry_after = await self.store.limits.hit_rate(who.subject)
        if count > self.settings.connection_rate:
            raise GatewayError(
                429,
                "rate_limited",
                f"{who.subject!r} opened more than {self.settings.connection_rate} streams or "
                "connections this minute",
                {"Retry-After": str(max(1, retry_after))},
            )

    async def admit(self, who: Principal) -> Slot | None:
        """Rate-check a new stream of ``who`` and take one of its stream slots: past
        ``max_streams_per_subject`` its oldest stream ends with ``event: close`` superseded."""
        if not self.auth.configured:
            return None
        await self.count_open(who)
        limits = self.store.limits
        slot = Slot(who.subject, limits.channel(who.subject), secrets.token_hex(8))
        await limits.open_slot(
            who.subject, slot.slot, self.settings.max_streams_per_subject, SLOT_MAX_AGE_S
        )
        return slot

    async def meta_or_create(self, sid: str) -> SessionMeta:
        """The session's metadata, creating the session when it is unknown."""
        meta = await self.store.sessions.meta(sid)
        if meta is None:
            await self.store.sessions.ensure(sid)
            meta = await self.store.sessions.meta(sid)
        assert meta is not None
        return meta
