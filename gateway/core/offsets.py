"""Offsets: the position of an event in its session's log, and cursor arithmetic.

An offset is ``<epoch>_<seq>``: ``epoch`` is 8 hex digits chosen at random when a session's
log is created, ``seq`` is the event's 12-digit sequence number (consecutive from 1; 0 means
"before the first event"). The epoch makes an offset from a re-created log detectable instead
of silently pointing into a new one (the offset+epoch recovery model of Centrifugo). Zero
padding keeps offsets of one epoch in lexicographic order.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gateway.core.errors import GatewayError

_OFFSET_RE = re.compile(r"^([0-9a-f]{8})_([0-9]{12})$")
SEQ_MAX = 10**12 - 1


class InvalidOffset(GatewayError, ValueError):
    """Raised when a string is not a well-formed offset (``400 invalid_offset``)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_offset", message)


@dataclass(frozen=True, slots=True)
class Offset:
    """A parsed offset: ``epoch`` (8 hex chars) and ``seq`` (0 … 10^12-1)."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}_{self.seq:012d}"

    def next(self) -> Offset:
        """The offset of the event after this one."""
        return Offset(self.epoch, self.seq + 1)


def parse(text: str) -> Offset:
    """Parse ``text`` into an :class:`Offset`.

    Raises:
        InvalidOffset: when ``text`` is not ``<8 hex>_<12 digits>``.
    """
    match = _OFFSET_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidOffset(f"not an offset: {text!r}")
    return Offset(match.group(1), int(match.group(2)))


def new_epoch() -> str:
    """A fresh random epoch (8 lowercase hex digits)."""
    return secrets.token_hex(4)


def format_offset(epoch: str, seq: int) -> str:
    """``str(Offset(epoch, seq))`` without building the object (hot path)."""
    return f"{epoch}_{seq:012d}"
