"""Durable Streams: the Durable Streams HTTP protocol under ``/ds``, stored in Redis
(``gateway.store.durable``). See docs/durable-streams.md."""

from gateway.durable.endpoint import ROUTE_HANDLERS

__all__ = ["ROUTE_HANDLERS"]
