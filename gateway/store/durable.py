"""Durable streams store: the Redis side of the Durable Streams endpoint (``gateway.durable``).

Owns, per stream path ``p`` (``{``, ``}`` and ``%`` percent-encoded inside the hash tag):

============================  ============================================================
``gw:{ds:<p>}:m``             metadata hash: generation, content type, tail (message number
                              ``n``, byte position ``b``), closed, TTL or Expires-At,
                              soft-deleted, fork base and ancestry
``gw:{ds:<p>}:l``             its messages, a Stream: entry ID ``<n>-0``, fields ``d`` (the
                              bytes) and ``b`` (the byte position after it)
``gw:{ds:<p>}:p``             hash: producer id → ``epoch seq updated_ms``
``gw:{ds:<p>}:f``             set: paths of its forks (the reference count: while not empty
                              its keys do not expire and its log stays readable)
``gw:{ds:<p>}:live``          Pub/Sub channel: ``D`` frames (append, close, deletion)
============================  ============================================================

Scripts are binary-safe: replies are read as bytes (message data is arbitrary bytes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.base import RAW, Family, RawScript

DS_ZERO_OFFSET = "0000000000000000_0000000000000000"


def ds_offset(n: int, b: int) -> str:
    """A Durable Streams offset: message number and byte position, 16 digits each."""
    return f"{n:016d}_{b:016d}"


def _ds_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class DsMessage:
    """One stored message: number ``n``, byte position ``b`` after it, and its bytes."""

    n: int
    b: int
    data: bytes

    @property
    def offset(self) -> str:
        """The offset just after this message."""
        return ds_offset(self.n, self.b)


@dataclass(frozen=True, slots=True)
class DsMeta:
    """A stream's metadata (see the ``gw:{ds:<path>}:m`` fields in the module docstring)."""

    gen: str
    content_type: str
    normalized_type: str
    n: int
    b: int
    closed: bool
    ttl: int | None
    expires_at: str | None
    fork_n: int
    ancestry: tuple[tuple[str, int, int], ...]

    @property
    def tail(self) -> str:
        """The offset after the last message (where a reader is up to date)."""
        return ds_offset(self.n, self.b)

    @classmethod
    def parse(cls, flat: Sequence[Any]) -> DsMeta:
        """From a flat HGETALL reply (bytes or text)."""
        raw = {_ds_str(flat[i]): _ds_str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        anc = json.loads(raw["anc"]) if raw.get("anc") else []
        return cls(
            gen=raw["gen"],
            content_type=raw.get("ct", ""),
            normalized_type=raw.get("nct", ""),
            n=int(raw.get("n", 0)),
            b=int(raw.get("b", 0)),
            closed=raw.get("cl") == "1",
            ttl=int(raw["ttl"]) if raw.get("ttl") else None,
            expires_at=raw.get("ea") or None,
            fork_n=int(raw.get("fo_n", 0)),
            ancestry=tuple((str(p), int(lo), int(hi)) for p, lo, hi in anc),
        )


def _ds_messages(flat: Sequence[Any]) -> list[DsMessage]:
    return [
        DsMessage(int(flat[i]), int(flat[i + 1]), bytes(flat[i + 2]))
        for i in range(0, len(flat) - 2, 3)
    ]


@dataclass(frozen=True, slots=True)
class DsAppendResult:
    """What the append script answered: ``status`` and the tail after it (see ds_append.lua)."""

    status: str
    n: int
    b: int
    closed: bool
    x: int
    y: int

    @property
    def tail(self) -> str:
        """The stream's tail offset after this request."""
        return ds_offset(self.n, self.b)


class DurableStore(Family):
    """Every Redis operation of the Durable Streams endpoint (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create = RawScript(self.redis, "ds_create.lua")
        self._append = RawScript(self.redis, "ds_append.lua")
        self._read = RawScript(self.redis, "ds_read.lua")
        self._range = RawScript(self.redis, "ds_range.lua")
        self._ref = RawScript(self.redis, "ds_ref.lua")
        self._unref = RawScript(self.redis, "ds_unref.lua")
        self._delete = RawScript(self.redis, "ds_delete.lua")

    def _tag(self, path: str) -> str:
        enc = path.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        return f"{self.prefix}:{{ds:{enc}}}"

    def _keys(self, path: str) -> list[str]:
        tag = self._tag(path)
        return [f"{tag}:m", f"{tag}:l", f"{tag}:p", f"{tag}:f"]

    def channel(self, path: str) -> str:
        """The Pub/Sub channel announcing the stream's appends, closes and deletion."""
        return f"{self._tag(path)}:live"

    async def create(
        self, path: str, args: Sequence[str | bytes]
    ) -> tuple[str, int, int, bool, str]:
        """Run ds_create.lua with ``args`` (ARGV 1-19): (status, n, b, closed, content type)."""
        res = await self._create(self._keys(path), args)
        status, closed, ct = _ds_str(res[0]), _ds_str(res[3]) == "1", _ds_str(res[4])
        return status, int(res[1]), int(res[2]), closed, ct

    async def append(self, path: str, args: Sequence[str | bytes]) -> DsAppendResult:
        """Run ds_append.lua with ``args`` (ARGV 1-9 and 12-13; the channel is added)."""
        full = [*args[:9], self.channel(path), self.publish_command, *args[9:]]
        # Concurrent appends (many writers) share one pipeline round trip; the reply is text.
        res = await self._append.batched(self._keys(path), full)
        return DsAppendResult(
            _ds_str(res[0]),
            int(res[1]),
            int(res[2]),
            _ds_str(res[3]) == "1",
            int(res[4]),
            int(res[5]),
        )

    async def read(
        self, path: str, mode: str, after: int = 0, count: int = 0, max_bytes: int = 0
    ) -> tuple[str, DsMeta | None, list[DsMessage]]:
        """``head`` / ``tail`` / ``read`` (see ds_read.lua): (status, meta, own messages)."""
        res = await self._read(self._keys(path), [mode, after, count, max_bytes])
        status = _ds_str(res[0])
        if status != "ok":
            return status, None, []
        return status, DsMeta.parse(res[1]), _ds_messages(res[2])

    async def range(
        self, path: str, after: int, upto: int, count: int, max_bytes: int
    ) -> list[DsMessage]:
        """Messages ``after < n <= upto`` of one log (an ancestor's, for a fork's reads)."""
        res = await self._range([self._keys(path)[1]], [after, upto, count, max_bytes])
        return _ds_messages(res)

    async def ref(
        self, source: str, child: str, normalized_type: str, fork_n: int | None, fork_b: int
    ) -> tuple[str, DsMeta | None, int, int]:
        """Take ``child``'s reference on ``source``: (status, source meta, fork n, fork b)."""
        res = await self._ref(
            self._keys(source),
            [child, normalized_type, "" if fork_n is None else fork_n, fork_b],
        )
        status = _ds_str(res[0])
        if status != "ok":
            return status, None, 0, 0
        return status, DsMeta.parse(res[1]), int(res[2]), int(res[3])

    async def release(self, source: str, child: str) -> None:
        """Drop ``child``'s reference on ``source``, deleting soft-deleted sources up the
        chain whose last fork went (cascade)."""
        while source:
            res = await self._unref(
                self._keys(source), [child, self.channel(source), self.publish_command]
            )
            if _ds_str(res[0]) != "deleted":
                return
            child, source = source, _ds_str(res[1])

    async def delete(self, path: str) -> str:
        """Delete the stream (ds_delete.lua) and release its source: the status."""
        res = await self._delete(self._keys(path), [self.channel(path), self.publish_command])
        status, source = _ds_str(res[0]), _ds_str(res[1])
        if source:
            await self.release(source, path)
        return status

    async def forks(self, path: str) -> list[str]:
        """The paths holding a reference on this stream."""
        members = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "SMEMBERS", self._keys(path)[3], **RAW
        )
        return [_ds_str(m) for m in members]

    async def exists(self, path: str) -> bool:
        """Whether the stream's metadata exists (expired keys count as gone)."""
        return bool(await self.redis.exists(self._keys(path)[0]))

    async def collect(self, path: str) -> None:
        """Drop references held by forks that no longer exist (they expired: key expiry
        tells nobody), so a soft-deleted or expired source can finally go."""
        for child in await self.forks(path):
            if not await self.exists(child):
                await self.release(path, child)
