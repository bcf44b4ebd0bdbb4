"""Snapshots: a session's state folded from its log and stored with its offset, so a new
viewer renders at once. A stored snapshot is extended from its offset on the next request
(its cost follows new events only) and stored again only if newer (``lua/snapshot.lua``).
Compaction folds a finished run into the snapshot and trims the log behind it."""

from __future__ import annotations

import json

from gateway.core import fold, offsets
from gateway.store.sessions import SessionLog


async def load(
    sessions: SessionLog, session_id: str, page: int = 1000
) -> tuple[str, fold.State] | None:
    """The session's state at its latest offset, as ``(offset, state)``; None if unknown.

    Starts from the stored snapshot when it belongs to the current epoch, folds newer
    events, and stores the result. If the log was trimmed past the stored snapshot the
    state carries ``"truncated": true`` (older events are gone).
    """
    meta = await sessions.meta(session_id)
    if meta is None:
        return None
    state = fold.empty_state(session_id)
    seq = 0
    stored = await sessions.load_snapshot(session_id)
    if stored is not None:
        off = offsets.parse(stored[0])
        if off.epoch == meta.epoch and off.seq <= meta.seq:
            seq, state = off.seq, json.loads(stored[1])
    if seq + 1 < meta.first_seq:
        state["truncated"] = True
    start_seq = seq
    while True:
        batch = await sessions.read(session_id, seq, page)
        for ev in batch:
            fold.apply(state, ev.type, ev.run_id or None, json.loads(ev.data))
            seq = ev.seq
        if len(batch) < page:
            break
    offset = offsets.format_offset(meta.epoch, seq)
    if seq != start_seq:
        await sessions.save_snapshot(session_id, offset, json.dumps(state, separators=(",", ":")))
    return offset, state


async def compact(sessions: SessionLog, session_id: str, keep: int, ttl_s: float) -> int:
    """After a run ends: fold the session into its stored snapshot, then trim the log to
    its last ``keep`` events and set the session's idle TTL. Returns the events trimmed.

    A viewer whose offset falls before the kept events gets a ``reset`` to the snapshot, which
    holds everything they summarise. Memory per finished session is then at most ``keep``
    log entries plus the snapshot (the folded transcript).
    """
    res = await load(sessions, session_id)
    if res is None:
        return 0
    head = offsets.parse(res[0]).seq
    return await sessions.compact(session_id, max(1, head - keep + 1), ttl_s)
