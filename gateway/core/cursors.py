"""Cursors: where a stream starts, from a cursor a client sent or a consumer stored.

A cursor is ``start``, ``run`` (the current run's first event), ``live`` (the head) or an
offset. The rules (docs/api.md, "Offsets"): a malformed cursor is ``400 invalid_offset``, an
offset of this epoch beyond the head ``409 offset_ahead``, an offset of another epoch or older
than the first retained event starts at the head with a ``reset`` naming why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.core import offsets
from gateway.core.errors import GatewayError


class LogPosition(Protocol):
    """What cursor resolution needs to know of a session's log."""

    @property
    def epoch(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def run_first_seq(self) -> int: ...


class OffsetAhead(GatewayError):
    """A cursor of the current epoch beyond the log's last event (``409 offset_ahead``)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "offset_ahead", message)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream begins: deliver events after ``after_seq`` of ``epoch``.

    ``reset`` names why the requested cursor could not be honoured (``epoch_changed``,
    ``offset_trimmed``, ``offset_ahead``, ``connection_expired``); the stream then starts
    at the head with a ``reset`` frame.
    """

    epoch: str
    after_seq: int
    reset: str | None = None

    @property
    def offset(self) -> str:
        """The offset the stream starts after."""
        return offsets.format_offset(self.epoch, self.after_seq)


def resolve(log: LogPosition, cursor: str) -> Start:
    """Turn a cursor (``start``, ``run``, ``live`` or an offset) into a :class:`Start`.

    Raises:
        offsets.InvalidOffset: malformed cursor.
        OffsetAhead: an offset of this epoch beyond the last event.
    """
    if cursor == "start":
        return Start(log.epoch, log.first_seq - 1)
    if cursor == "live":
        return Start(log.epoch, log.seq)
    if cursor == "run":
        after = log.run_first_seq - 1 if log.run_first_seq else log.first_seq - 1
        return _check(log, after)
    off = offsets.parse(cursor)
    if off.epoch != log.epoch:
        return Start(log.epoch, log.seq, "epoch_changed")
    if off.seq > log.seq:
        raise OffsetAhead(f"offset {cursor} is beyond the last event {log.seq}")
    return _check(log, off.seq)


def resolve_stored(log: LogPosition, stored: str) -> Start:
    """Resolve a consumer's *stored* offset: one beyond the log's end means events the
    viewer saw were lost (a failover or restart without persistence), said with a
    ``reset`` (``offset_ahead``) from the head instead of an error."""
    try:
        return resolve(log, stored)
    except OffsetAhead:
        return Start(log.epoch, log.seq, "offset_ahead")


def _check(log: LogPosition, after: int) -> Start:
    if after + 1 < log.first_seq:
        return Start(log.epoch, log.seq, "offset_trimmed")
    return Start(log.epoch, after)
