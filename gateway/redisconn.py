"""Redis clients: one bounded connection pool per process, or the embedded fakeredis.

Connections per process stay a small constant however many viewers there are: commands
share a blocking pool of ``redis_max_connections`` (callers wait for a free connection
rather than opening more), and the hub holds the single Pub/Sub connection from that pool.
"""

from __future__ import annotations

import os
import socket

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.settings import Settings

_EMBEDDED_SERVER: fakeredis.FakeServer | None = None


def connect(settings: Settings, role: str = "gateway") -> Redis:
    """A ``decode_responses`` client for ``settings.redis_url``, or the embedded fakeredis.

    Every connection is named ``<role>:<host>:<pid>`` (see ``CLIENT LIST``).
    """
    if not settings.redis_url:
        global _EMBEDDED_SERVER
        if _EMBEDDED_SERVER is None:
            _EMBEDDED_SERVER = fakeredis.FakeServer()
        return fakeredis.FakeAsyncRedis(server=_EMBEDDED_SERVER, decode_responses=True)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        decode_responses=True,
        client_name=f"{role}:{socket.gethostname()}:{os.getpid()}",
        health_check_interval=30,
        socket_keepalive=True,
    )
    return Redis(connection_pool=pool)
