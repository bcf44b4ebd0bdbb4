"""Command packing: redis-py connection classes that pack commands with hiredis (C).

redis-py's sync client packs with hiredis when it is installed; its asyncio connections pack
in Python. A publish (a script call of ~25 arguments) spent ~30 us packing, as long as the
script runs in Redis; hiredis packs it in ~4 us. The bytes and the errors are redis-py's own
(``redis.connection.HiredisRespSerializer.pack``); tests/test_units.py checks they agree.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError


class _HiredisPacking:
    """Mixed into a connection class: ``pack_command`` by hiredis."""

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


def packed(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """The hiredis-packing variant of a redis-py connection class (``cls`` itself when it
    has none: a class of another library or already packed)."""
    return _PACKED.get(cls, cls)
