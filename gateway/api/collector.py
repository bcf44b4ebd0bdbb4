"""Garbage-collector policy of a gateway process: short pauses with many open streams.

Each open stream keeps a few hundred container objects alive (uvicorn's protocol and
request, the scope, the stream, the hub's subscriber) for as long as its viewer stays. The
cyclic collector's full (generation 2) collections walk every one of them: at 10,000 live
viewers a full collection took ~0.4 s, and every viewer of the process waited it out
(``gateway_gc_pause_seconds``; docs/benchmarks/README.md, "Live viewers").

So, once started (``GATEWAY_GC_FREEZE``): ``gc.freeze()`` moves what is alive into the
permanent generation, which collections skip; every ``GATEWAY_GC_FREEZE_INTERVAL`` seconds
the young generations are collected and the survivors frozen too, so full collections only
ever walk what arrived since. Reference counting still frees frozen objects; only garbage
*cycles* among them wait, for the full collection run every ``GATEWAY_GC_FULL_INTERVAL``
seconds (unfreeze, collect, freeze: one long pause per interval instead of one every few
seconds). See the ``gc.freeze`` documentation, which recommends it for long-lived objects.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_now() -> None:
    """Collect, then freeze everything alive (start-up: modules, routes, pools)."""
    gc.collect()
    gc.freeze()


async def keep_frozen(freeze_interval_s: float, full_interval_s: float) -> None:
    """Run forever: freeze the survivors of a young collection every ``freeze_interval_s``
    seconds, and every ``full_interval_s`` seconds unfreeze and collect everything once
    (cycles among frozen objects are freed then). ``0`` turns the first off."""
    if freeze_interval_s <= 0:
        return
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_interval_s)
        if full_interval_s > 0 and time.monotonic() - last_full >= full_interval_s:
            last_full = time.monotonic()
            gc.unfreeze()
            freed = gc.collect()
            log.info("full collection: %d unreachable objects", freed)
        else:
            gc.collect(1)
        gc.freeze()
