"""Property tests (hypothesis) for offset parsing, cursor arithmetic and event encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core import events, offsets
from gateway.core.cursors import OffsetAhead, resolve
from gateway.store.sessions import SessionMeta

EPOCHS = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)
SEQS = st.integers(min_value=0, max_value=offsets.SEQ_MAX)


@given(EPOCHS, SEQS)
def test_format_then_parse_is_identity(epoch: str, seq: int) -> None:
    text = offsets.format_offset(epoch, seq)
    parsed = offsets.parse(text)
    assert (parsed.epoch, parsed.seq) == (epoch, seq)
    assert str(parsed) == text and len(text) == 21


@given(EPOCHS, SEQS, SEQS)
def test_string_order_is_sequence_order_within_an_epoch(epoch: str, a: int, b: int) -> None:
    sa, sb = offsets.format_offset(epoch, a), offsets.format_offset(epoch, b)
    assert (sa < sb) == (a < b) and (sa == sb) == (a == b)


@given(st.text(max_size=40))
@example("5f2a9c01_000000000042\n")
@example("5F2A9C01_000000000042")
@example("5f2a9c01_00000000004٢")  # a non-ASCII digit
def test_parse_accepts_exactly_the_canonical_form(text: str) -> None:
    try:
        parsed = offsets.parse(text)
    except offsets.InvalidOffset:
        return
    assert str(parsed) == text.strip()
    assert all(c in "0123456789abcdef_" for c in str(parsed))


def meta(epoch: str, first: int, last: int) -> SessionMeta:
    return SessionMeta("s", epoch, last, first, "idle", "", "", 0, 0, 0, "")


@st.composite
def logs(draw: st.DrawFn) -> SessionMeta:
    """A session's retained window: events first..last (first == last + 1 when empty)."""
    last = draw(st.integers(min_value=0, max_value=10**6))
    first = draw(st.integers(min_value=1, max_value=last + 1))
    return meta(draw(EPOCHS), first, last)


@settings(max_examples=500)
@given(logs(), st.integers(min_value=0, max_value=10**6 + 5))
def test_an_offset_cursor_resumes_after_itself_or_resets_explicitly(m: SessionMeta, c: int) -> None:
    cursor = offsets.format_offset(m.epoch, c)
    if c > m.seq:
        with pytest.raises(OffsetAhead):
            resolve(m, cursor)
        return
    start = resolve(m, cursor)
    assert start.epoch == m.epoch
    if c + 1 < m.first_seq:  # the next event was trimmed: say so, from the head
        assert (start.reset, start.after_seq) == ("offset_trimmed", m.seq)
    else:  # exactly the events after the cursor follow: no gap, no repeat
        assert (start.reset, start.after_seq) == (None, c)


@given(logs(), EPOCHS, SEQS)
def test_an_offset_of_another_epoch_resets_to_the_head(m: SessionMeta, e: str, c: int) -> None:
    if e == m.epoch:
        return
    start = resolve(m, offsets.format_offset(e, c))
    assert (start.epoch, start.after_seq, start.reset) == (m.epoch, m.seq, "epoch_changed")


@given(logs())
def test_named_cursors(m: SessionMeta) -> None:
    assert resolve(m, "start").after_seq == m.first_seq - 1
    assert resolve(m, "live").after_seq == m.seq
    assert resolve(m, "run").after_seq == m.first_seq - 1  # no run: from the start


def _reference_encode(data: dict[str, Any], max_depth: int) -> str:
    """events.encode's data path before the fast encoder: a full walk, then json.dumps."""
    stack, deepest = [(data, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend(
                (c, level + 1) for c in (item.values() if isinstance(item, dict) else item)
            )
    if deepest > max_depth:
        raise events.InvalidEvent("too_deep", "")
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise events.InvalidEvent("invalid_event_data", "") from exc


_KEYS = st.text(max_size=6) | st.integers() | st.floats() | st.booleans() | st.none()
_LEAVES = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=8)
)  # fmt: skip
_JSONISH = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS, inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_KEYS, _JSONISH, max_size=5), st.integers(min_value=2, max_value=5))
def test_event_encoding_accepts_and_refuses_what_json_dumps_did(data: Any, depth: int) -> None:
    """The fast encoder (msgspec, a one-pass depth and NaN check) against the standard
    library's: the same events refused with the same code, the same JSON value stored."""
    try:
        want: str | None = _reference_encode(data, depth)
        want_code = None
    except events.InvalidEvent as exc:
        want, want_code = None, exc.code
    try:
        got: str | None = events.encode("custom.x", data, None, max_depth=depth)[2]
        got_code = None
    except events.InvalidEvent as exc:
        got, got_code = None, exc.code
    except UnicodeEncodeError:
        got, got_code = None, "unicode"  # a lone surrogate: refused by both before
    if want is not None:
        try:
            want.encode("utf-8")
        except UnicodeEncodeError:
            want, want_code = None, "unicode"
    assert got_code == want_code
    if want is not None:
        assert got is not None and json.loads(got) == json.loads(want)
