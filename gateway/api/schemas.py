"""Schemas: the declared request and response bodies of the HTTP API (msgspec Structs that
Litestar validates and the OpenAPI schema at ``/schema`` describes).

Each request body names, in ``CODES``, the machine-readable error code a malformed field
gets (``""``: the body itself is not a JSON object), so validation keeps the codes
docs/api.md documents. Field paths use ``[]`` for any list index or mapping key.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from msgspec import Struct, field


class Error(Struct):
    """Every 4xx/5xx body."""

    code: str
    message: str


# --- requests ---------------------------------------------------------------------------------
class CreateSession(Struct):
    """``POST /v1/sessions``: create a session with this id (default: a fresh one)."""

    session_id: str | None = None
    CODES: ClassVar[dict[str, str]] = {"": "invalid_request", "session_id": "invalid_id"}


class CreateConnection(Struct):
    """``POST …/connections``: where the consumer starts (``start``, ``run``, ``live`` or
    an offset) and how it commits."""

    from_: str = field(name="from", default="live")
    commit: Literal["auto", "manual"] = "auto"
    CODES: ClassVar[dict[str, str]] = {
        "": "invalid_request",
        "from": "invalid_offset",
        "commit": "invalid_commit",
    }


class Ack(Struct):
    """``POST …/connections/{cid}/ack``: manual commit up to ``offset``."""

    offset: str
    CODES: ClassVar[dict[str, str]] = {"": "invalid_offset", "offset": "invalid_offset"}


class EventBody(Struct):
    """One event to publish (``run_id`` is required for run events)."""

    type: str
    run_id: str | None = None
    data: dict[str, Any] | None = None


_EVENT_CODES = {"type": "invalid_event_type", "data": "invalid_event_data", "run_id": "invalid_id"}


class Publish(Struct):
    """``POST …/events``: one event (``type``, ``run_id``, ``data``) or a batch in
    ``events`` (at most 500), stored atomically in order."""

    type: str | None = None
    run_id: str | None = None
    data: dict[str, Any] | None = None
    events: list[EventBody] | None = None
    CODES: ClassVar[dict[str, str]] = {
        "": "invalid_event",
        **_EVENT_CODES,
        "events": "invalid_request",
        "events[]": "invalid_event",
        **{f"events[].{k}": v for k, v in _EVENT_CODES.items()},
    }


class StartRun(Struct):
    """``POST …/runs``: the user's input for a new run."""

    input: str
    CODES: ClassVar[dict[str, str]] = {"": "invalid_input", "input": "invalid_input"}


class Decision(Struct):
    """``POST …/approvals/{approval_id}``: the answer."""

    decision: Literal["approve", "deny"]
    CODES: ClassVar[dict[str, str]] = {"": "invalid_decision", "decision": "invalid_decision"}


class SubscribeMux(Struct):
    """``PUT /v1/mux/{mux}/sessions/{sid}``: replace the stored offset with ``from``."""

    from_: str | None = field(name="from", default=None)
    CODES: ClassVar[dict[str, str]] = {"": "invalid_offset", "from": "invalid_offset"}


class AckMux(Struct):
    """``POST /v1/mux/{mux}/ack``: manual commit of several sessions."""

    offsets: dict[str, str]
    CODES: ClassVar[dict[str, str]] = {
        "": "invalid_request",
        "offsets": "invalid_request",
        "offsets[]": "invalid_offset",
    }


# --- responses --------------------------------------------------------------------------------
class SessionCreated(Struct):
    """A created (or existing) session and its current offset."""

    session_id: str
    offset: str


class SessionSummary(Struct):
    """A sidebar row."""

    session_id: str
    status: str
    title: str
    run_id: str | None
    last_offset: str
    updated_ms: int


class SessionList(Struct):
    """Sessions, most recently active first."""

    sessions: list[SessionSummary]


class SessionInfo(Struct):
    """A session's metadata."""

    session_id: str
    epoch: str
    status: str
    title: str
    first_offset: str | None
    last_offset: str
    run_id: str | None
    run_first_offset: str | None
    updated_ms: int


class Snapshot(Struct):
    """The session's folded state and the offset it is valid at (docs/api.md)."""

    offset: str
    state: dict[str, Any]


class ConnectionInfo(Struct):
    """A consumer: its id, committed offset and commit mode."""

    connection_id: str
    offset: str
    commit: str


class Published(Struct):
    """Where the published events landed, in order."""

    offsets: list[str]


class RunAccepted(Struct):
    """The id of the run just started."""

    run_id: str


class Empty(Struct):
    """No content."""


class ApprovalAnswered(Struct):
    """The offset of the ``approval.resolved`` event."""

    offset: str


class MuxCreated(Struct):
    """A new mux."""

    mux_id: str


class MuxSession(Struct):
    """One session of a mux: its connection, committed offset, whether streamed."""

    connection_id: str
    offset: str | None
    subscribed: bool


class MuxInfo(Struct):
    """The sessions a mux has viewed, with this device's committed offsets."""

    mux_id: str
    sessions: dict[str, MuxSession]


class MuxSubscribed(Struct):
    """The session's connection in the mux and the offset it resumes from."""

    connection_id: str
    offset: str


class Status(Struct):
    """Liveness or readiness."""

    status: str
