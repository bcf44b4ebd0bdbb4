"""Store base: what every key-family module shares: the client, the key prefix, Lua scripts
(EVALSHA with an EVAL fallback) and the retry policies of the publish path.

Lua sources live in ``gateway/store/lua/``; a line ``-- @include <file>`` inlines a shared
prelude (Redis runs each script alone), and a script may name ``TERMINAL`` in a line
``local TERMINAL = {}  -- @terminal``, which the loader fills from
:data:`gateway.core.events.TERMINAL_STATUS`, the one definition of the terminal types.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from gateway.core.events import TERMINAL_STATUS
from gateway.store.cluster import with_retry

T = TypeVar("T")
RAW: dict[str, Any] = {"NEVER_DECODE": []}  # redis-py option: do not decode the reply


async def resolved(value: Awaitable[T] | T) -> T:
    """Await a redis-py result; its asyncio stubs type results as ``Awaitable[T] | T``."""
    if inspect.isawaitable(value):
        return await value
    return value


def lua_source(name: str) -> str:
    """The text of ``lua/<name>``, with ``-- @include <file>`` lines replaced by that file
    and the ``@terminal`` table filled in."""
    lua = resources.files("gateway.store").joinpath("lua")
    source = lua.joinpath(name).read_text("utf-8")
    source = re.sub(
        r"^-- @include (\S+)$",
        lambda m: lua.joinpath(m.group(1)).read_text("utf-8"),
        source,
        flags=re.M,
    )
    table = ", ".join(f"['{t}'] = '{s}'" for t, s in sorted(TERMINAL_STATUS.items()))
    marker = "local TERMINAL = {}  -- @terminal"
    return source.replace(marker, f"local TERMINAL = {{{table}}}  -- @terminal")


class Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which also caches it) on NOSCRIPT.

    redis-py's ``register_script`` reloads with SCRIPT LOAD on the nodes it believes are
    masters; right after a failover that belief can be wrong and every call then fails with
    NOSCRIPT. EVAL is routed like EVALSHA, by the first key, so it always reaches the owner.
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self.redis = redis
        self.source = lua_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await resolved(self.redis.evalsha(self.sha, len(keys), *keys, *map(str, args)))
        except NoScriptError:
            return await resolved(self.redis.eval(self.source, len(keys), *keys, *map(str, args)))


class RawScript(Script):
    """A :class:`Script` whose reply is not decoded (it carries arbitrary bytes)."""

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        try:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self.sha, len(keys), *keys, *args, **RAW
            )
        except NoScriptError:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args, **RAW
            )


class Family:
    """Base of a key-family module: the client, the prefix, and how to reach Redis.

    ``redis`` must be created with ``decode_responses=True`` (``gateway.store.client``).
    On a Redis Cluster client, live frames use sharded Pub/Sub (``SPUBLISH``).
    """

    def __init__(self, redis: Redis, prefix: str = "gw", publish_retry_s: float = 10.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.publish_retry_s = publish_retry_s
        self.clustered = isinstance(redis, RedisCluster)
        self.publish_command = "SPUBLISH" if self.clustered else "PUBLISH"
        self._retry_budget = float(getattr(redis, "retry_budget_s", 0.0))

    @property
    def global_tag(self) -> str:
        """The prefix of the low-volume global keys (one Cluster slot)."""
        return f"{self.prefix}:{{_global}}"

    async def notify(self, channel: str, frame: str) -> None:
        """PUBLISH (SPUBLISH on a cluster) one frame."""
        await self.redis.execute_command(  # type: ignore[no-untyped-call]
            self.publish_command, channel, frame
        )

    async def retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a publish-path command through a Redis restart or failover.

        A cluster client already retries every command for its own budget
        (``GatewayCluster``); retrying again here would only stack the two budgets.
        """
        if self.clustered:
            return await op()
        return await with_retry(self.publish_retry_s, op)

    async def pipeline(self, build: Callable[[Pipeline], object], *, atomic: bool) -> list[Any]:
        """Queue commands with ``build`` and run them in one round trip per node.

        ``atomic`` wraps them in MULTI/EXEC (their keys must then share one hash slot).
        A failover-type error re-runs the whole pipeline on a cluster (see with_retry).
        """

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=atomic) as pipe:
                build(pipe)
                return await pipe.execute()

        if self._retry_budget:
            return await with_retry(self._retry_budget, run)
        return await run()
