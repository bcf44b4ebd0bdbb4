"""The frame codec (gateway/core/frames.py): every Pub/Sub frame and the SSE framing round
trip, by property (hypothesis); and the frames the Lua scripts write, read from a real
redis-server, decode to what was published."""

from __future__ import annotations

import asyncio
import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from gateway.agent.publisher import Publisher
from gateway.core import frames
from gateway.core.events import StoredEvent
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect

IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
TYPES = st.from_regex(r"\A[a-z][a-z0-9_]*(\.[a-z0-9_]+)+\Z")
JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps({"v": v}, separators=(",", ":"), ensure_ascii=False))
EVENTS = st.builds(
    StoredEvent,
    st.integers(1, 10**12 - 1),
    st.integers(0, 2**45),
    TYPES,
    st.one_of(st.just(""), IDS),
    JSON_TEXT,
)
EPOCHS = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)
PAYLOADS = st.text().filter(lambda t: "\n" not in t)

FRAMES = st.one_of(
    st.builds(frames.LiveEvents, EPOCHS, st.lists(EVENTS, max_size=5)),
    st.builds(frames.TakeOver, IDS, st.text(alphabet="0123456789abcdef", max_size=16)),
    st.builds(frames.Evict, st.text(alphabet="0123456789abcdef", min_size=1, max_size=16)),
    st.builds(frames.Subscribe, IDS),
    st.builds(frames.Unsubscribe, IDS),
    st.builds(frames.Activity, st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,4}\Z"), JSON_TEXT),
    st.builds(
        frames.DurableChange,
        st.text(alphabet="0123456789abcdef", min_size=1, max_size=16),
        st.integers(0, 2**53),
        st.integers(0, 2**53),
        st.integers(0, 2**53),
        st.booleans(),
        st.sampled_from("tb-cx"),
        st.text(),
    ),
)


@given(FRAMES)
def test_every_pubsub_frame_round_trips(frame: frames.Frame) -> None:
    assert frames.decode(frames.encode(frame)) == frame


@given(st.text(max_size=40))
def test_garbage_never_raises(raw: str) -> None:
    frame = frames.decode(raw)
    assert frame is None or isinstance(frame, frames.Frame)


@given(
    st.text().filter(lambda t: "\r" not in t),
    st.one_of(st.none(), st.from_regex(r"\A[^\r\n]*\Z")),
    st.one_of(st.none(), st.from_regex(r"\A[A-Za-z._-]{1,20}\Z")),
)
def test_sse_event_round_trips(data: str, id_: str | None, event: str | None) -> None:
    text = frames.sse_event(data, id=id_, event=event)
    [frame] = list(frames.SseDecoder().feed(text.split("\n")))
    assert (frame.data, frame.id, frame.event) == (data, id_, event or "message")


def test_sse_control_frames_decode() -> None:
    text = (
        frames.sse_retry(2000)
        + frames.HEARTBEAT.decode()
        + frames.close_frame("draining", 250).decode()
        + frames.TOKEN_EXPIRED.decode()
    )
    got = list(frames.SseDecoder().feed(text.split("\n")))
    assert [(f.event, f.retry, f.data) for f in got] == [
        ("message", 2000, ""),
        ("close", 250, '{"reason":"draining"}'),
        ("close", None, '{"reason":"token_expired"}'),
    ]
    assert got[1].comments == ["hb"]


async def test_frames_the_lua_scripts_write_decode(redis_server) -> None:  # type: ignore[no-untyped-def]
    """publish.lua (``E``), activity.lua (``A``) and the take-over and mux frames, read off
    a real Pub/Sub subscription."""
    redis = connect(Settings(redis_url=redis_server.url), role="test")
    store = Store(redis, prefix="frames" + uuid.uuid4().hex[:6])
    pubsub = redis.pubsub()
    sid = "s1"
    try:
        await pubsub.subscribe(store.sessions.live_channel(sid), store.activity.channel)
        pub = Publisher(store)
        offs = await pub.publish_batch(
            sid, [pub_event("session.title", {"title": "hello\tworld\n"}), pub_event("vendor.x")]
        )
        await store.consumers.announce_attach(store.sessions.live_channel(sid), "c-1", "tok")
        got: list[frames.Frame] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    frame = frames.decode(msg["data"])
                    assert frame is not None, msg
                    got.append(frame)
        live = next(f for f in got if isinstance(f, frames.LiveEvents))
        assert [f"{live.epoch}_{e.seq:012d}" for e in live.events] == offs
        assert json.loads(live.events[0].data) == {"title": "hello\tworld\n"}
        activity = next(f for f in got if isinstance(f, frames.Activity))
        assert json.loads(activity.payload)["title"] == "hello\tworld\n"
        assert frames.TakeOver("c-1", "tok") in got
    finally:
        await pubsub.aclose()
        await redis.aclose()


def pub_event(type_: str, data: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    from gateway.agent.publisher import EventIn

    return EventIn(type_, dict(data or {}))
