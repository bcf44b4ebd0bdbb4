"""Python viewer client: read a session over a stored connection, with reconnect.

For bots, server-side consumers and tests. ``GatewayClient.events(session_id)`` creates (or
reuses) a stored connection (``POST /v1/sessions/{id}/connections``) and reads its SSE stream
(``GET …/connections/{cid}/events``, docs/api.md), yielding :class:`Event` and
:class:`Reset` items:

- a dropped stream (a replica killed, a network cut), ``event: close`` ``draining`` (after the
  server's ``retry:`` delay), ``503``/``429``/``5xx`` answers: reconnect with backoff, to the
  next base URL when several are given, resuming with ``Last-Event-ID`` = the last offset
  delivered (``commit="auto"``) or from the acknowledged offset (``commit="manual"``, see
  :meth:`EventStream.ack`), so nothing is lost;
- repeats are dropped by offset: within one epoch an event whose ``seq`` is not newer than
  the last one delivered is skipped;
- ``event: reset`` (another epoch, trimmed, offset ahead) becomes a :class:`Reset`: reload the
  snapshot (:meth:`GatewayClient.snapshot`) and call :meth:`EventStream.skip_through` with
  its offset;
- ``event: close`` ``token_expired`` and ``401 token_expired``: the token callable is called
  again and the stream resumes;
- ``event: close`` ``superseded`` (the connection was attached elsewhere, or the subject's
  stream limit evicted it) raises :class:`Superseded`: reconnecting would fight the newer
  stream.
"""

from gateway.client.api import GatewayClient
from gateway.client.stream import EventStream
from gateway.client.types import (
    Event,
    GatewayClientError,
    Reset,
    Superseded,
    TokenSource,
)

__all__ = [
    "Event",
    "EventStream",
    "GatewayClient",
    "GatewayClientError",
    "Reset",
    "Superseded",
    "TokenSource",
]
