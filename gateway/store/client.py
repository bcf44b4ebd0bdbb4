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
from typing import cast

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings
from gateway.store.cluster import cluster_from_url, is_cluster_url
from gateway.store.packing import packed

_EMBEDDED_SERVER: fakeredis.FakeServer | None = None


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
    pool.connection_class = packed(pool.connection_class)
    return Redis(connection_pool=pool)
