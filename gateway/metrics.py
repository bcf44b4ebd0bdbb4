"""Metrics: the Prometheus series this process exports at ``/metrics``.

Each process keeps its own registry, so scrape each replica; ``gateway serve --workers N``
gives N registries behind one port, which is why replicas (one worker each) are preferred.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The gateway's series, registered in a fresh registry (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.open_streams = Gauge(
            "gateway_open_streams", "SSE responses open now, by kind.", ["kind"], registry=r
        )
        self.connections_created = Counter(
            "gateway_connections_created", "Consumers (connection ids) created.", registry=r
        )
        self.attaches = Counter(
            "gateway_attaches", "Streams attached to a connection id.", registry=r
        )
        self.reattaches = Counter(
            "gateway_reattaches",
            "Attaches of a connection id that had been attached before (any replica).",
            registry=r,
        )
        self.events_delivered = Counter(
            "gateway_events_delivered", "Events written to SSE responses.", registry=r
        )
        self.catchup_reads = Counter(
            "gateway_catchup_reads", "XRANGE pages read to catch a viewer up.", registry=r
        )
        self.gap_fills = Counter(
            "gateway_gap_fills", "Live sequence jumps repaired by a catch-up read.", registry=r
        )
        self.slow_consumer_fallbacks = Counter(
            "gateway_slow_consumer_fallbacks",
            "Viewers whose live queue overflowed and fell back to catch-up reads.",
            registry=r,
        )
        self.resets = Counter(
            "gateway_resets", "reset events sent, by reason.", ["reason"], registry=r
        )
        self.heartbeats = Counter("gateway_heartbeats", "Heartbeat comments sent.", registry=r)
        self.redis_errors = Counter(
            "gateway_redis_errors", "Redis errors seen by the hub and streams.", registry=r
        )
        self.hub_channels = Gauge(
            "gateway_hub_channels", "Pub/Sub channels the hub is subscribed to.", registry=r
        )
        self.events_published = Counter(
            "gateway_events_published", "Events accepted by the HTTP publish endpoint.", registry=r
        )
        self.gc_pauses = Histogram(
            "gateway_gc_pause_seconds",
            "Pauses of the cyclic garbage collector, by generation (every viewer of this "
            "process waits them out).",
            ["generation"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=r,
        )
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = time.perf_counter() - self._gc_started
            self.gc_pauses.labels(str(info.get("generation", ""))).observe(pause)

    def watch_gc(self) -> None:
        """Time every collection into ``gateway_gc_pause_seconds`` (until :meth:`unwatch_gc`)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        """Stop timing collections."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
