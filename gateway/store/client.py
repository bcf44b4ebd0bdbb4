"""Redis clients: one bounded connection pool per process, or the embedded fakeredis.

Connections per process stay a small constant however many viewers there are: commands
share a blocking pool of ``redis_max_connections`` (callers wait for a free connection
rather than opening more), and the hub holds the single Pub/Sub connection from that pool.
A ``redis+cluster://h1:p1,h2:p2`` URL gives a Redis Cluster client instead
(:mod:`gateway.store.cluster`): ``redis_max_connections`` per node, plus one sharded Pub/Sub
connection per shard that has a subscribed channel.
"""

from __future__ import annotations

import os
import socket
from typing import Any, cast

import fakeredis
import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings
from gateway.store.cluster import cluster_from_url, is_cluster_url

_EMBEDDED_SERVER: fakeredis.FakeServer | None = None


class _HiredisPacking:
    """Commands packed by hiredis (C) instead of redis-py's asyncio packer (Python).

    redis-py's sync client packs with hiredis when it is installed; its asyncio connection
    does not. A publish (a script call of ~25 arguments) spent ~30 us packing, as much as
    the script's run in Redis; hiredis packs it in ~4 us. Same bytes, same errors: this is
    redis-py's own ``HiredisRespSerializer.pack``.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CLIENT LIST" and the like: one token per word
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class PackedConnection(_HiredisPacking, Connection):
    """A TCP connection that packs with hiredis."""


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection that packs with hiredis."""


class PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    """A Unix-socket connection that packs with hiredis."""


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixConnection,
}


def connect(settings: Settings, role: str = "gateway") -> Redis:
    """A ``decode_responses`` client for ``settings.redis_url``, or the embedded fakeredis.

    Every connection is named ``<role>:<host>:<pid>`` (see ``CLIENT LIST``).
    """
    name = f"{role}:{socket.gethostname()}:{os.getpid()}"
    if not settings.redis_url:
        global _EMBEDDED_SERVER
        if _EMBEDDED_SERVER is None:
            _EMBEDDED_SERVER = fakeredis.FakeServer()
        return fakeredis.FakeAsyncRedis(server=_EMBEDDED_SERVER, decode_responses=True)
    if is_cluster_url(settings.redis_url):
        cluster = cluster_from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            client_name=name,
            retry_budget_s=settings.redis_retry_budget,
        )
        # RedisCluster offers the command API of Redis (both mix in the same command
        # classes) but is not its subclass; callers that must tell them apart check
        # isinstance(client, RedisCluster).
        return cast(Redis, cluster)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        decode_responses=True,
        client_name=name,
        health_check_interval=30,
        socket_keepalive=True,
        # A pooled connection left dead by a Redis restart fails on first use: retry (up to
        # 3 times, on fresh connections) instead of surfacing the error; publishes are
        # idempotent, so a retried one is not stored twice.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    # The URL's scheme chose the class (TCP, TLS or Unix socket): keep it, packing with hiredis.
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)
