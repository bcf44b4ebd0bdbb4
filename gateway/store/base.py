"""Store base: what every key-family module shares: the client, the key prefix, Lua scripts
(EVALSHA with an EVAL fallback) and the retry policies of the publish path.

Lua sources live in ``gateway/store/lua/``; a line ``-- @include <file>`` inlines a shared
prelude (Redis runs each script alone), and a script may name ``TERMINAL`` in a line
``local TERMINAL = {}  -- @terminal``, which the loader fills from
:data:`gateway.core.events.TERMINAL_STATUS`, the one definition of the terminal types.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import weakref
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

    async def batched(self, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        """As a call, but sent in one pipeline with the other commands queued in this turn
        of the event loop (:class:`Batch`): concurrent requests share a round trip. Only for
        scripts whose reply is text (it is decoded)."""
        try:
            return await batch_of(self.redis).call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args
            )


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


class Batch:
    """Concurrent single commands coalesced into one pipeline per event-loop tick.

    Thousands of idle streams re-check their session's head and refresh their consumer's TTL
    on every heartbeat; one command each would need a pooled connection each, at the same
    instant. :meth:`call` queues the command and returns a future; every command queued
    during one turn of the loop goes out in one non-transactional pipeline (chunks of
    :data:`MAX` commands), so a round of heartbeats holds a few connections, not one per
    viewer. Replies (or per-command errors) resolve each caller's future.

    On a Redis Cluster the commands of one pipeline may live on different nodes, and a
    cluster pipeline re-routes and retries differently; there each call stays a plain
    command (correctness first).
    """

    MAX = 1000

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.clustered = isinstance(redis, RedisCluster)
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    def call(self, *args: Any) -> Awaitable[Any]:
        """Run one command (its reply decoded like ``execute_command``'s) with the others
        queued in this loop turn. Start it now, await it later: queue several, then await."""
        if self.clustered:
            return asyncio.ensure_future(self.redis.execute_command(*args))  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, fut))
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self.MAX):
            task = asyncio.create_task(self._run(pending[i : i + self.MAX]))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _run(self, items: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, _ in items:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                    fut.exception()  # retrieved: a caller that stopped at an earlier error
                    # (the touch queued before a failed head read) must not log it again
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(items, replies, strict=True):
            if fut.done():
                continue  # its caller went away
            if isinstance(reply, Exception):
                fut.set_exception(reply)
                fut.exception()
            else:
                fut.set_result(reply)


_BATCHES: weakref.WeakKeyDictionary[Redis, Batch] = weakref.WeakKeyDictionary()


def batch_of(redis: Redis) -> Batch:
    """The client's shared :class:`Batch` (one per client, so every family coalesces)."""
    b = _BATCHES.get(redis)
    if b is None:
        b = _BATCHES[redis] = Batch(redis)
    return b


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
        self.batch = batch_of(redis)

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
