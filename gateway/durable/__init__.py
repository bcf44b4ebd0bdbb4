"""Durable Streams: the Durable Streams HTTP protocol, served under ``/ds`` and stored in Redis.

Durable Streams (ElectricSQL, Apache-2.0; https://github.com/durable-streams/durable-streams,
``PROTOCOL.md``) is an open protocol for append-only, offset-addressed streams read over plain
HTTP: ``PUT`` creates a stream, ``POST`` appends (and closes), ``GET`` reads from an offset
(catch-up, ``live=long-poll`` or ``live=sse``), ``HEAD`` returns metadata, ``DELETE`` removes.
This package follows the behaviour pinned down by the conformance suite
``@durable-streams/server-conformance-tests`` 0.3.6 (``tests/durable/`` runs it against the
gateway) and the reference server ``@durable-streams/server``; docs/durable-streams.md
documents the endpoint. Everything lives in Redis (``gateway.store.durable``), so any replica
serves any stream, and live readers are woken through the process's one Pub/Sub connection
(``gateway.live.hub``) by the frames the append script publishes.

A stream's URL is ``/ds<path>``; ``<path>`` (for example ``/v1/stream/chat-1``) names it,
also in ``Stream-Forked-From``. Offsets are ``<message number>_<byte position>``, 16 digits
each, so they sort as strings; ``-1`` is the beginning and ``now`` the tail.

Modules: ``protocol`` (constants, settings, header parsing, no I/O), ``exchange`` (the
raw-ASGI request/response, the per-process context, a reader's live inbox, authorization),
``reads`` (``HEAD``, catch-up pages, long-poll), ``sse`` (``live=sse``), ``writes``
(``PUT``, forks, ``POST``, ``DELETE``) and ``endpoint`` (the ``/ds`` mount and dispatch).
"""

from gateway.durable.endpoint import ROUTE_HANDLERS

__all__ = ["ROUTE_HANDLERS"]
