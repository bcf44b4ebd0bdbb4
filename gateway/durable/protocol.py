"""Durable Streams protocol rules that need no I/O: constants, settings, header parsing.

Owns the protocol's constants (the ``/ds`` prefix, size limits, the ``Stream-Cursor``
clock), the endpoint's settings (:class:`DurableSettings`, ``GATEWAY_DS_*``), the CORS and
preflight headers, and the pure helpers every operation uses: media types and JSON mode,
offsets, cursors, SSE ``data:`` lines, JSON-mode bodies, ``Stream-Expires-At``, the headers
of a ``PUT`` (:func:`parse_create`: TTL, expiry, fork) and of a ``POST``
(:func:`parse_append`: close, ``Stream-Seq``, idempotent producer), and the errors several
operations share. Every error raised is a :class:`~gateway.core.errors.GatewayError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.errors import GatewayError

PREFIX = "/ds"
MAX_PATH_BYTES = 1024
MAX_TOKEN_BYTES = 1024  # Producer-Id, Stream-Seq
MAX_TTL_S = 10 * 365 * 86_400
CURSOR_EPOCH_MS = 1_728_432_000_000  # 2024-10-09T00:00:00Z, as the reference server
CURSOR_INTERVAL_S = 20
DEFAULT_CONTENT_TYPE = "application/octet-stream"

OFFSET_RE = re.compile(r"-1|now|[0-9]+_[0-9]+")  # a read offset
_FORK_OFFSET_RE = re.compile(r"[0-9]+_[0-9]+")
_UINT_RE = re.compile(r"0|[1-9][0-9]*")
_DIGITS_RE = re.compile(r"[0-9]+")
_CONTENT_TYPE_RE = re.compile(r"[\w-]+/[\w-]+", re.ASCII)
_LINES_RE = re.compile(r"\r\n|\r|\n")
_MAX_SAFE_INT = 2**53 - 1

# Added to every response (raw ASGI header pairs).
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-expose-headers",
        b"Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, "
        b"Stream-Closed, Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, "
        b"Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, "
        b"Content-Type",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
]
# The answer to a preflight (OPTIONS).
PREFLIGHT_HEADERS = {
    "access-control-allow-methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "access-control-allow-headers": "Content-Type, Authorization, If-None-Match, Stream-Seq, "
    "Stream-TTL, Stream-Expires-At, Stream-Closed, Stream-Forked-From, Stream-Fork-Offset, "
    "Stream-Fork-Sub-Offset, Producer-Id, Producer-Epoch, Producer-Seq",
    "access-control-max-age": "86400",
}


class DurableSettings(BaseSettings):
    """Tunables of the Durable Streams endpoint (environment: ``GATEWAY_DS_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_DS_", extra="ignore")

    long_poll_timeout: float = Field(
        default=20.0, gt=0, description="Seconds a long-poll at the tail waits (then 204)."
    )
    sse_max_duration: float = Field(
        default=60.0, gt=0, description="Seconds an SSE response stays open (clients resume)."
    )
    sse_keepalive: float = Field(
        default=15.0, gt=0, description="Idle seconds before an SSE keep-alive control event."
    )
    max_append_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond)."
    )
    read_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Bytes per read response (one message more)."
    )
    read_max_messages: int = Field(default=1000, ge=1, description="Messages per read response.")
    live_payload_max: int = Field(
        default=64 * 1024, ge=0, description="Largest message carried in a live frame."
    )
    queue_size: int = Field(default=256, ge=8, description="Live frames queued per reader.")


# --- content types, offsets, cursors, SSE -------------------------------------------------------
def normalize_type(content_type: str | None) -> str:
    """The media type of a Content-Type, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(normalized: str) -> bool:
    """Whether a stream of this media type is in JSON mode (messages are JSON values)."""
    return normalized == "application/json"


def is_text(normalized: str) -> bool:
    """Whether SSE carries the data as text (else base64, ``Stream-SSE-Data-Encoding``)."""
    return normalized.startswith("text/") or is_json(normalized)


def parse_offset(value: str) -> tuple[int, int]:
    """``<n>_<b>`` as ``(message number, byte position)`` (the format is checked by the
    caller)."""
    n, _, b = value.partition("_")
    return int(n), int(b)


def read_offset(query: Mapping[str, list[str]]) -> str | None:
    """The ``offset`` query parameter of a GET: None when absent, else ``-1``, ``now`` or
    ``<n>_<b>``.

    Raises:
        GatewayError: 400 ``invalid_offset`` when repeated, empty or malformed.
    """
    offsets = query.get("offset")
    if offsets is None:
        return None
    if len(offsets) > 1:
        raise GatewayError(400, "invalid_offset", "give one offset")
    offset = offsets[0]
    if not OFFSET_RE.fullmatch(offset):
        raise GatewayError(400, "invalid_offset", f"bad offset {offset!r} (-1, now or <n>_<b>)")
    return offset


def response_cursor(client: str | None, now_ms: int | None = None) -> str:
    """The ``Stream-Cursor`` for a live response (CDN request collapsing).

    The current 20 s interval since 2024-10-09, or, when the client already sent that
    interval or a later one, the client's cursor plus a random 1-3600 s jitter: cursors
    only ever move forward, so a cached response cannot be served to the same client again.
    ``now_ms`` (epoch milliseconds) defaults to the clock.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    current = (now_ms - CURSOR_EPOCH_MS) // (CURSOR_INTERVAL_S * 1000)
    theirs = int(client) if client and _DIGITS_RE.fullmatch(client) else None
    if theirs is None or theirs < current:
        return str(current)
    jitter_s = random.randint(1, 3600)
    return str(theirs + max(1, math.ceil(jitter_s / CURSOR_INTERVAL_S)))


def sse_data(text: str) -> str:
    """One ``data:`` line per line of ``text`` (CR, LF and CRLF all split: a payload cannot
    end the event or inject another), then the blank line ending the event."""
    if "\n" not in text and "\r" not in text:
        return f"data:{text}\n\n"
    return "".join(f"data:{line}\n" for line in _LINES_RE.split(text)) + "\n"


# --- JSON mode ----------------------------------------------------------------------------------
def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads/json.dumps with options build a new decoder/encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"))


def json_messages(body: bytes, *, create: bool) -> bytes | None:
    """A JSON-mode body as the stored message: its values, compact, joined by commas.

    A top-level array contributes its elements (one level is flattened), anything else is
    one value. Returns None for ``[]`` at creation (an empty stream).

    Raises:
        GatewayError: 400 ``invalid_json``, or ``empty_array`` (an empty array appended).
    """
    try:
        value = _DECODER.decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise GatewayError(400, "invalid_json", f"body is not JSON: {exc}") from exc
    items = value if isinstance(value, list) else [value]
    if not items:
        if create:
            return None
        raise GatewayError(400, "empty_array", "an empty JSON array appends nothing")
    try:
        return json_join(items)
    except RecursionError as exc:
        raise GatewayError(400, "invalid_json", "body is nested too deeply") from exc


def json_join(values: list[Any]) -> bytes:
    """Compact JSON of ``values`` joined by commas, always valid UTF-8 (a string holding a
    lone surrogate, from a ``\\ud800``-style escape, is kept escaped)."""
    text = ",".join(_ENCODER.encode(v) for v in values)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return ",".join(_ENCODER_ASCII.encode(v) for v in values).encode()


# --- PUT headers --------------------------------------------------------------------------------
def parse_expires_at(value: str) -> int:
    """An RFC 3339 / ISO 8601 timestamp (or an HTTP date) as epoch milliseconds; a timestamp
    without a zone is UTC.

    Raises:
        GatewayError: 400 ``invalid_expires_at``.
    """
    text = value.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError) as exc:
            raise GatewayError(
                400, "invalid_expires_at", f"bad Stream-Expires-At {value!r}"
            ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError) as exc:
        raise GatewayError(400, "invalid_expires_at", f"bad Stream-Expires-At {value!r}") from exc


@dataclass(slots=True)
class CreateRequest:
    """The validated headers of a PUT."""

    content_type: str | None  # as given and valid; None = default (or inherit, for forks)
    ttl: int | None  # Stream-TTL, seconds
    expires_at: str | None  # Stream-Expires-At, as given
    expires_ms: int | None  # the same, epoch milliseconds
    closed: bool  # Stream-Closed: true
    fork_from: str | None  # Stream-Forked-From, as a stream path
    fork_offset: str | None  # Stream-Fork-Offset, <n>_<b>
    sub_offset: int  # Stream-Fork-Sub-Offset, 0 when absent


def parse_create(headers: Mapping[str, str]) -> CreateRequest:
    """The headers of a PUT (lower-case names), validated.

    Raises:
        GatewayError: 400 ``ttl_and_expires``, ``invalid_ttl``, ``invalid_expires_at`` or
            ``invalid_fork``.
    """
    given = headers.get("content-type", "").strip()
    content_type = given if _CONTENT_TYPE_RE.match(given) else None
    ttl_raw = headers.get("stream-ttl")
    expires_raw = headers.get("stream-expires-at")
    if ttl_raw is not None and expires_raw is not None:
        raise GatewayError(400, "ttl_and_expires", "give Stream-TTL or Stream-Expires-At, not both")
    ttl = None
    if ttl_raw is not None:
        if not _UINT_RE.fullmatch(ttl_raw) or int(ttl_raw) > MAX_TTL_S:
            raise GatewayError(
                400, "invalid_ttl", "Stream-TTL must be whole seconds (no sign, no 0x)"
            )
        ttl = int(ttl_raw)
    expires_ms = parse_expires_at(expires_raw) if expires_raw is not None else None
    fork_from = headers.get("stream-forked-from")
    fork_offset = headers.get("stream-fork-offset")
    sub_raw = headers.get("stream-fork-sub-offset")
    sub_offset = 0
    if sub_raw is not None:
        if not fork_from:
            raise GatewayError(
                400, "invalid_fork", "Stream-Fork-Sub-Offset needs Stream-Forked-From"
            )
        if not _UINT_RE.fullmatch(sub_raw.strip()):
            raise GatewayError(
                400, "invalid_fork", "Stream-Fork-Sub-Offset must be an integer >= 0"
            )
        sub_offset = int(sub_raw.strip())
    if fork_offset is not None and not _FORK_OFFSET_RE.fullmatch(fork_offset):
        raise GatewayError(400, "invalid_fork", f"bad Stream-Fork-Offset {fork_offset!r}")
    if fork_from is not None:
        fork_from = _source_path(fork_from)
    return CreateRequest(
        content_type=content_type,
        ttl=ttl,
        expires_at=expires_raw,
        expires_ms=expires_ms,
        closed=headers.get("stream-closed", "").strip().lower() == "true",
        fork_from=fork_from,
        fork_offset=fork_offset,
        sub_offset=sub_offset,
    )


def _source_path(value: str) -> str:
    """A ``Stream-Forked-From`` value as a stream path: a path as in the URL after ``/ds``,
    or an absolute URL of this endpoint."""
    value = value.strip()
    with contextlib.suppress(UnicodeError):  # header bytes arrive as latin-1 text
        value = value.encode("latin-1").decode("utf-8")
    if value.startswith(("http://", "https://")):
        value = urlsplit(value).path
        if value.startswith(PREFIX + "/"):
            value = value[len(PREFIX) :]
    path = unquote(value)
    if not path.startswith("/") or len(path.encode()) > MAX_PATH_BYTES:
        raise GatewayError(400, "invalid_fork", f"bad Stream-Forked-From {value!r}")
    return path


# --- POST headers -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Producer:
    """An idempotent producer's headers; ``epoch`` and ``seq`` are canonical decimals."""

    id: str
    epoch: str
    seq: str


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """The validated headers of a POST."""

    close: bool  # Stream-Closed: true
    stream_seq: str  # Stream-Seq, "" when absent
    producer: Producer | None  # Producer-Id, -Epoch, -Seq (all three or none)


def _producer_number(value: str, name: str) -> str:
    if not _DIGITS_RE.fullmatch(value) or int(value) > _MAX_SAFE_INT:
        raise GatewayError(400, "invalid_producer", f"{name} must be a non-negative integer")
    return str(int(value))


def parse_append(headers: Mapping[str, str]) -> AppendRequest:
    """The headers of a POST (lower-case names), validated.

    Raises:
        GatewayError: 400 ``invalid_producer`` (not all three producer headers, an empty
            ``Producer-Id``, an epoch or seq that is not an integer in 0..2**53-1), then 400
            ``invalid_header`` (``Producer-Id`` or ``Stream-Seq`` over 1,024 bytes).
    """
    close = headers.get("stream-closed", "").strip().lower() == "true"
    pid, epoch, pseq = (
        headers.get("producer-id"),
        headers.get("producer-epoch"),
        headers.get("producer-seq"),
    )
    given = (pid, epoch, pseq)
    if any(v is not None for v in given) and any(v is None for v in given):
        raise GatewayError(
            400, "invalid_producer", "Producer-Id, Producer-Epoch and Producer-Seq go together"
        )
    producer = None
    if pid is not None:
        if pid == "":
            raise GatewayError(400, "invalid_producer", "Producer-Id must not be empty")
        assert epoch is not None and pseq is not None
        producer = Producer(
            pid,
            _producer_number(epoch.strip(), "Producer-Epoch"),
            _producer_number(pseq.strip(), "Producer-Seq"),
        )
    stream_seq = headers.get("stream-seq", "")
    if len(pid or "") > MAX_TOKEN_BYTES or len(stream_seq) > MAX_TOKEN_BYTES:
        raise GatewayError(
            400, "invalid_header", f"Producer-Id and Stream-Seq: {MAX_TOKEN_BYTES} max"
        )
    return AppendRequest(close=close, stream_seq=stream_seq, producer=producer)


# --- errors several operations answer -----------------------------------------------------------
def missing_error(status: str, path: str) -> GatewayError:
    """410 ``stream_gone`` for a soft-deleted stream (``status`` ``"gone"``), else 404
    ``stream_not_found``."""
    if status == "gone":
        return GatewayError(410, "stream_gone", f"stream {path!r} was deleted; forks still read it")
    return GatewayError(404, "stream_not_found", f"no stream {path!r}")


def draining_error() -> GatewayError:
    """503 ``draining`` with ``Retry-After: 1``: no new live reader on a replica shutting
    down."""
    return GatewayError(
        503,
        "draining",
        "this replica is shutting down; retry (another replica will answer)",
        {"Retry-After": "1"},
    )
