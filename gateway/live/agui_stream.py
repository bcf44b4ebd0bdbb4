"""AG-UI stream: a session's SSE stream spoken in AG-UI events instead of our envelopes.

It is the ordinary :class:`~gateway.live.session_stream.EventStream` (same catch-up, live
tail, gap repair, commits, take-overs and drain); only the frames differ. Each stored event
becomes the AG-UI events :class:`~gateway.protocols.agui_out.AguiEncoder` maps it to, one
``data:`` frame each, and the last frame of each stored event carries ``id: <offset>`` (an
event with no AG-UI counterpart still sends its ``id:``, with no data, so ``Last-Event-ID``
stays exact). Frames end with ``\\n`` only: ``@ag-ui/client`` splits on ``\\n\\n``. What
AG-UI has no event for (resets, the stream's close) is sent as SSE comments, which AG-UI
clients skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from gateway.core import offsets
from gateway.core.cursors import Start
from gateway.core.events import StoredEvent
from gateway.live.session_stream import EventStream
from gateway.protocols.agui_out import AguiEncoder
from gateway.store.sessions import SessionLog, SessionMeta

PRIME_PAGE = 500


def sse_frames(events: list[str], offset: str | None) -> str:
    """``data:`` frames for AG-UI event JSON texts; ``id: offset`` on the last (alone when
    there are none). JSON text holds no raw newline, so one ``data:`` line each is exact."""
    if not events:
        return f"id: {offset}\n\n" if offset is not None else ""
    frames = [f"data: {e}\n\n" for e in events]
    if offset is not None:
        frames[-1] = f"id: {offset}\n{frames[-1]}"
    return "".join(frames)


async def prime(log: SessionLog, meta: SessionMeta, start: Start, encoder: AguiEncoder) -> str:
    """Feed ``encoder`` the current run's events up to ``start`` (their frames are dropped)
    and return the frames a client resuming at ``start`` needs first: the run's
    ``RUN_STARTED`` and a start for each open message. Empty when ``start`` is not inside
    the session's latest run (an older run then continues with a fresh ``RUN_STARTED``)."""
    first = meta.run_first_seq
    if start.reset or not first or start.epoch != meta.epoch or not first <= start.after_seq:
        return ""
    after = first - 1
    while after < start.after_seq:
        batch = await log.read(meta.session_id, after, min(PRIME_PAGE, start.after_seq - after))
        if not batch:
            break
        for ev in batch:
            if ev.seq > start.after_seq:
                break
            encoder.encode(ev)
        after = batch[-1].seq
    return sse_frames(encoder.preamble(), None)


class AguiStream(EventStream):
    """An :class:`EventStream` whose frames are AG-UI events.

    ``encoder``: primed for the stream's start (see :func:`prime`). ``until_run``: end the
    stream once that run's AG-UI run finishes, is interrupted or errors (the answer to
    ``POST …/agui``); None follows the session across runs.
    """

    __slots__ = ("done", "encoder", "until_run")

    def __init__(
        self, *args: Any, encoder: AguiEncoder, until_run: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = encoder
        self.until_run = until_run
        self.done = False

    def _frame(self, ev: StoredEvent) -> str:
        if self.done:
            return ""  # events after the answered run, in the same batch
        off = offsets.format_offset(self.epoch, ev.seq)
        events = self.encoder.encode(ev, off)
        if self.until_run is not None and self.encoder.closed and ev.run_id == self.until_run:
            self.done = True
        return sse_frames(events, off)

    def _reset_frame(self, reason: str) -> bytes:
        off = offsets.format_offset(self.epoch, self.last)
        self.metrics.resets.labels(reason).inc()
        # Events were skipped: a run the client has open cannot be continued faithfully.
        closing = self.encoder.abandon()
        return (sse_frames(closing, None) + f"id: {off}\n: reset {reason}\n\n").encode()

    def _closing(self, frame: bytes, reason: str) -> bytes:
        return f": close {reason}\n\n".encode()

    async def agui_frames(self, preamble: str = "") -> AsyncGenerator[bytes, None]:
        """:meth:`frames` after ``preamble``, ending after ``until_run``'s end."""
        if preamble:
            yield preamble.encode()
        async with contextlib.aclosing(self.frames()) as frames:
            async for chunk in frames:
                if chunk:
                    yield chunk
                if self.done:
                    return
