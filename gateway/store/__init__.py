"""Store: every Redis key and operation of the gateway, one module per key family.

============  ===================================================================
module        owns
============  ===================================================================
``sessions``  a session's log, metadata, run states, lease, approvals, producers,
              snapshot and live channel (``gw:{sid}:*``, but consumers)
``consumers`` each viewer's committed offset (``gw:{sid}:conn:<cid>``)
``muxes``     a browser's multiplexed stream (``gw:{m:<mux>}``, ``…:ctl``)
``limits``    per-subject stream slots and open rates (``gw:{u:<h>}:*``)
``activity``  the activity feed and the sessions index (``gw:{_global}:activity``,
              ``…:sessions``)
``run_index`` sessions that may have an active run (``gw:{_global}:running``)
``commands``  the workers' command stream (``gw:{_global}:commands``)
``durable``   Durable Streams streams (``gw:{ds:<path>}:*``)
============  ===================================================================

``snapshots`` folds a log into its stored snapshot; ``client`` and ``cluster`` make the
Redis client; ``base`` loads the Lua scripts of ``lua/``. No module outside this package
names a key.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from gateway.store.activity import Activity
from gateway.store.commands import Commands
from gateway.store.consumers import Consumers
from gateway.store.durable import DurableStore
from gateway.store.limits import Limits
from gateway.store.muxes import Muxes
from gateway.store.run_index import RunIndex
from gateway.store.sessions import SessionLog, SessionMeta


class Store:
    """The gateway's Redis store: one object per key family, sharing one client.

    Args:
        redis: a ``decode_responses`` client (``gateway.store.client.connect``).
        prefix: the prefix of every key (``GATEWAY_KEY_PREFIX``).
        publish_retry_s: how long publish-path commands ride out a Redis restart.
    """

    def __init__(self, redis: Redis, prefix: str = "gw", publish_retry_s: float = 10.0) -> None:
        self.redis = redis
        self.prefix = prefix
        args = (redis, prefix, publish_retry_s)
        self.sessions = SessionLog(*args)
        self.consumers = Consumers(*args)
        self.muxes = Muxes(*args)
        self.limits = Limits(*args)
        self.activity = Activity(*args)
        self.runs = RunIndex(*args)
        self.commands = Commands(*args)
        self.durable = DurableStore(*args)

    async def list_sessions(
        self, limit: int = 200, visible: Callable[[str], bool] | None = None
    ) -> list[SessionMeta]:
        """The ``limit`` most recently active sessions ``visible`` accepts, newest first."""
        ids = await self.activity.recent_sessions(limit, visible)
        return [m for m in await self.sessions.metas(ids) if m is not None]


__all__ = ["SessionMeta", "Store"]
