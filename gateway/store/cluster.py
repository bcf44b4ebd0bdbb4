"""Cluster: running on Redis Cluster with redis-py's asyncio client.

What redis-py 6.x lacks and this module adds (findings in ``docs/design/redis-cluster.md``):

- ``redis+cluster://h1:p1,h2:p2`` URLs (``RedisCluster.from_url`` takes one host);
- callers that *wait* for a node connection instead of failing with ``MaxConnectionsError``
  (:class:`BoundedClusterNode`), so connections per node stay at ``max_connections``;
- an application-level retry with a delay around every command, so a failover (3-5 s of
  ``CLUSTERDOWN`` / refused connections) is a pause for callers, not an error
  (:class:`GatewayCluster`);
- sharded Pub/Sub (SSUBSCRIBE) on one connection per shard, re-subscribing after MOVED,
  failover and lost connections (``gateway.store.sharded_pubsub``).

Scripts use EVALSHA with an EVAL fallback (``store.base.Script``), which survives the script
cache of a newly promoted master being empty.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio.cluster as _rc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.packing import packed

log = logging.getLogger(__name__)

T = TypeVar("T")

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}

# Errors a failover or resharding produces that are worth retrying after a pause: the
# command did not run (refused, CLUSTERDOWN, TRYAGAIN, a blocked read released by a role
# change) or its connection broke.
_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    MovedError,
    SlotNotCoveredError,
    OSError,
)
_RETRY_REPLIES = ("UNBLOCKED", "LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN")
# Raised by redis-py while it rebuilds its slot map mid-failover (no node answered, or the
# answers did not cover every slot yet).
_RETRY_CLIENT_ERRORS = ("Redis Cluster cannot be connected", "All slots are not covered")


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` / ``rediss+cluster://``)."""
    return bool(url) and urlsplit(url or "").scheme in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> dict[str, Any]:
    """Parse ``redis+cluster://[user[:password]@]h1:p1,h2:p2[,[::1]:p3][/0]``.

    Returns ``{"startup_nodes": [(host, port), ...], "ssl": bool, "username", "password"}``.

    Raises:
        ValueError: another scheme, no host, a database other than 0, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (redis+cluster://h:p,h:p): {url!r}")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    nodes = [_host_port(h) for h in netloc.split(",") if h.strip()]
    if not nodes:
        raise ValueError(f"no host in {url!r}")
    if parts.path.lstrip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    if parts.query and dict(parse_qsl(parts.query)):
        raise ValueError(f"unknown options in {url!r}: {parts.query}")
    return {
        "startup_nodes": nodes,
        "ssl": CLUSTER_SCHEMES[parts.scheme],
        "username": username,
        "password": password,
    }


def _host_port(item: str, default_port: int = 6379) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = item.rpartition(":")
    return (host, int(port)) if sep else (item, default_port)


class BoundedClusterNode(ClusterNode):
    """A cluster node whose callers wait for one of its ``max_connections`` connections.

    redis-py's own node pool raises ``MaxConnectionsError`` when exhausted (and inside a
    pipeline that closes every connection); a semaphore in front of it turns the bound into
    backpressure, as ``BlockingConnectionPool`` does on a single node.
    """

    __slots__ = ("_gate",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(min(self.max_connections, 1 << 16))
        self.connection_class = packed(self.connection_class)  # type: ignore[assignment]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._gate:
            return await super().execute_command(*args, **kwargs)

    async def execute_pipeline(self, commands: Any) -> bool:
        async with self._gate:
            return await super().execute_pipeline(commands)


# NodesManager builds nodes through the module-level name: every RedisCluster of this
# process gets bounded nodes. Tied to redis-py internals, hence the version range pinned in
# pyproject.toml.
_rc.ClusterNode = BoundedClusterNode  # type: ignore[misc]


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RETRY_ERRORS):
        return True
    if isinstance(exc, RedisClusterException):
        return str(exc).startswith(_RETRY_CLIENT_ERRORS)
    return isinstance(exc, ResponseError) and str(exc).startswith(_RETRY_REPLIES)


async def with_retry(budget_s: float, op: Callable[[], Awaitable[T]]) -> T:
    """Run ``op`` again after a short pause while it fails with a failover-type error.

    Gives up (re-raising the last error) once ``budget_s`` seconds have passed. Pauses grow
    from 50 ms to 500 ms with jitter, so a promotion of 3-5 s is spanned by a few attempts.
    """
    deadline = time.monotonic() + budget_s
    pause = 0.05
    while True:
        try:
            return await op()
        except Exception as exc:
            if not _retryable(exc) or time.monotonic() + pause > deadline:
                raise
            log.info("cluster: %r; retrying in %.2fs", exc, pause)
        await asyncio.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.5)


class GatewayCluster(RedisCluster):
    """``RedisCluster`` whose commands ride out a failover (see :func:`with_retry`).

    Retried commands must be safe to repeat: reads, idempotent writes, and scripts that
    de-duplicate themselves (the publish script does, by producer id and sequence).
    """

    retry_budget_s: float = 10.0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await with_retry(self.retry_budget_s, lambda: run(*args, **kwargs))


COMMAND_TIMEOUT_S = 15.0


def cluster_from_url(
    url: str, *, max_connections: int, client_name: str, retry_budget_s: float = 10.0
) -> GatewayCluster:
    """A ``decode_responses`` cluster client for a ``redis+cluster://`` URL.

    ``max_connections`` bounds command connections per node; callers wait for a free one.
    """
    cfg = parse_cluster_url(url)
    nodes = [ClusterNode(h, p) for h, p in cfg["startup_nodes"]]
    extra: dict[str, Any] = {}
    if cfg["ssl"]:
        extra["ssl"] = True
    if cfg["username"]:
        extra["username"] = cfg["username"]
    if cfg["password"]:
        extra["password"] = cfg["password"]
    client = GatewayCluster(
        startup_nodes=nodes,
        decode_responses=True,
        max_connections=max_connections,
        client_name=client_name,
        socket_connect_timeout=2.0,
        # No command waits forever on a reply that never comes (a frozen node, a half-open
        # socket): it fails with TimeoutError after this, which with_retry retries. Nothing
        # on the command connections blocks server-side for longer (worker XREADGROUP
        # blocks 1 s; Pub/Sub runs on its own connections with its own timeouts).
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_keepalive=True,
        **extra,
    )
    client.retry_budget_s = retry_budget_s
    return client
