"""Frames: every Pub/Sub frame and the SSE framing, each with an encoder and a decoder.

Pub/Sub frames are text; the first tab-separated field names the kind. Some are written by
Lua scripts (named below), which follow these exact layouts; ``tests/test_frames.py`` checks
every round trip and a frame of each script against :func:`decode`.

====  =====================  ==============================================  ==============
kind  channel                frame                                           written by
====  =====================  ==============================================  ==============
E     session live           ``E\\t<epoch>`` then one line per event:         publish.lua
                             ``<seq>\\t<ts>\\t<type>\\t<run_id>\\t<data JSON>``
K     session live, mux ctl  ``K\\t<connection or mux id>\\t<token>``         take-overs
X     subject ctl            ``X\\t<slot>``                                   slots.lua
S     mux ctl                ``S\\t<session id>``                             subscribe
U     mux ctl                ``U\\t<session id>``                             unsubscribe
A     activity               ``A\\t<stream id>\\t<payload JSON>``              activity.lua
D     durable stream         ``D\\t<gen>\\t<prev>\\t<n>\\t<b>\\t<closed>\\t<kind>``  ds_*.lua
                             ``\\n<payload>``; kind ``t`` text, ``b`` base64,
                             ``-`` none (read it), ``c`` closed, ``x`` deleted
====  =====================  ==============================================  ==============

Types and ids are validated to hold no tab or newline, and JSON text never holds a raw
control character, so splitting on them is exact.

SSE (the WHATWG HTML "server-sent events" format): :func:`sse_event`, :func:`sse_retry`,
:data:`HEARTBEAT` and :func:`close_frame` encode; :class:`SseDecoder` decodes a stream of
lines into :class:`SseFrame` (used by tests and the Python client).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.core.events import StoredEvent

LIVE, TAKE_OVER, EVICT, SUBSCRIBE, UNSUBSCRIBE, ACTIVITY, DURABLE = "EKXSUAD"


@dataclass(frozen=True, slots=True)
class LiveEvents:
    """``E``: events a publish appended to a session's log, in order."""

    epoch: str
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class TakeOver:
    """``K``: connection (or mux) ``target`` was attached by the stream holding ``token``;
    every other stream of it ends."""

    target: str
    token: str


@dataclass(frozen=True, slots=True)
class Evict:
    """``X``: the stream in ``slot`` lost its place among its subject's open streams."""

    slot: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``S``: the mux now streams ``session_id``."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``U``: the mux stops streaming ``session_id``."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Activity:
    """``A``: one activity-feed entry: its stream id and JSON payload."""

    id: str
    payload: str


@dataclass(frozen=True, slots=True)
class DurableChange:
    """``D``: a Durable Streams stream of generation ``gen`` went from message ``prev`` to
    ``n`` (byte position ``b``), maybe ``closed``; ``kind`` says what ``payload`` holds."""

    gen: str
    prev: int
    n: int
    b: int
    closed: bool
    kind: str
    payload: str

    def data(self) -> bytes:
        """The appended message (``t`` and ``b`` frames)."""
        return base64.b64decode(self.payload) if self.kind == "b" else self.payload.encode()


Frame = LiveEvents | TakeOver | Evict | Subscribe | Unsubscribe | Activity | DurableChange


def encode(frame: Frame) -> str:
    """The wire text of ``frame`` (what :func:`decode` reads back)."""
    if isinstance(frame, LiveEvents):
        lines = [f"{LIVE}\t{frame.epoch}"]
        lines += [f"{e.seq}\t{e.ts}\t{e.type}\t{e.run_id}\t{e.data}" for e in frame.events]
        return "\n".join(lines)
    if isinstance(frame, TakeOver):
        return f"{TAKE_OVER}\t{frame.target}\t{frame.token}"
    if isinstance(frame, Evict):
        return f"{EVICT}\t{frame.slot}"
    if isinstance(frame, Subscribe):
        return f"{SUBSCRIBE}\t{frame.session_id}"
    if isinstance(frame, Unsubscribe):
        return f"{UNSUBSCRIBE}\t{frame.session_id}"
    if isinstance(frame, Activity):
        return f"{ACTIVITY}\t{frame.id}\t{frame.payload}"
    f = frame
    head = f"{DURABLE}\t{f.gen}\t{f.prev}\t{f.n}\t{f.b}\t{int(f.closed)}\t{f.kind}"
    return f"{head}\n{f.payload}"


def decode(raw: str) -> Frame | None:
    """Parse a Pub/Sub frame; None for a malformed or unknown one (ignored by readers)."""
    kind = raw[:1]
    try:
        if kind == LIVE:
            head, _, body = raw.partition("\n")
            events = []
            for line in body.split("\n") if body else ():
                seq, ts, typ, run, data = line.split("\t", 4)
                events.append(StoredEvent(int(seq), int(ts), typ, run, data))
            return LiveEvents(head[2:], events)
        if kind == TAKE_OVER:
            _, target, token = raw.split("\t", 2)
            return TakeOver(target, token)
        if kind == EVICT:
            return Evict(raw[2:])
        if kind == SUBSCRIBE:
            return Subscribe(raw[2:])
        if kind == UNSUBSCRIBE:
            return Unsubscribe(raw[2:])
        if kind == ACTIVITY:
            _, eid, payload = raw.split("\t", 2)
            return Activity(eid, payload)
        if kind == DURABLE:
            head, _, payload = raw.partition("\n")
            _, gen, prev, n, b, closed, dkind = head.split("\t")
            return DurableChange(gen, int(prev), int(n), int(b), closed == "1", dkind, payload)
    except ValueError:
        return None
    return None


# --- SSE ----------------------------------------------------------------------------------------
HEARTBEAT = b": hb\n\n"


def sse_event(data: str, *, id: str | None = None, event: str | None = None) -> str:
    """One SSE event frame; ``data`` with newlines becomes several ``data:`` lines."""
    out = []
    if id is not None:
        out.append(f"id: {id}\n")
    if event is not None:
        out.append(f"event: {event}\n")
    out.extend(f"data: {line}\n" for line in data.split("\n"))
    out.append("\n")
    return "".join(out)


def sse_retry(ms: int) -> str:
    """The ``retry:`` frame: the client's reconnection delay in milliseconds."""
    return f"retry: {ms}\n\n"


def close_frame(reason: str, retry_ms: int | None = None) -> bytes:
    """``event: close`` ``{"reason": ...}`` (``superseded``, ``draining``, ``token_expired``),
    after a ``retry:`` line when ``retry_ms`` is given."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    body = json.dumps({"reason": reason}, separators=(",", ":"))
    return f"{retry}event: close\ndata: {body}\n\n".encode()


SUPERSEDED = close_frame("superseded")
TOKEN_EXPIRED = close_frame("token_expired")


@dataclass(slots=True)
class SseFrame:
    """A decoded SSE event: ``event`` is ``message`` unless named; ``retry`` when given."""

    data: str = ""
    id: str | None = None
    event: str = "message"
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> object:
        """``data`` parsed as JSON."""
        return json.loads(self.data)


class SseDecoder:
    """Turns SSE lines (without their line ends) into frames, per the WHATWG algorithm:
    fields ``id``, ``event``, ``data`` (joined with newlines) and ``retry``; comments are
    kept on the next frame; a frame of only ``retry:`` is yielded too (with no data)."""

    def __init__(self) -> None:
        self._frame = SseFrame()
        self._seen = False
        self._data: list[str] = []

    def feed(self, lines: Iterable[str]) -> Iterator[SseFrame]:
        """Yield each frame completed by ``lines``."""
        for line in lines:
            frame = self.line(line)
            if frame is not None:
                yield frame

    def line(self, line: str) -> SseFrame | None:
        """Take one line; returns a frame when the line ends one."""
        if line == "":
            if not self._seen:
                return None
            frame, self._frame, self._seen = self._frame, SseFrame(), False
            frame.data = "\n".join(self._data)
            self._data = []
            return frame
        if line.startswith(":"):
            self._frame.comments.append(line[1:].lstrip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        self._seen = True
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self._frame.id = value
        elif name == "event":
            self._frame.event = value
        elif name == "retry" and value.isdigit():
            self._frame.retry = int(value)
        return None
