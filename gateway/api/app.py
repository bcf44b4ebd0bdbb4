"""App: the Litestar application of the gateway: routes, guard and dependencies, error
rendering, the lifespan that builds the process's :class:`Runtime`, SIGTERM drain, CORS, the
OpenAPI schema at ``/schema`` and the static viewer UI."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router

from gateway import durable
from gateway.agent.leases import reap_forever
from gateway.agent.publisher import Publisher
from gateway.api import collector
from gateway.api.auth import Authenticator
from gateway.api.deps import DEPENDENCIES, authorize
from gateway.api.errors import EXCEPTION_HANDLERS, reject_cross_site
from gateway.api.routes import (
    agui,
    agui_ingest,
    chat,
    connections,
    events,
    mux,
    ops,
    runs,
    sessions,
)
from gateway.api.runtime import Runtime
from gateway.core.aio import cancel_and_wait
from gateway.live.hub import Hub
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect

log = logging.getLogger(__name__)

# /v1, by resource: the OpenAPI tags group the schema the same way.
API_ROUTES = [
    Router("/", route_handlers=module.HANDLERS, tags=[module.__name__.rsplit(".", 1)[1]])
    for module in (sessions, connections, events, runs, mux, agui, agui_ingest, chat)
]


def drain_on_signals(rt: Runtime) -> Callable[[], None]:
    """Chain ``rt.begin_drain`` before the server's own SIGTERM/SIGINT handlers.

    uvicorn installs its handlers with ``signal.signal`` before the lifespan starts and
    then only stops accepting connections and waits for responses to end; SSE responses
    never end by themselves, so the application has to hear the signal too. Returns a
    function restoring the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach only the main thread (e.g. test clients)
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if not callable(prev):
            continue  # no server handler to chain to: leave the default behaviour alone
        previous[sig] = prev

        def handler(signum: int, frame: FrameType | None, prev: Any = prev) -> None:
            loop.call_soon_threadsafe(rt.begin_drain)
            prev(signum, frame)

        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, prev)

    return restore


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> Litestar:
    """Build the gateway application.

    Args:
        settings: defaults to :class:`Settings` read from the environment.
        run_worker: also run the demo agent worker in this process (``gateway demo``).

    Raises:
        ValueError: no token key is configured and ``settings.insecure`` is false.
    """
    settings = settings or Settings()
    auth = Authenticator(settings)  # fails fast without a key unless insecure

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        redis = connect(settings)
        store = Store(redis, settings.key_prefix)
        m = Metrics()
        hub = Hub(redis, m)
        await hub.start()
        publisher = Publisher.from_settings(store, settings)
        rt = Runtime(settings, store, publisher, hub, m, auth)
        reaper = reap_forever(store, publisher, settings.run_lease_ttl / 3, settings.requeue_grace)
        rt.background.append(asyncio.create_task(reaper, name="reaper"))
        if run_worker:
            from gateway.agent.worker import demo_worker

            worker = demo_worker(store, publisher, settings)
            rt.background.append(asyncio.create_task(worker.run_forever(), name="demo-worker"))
        app.state.runtime = rt
        restore_signals = drain_on_signals(rt)
        m.watch_gc()
        if settings.gc_freeze:
            # Everything alive now (modules, routes, pools) lives as long as the process, and
            # open streams for long: full collections need not walk them (collector.py).
            collector.freeze_now()
            keeper = collector.keep_frozen(settings.gc_freeze_interval, settings.gc_full_interval)
            rt.background.append(asyncio.create_task(keeper, name="gc-freeze"))
        try:
            yield
        finally:
            m.unwatch_gc()
            restore_signals()
            for task in rt.background:
                await cancel_and_wait(task, task.get_name())
            await hub.stop()
            await redis.aclose()

    handlers: list[Any] = [
        Router("/", route_handlers=API_ROUTES, guards=[authorize], dependencies=DEPENDENCIES),
        Router("/", route_handlers=ops.HANDLERS, tags=["operations"]),
        *durable.ROUTE_HANDLERS,  # the Durable Streams protocol under /ds
    ]
    if settings.frontend_dir.is_dir():
        handlers.append(
            create_static_files_router(
                path="/",
                directories=[settings.frontend_dir],
                html_mode=True,
                include_in_schema=False,
            )
        )
    cors = (
        CORSConfig(
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
        if settings.cors_origins
        else None  # off by default: same-origin only
    )
    return Litestar(
        route_handlers=handlers,
        cors_config=cors,
        before_request=reject_cross_site,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="Agent stream gateway", version="0.2.0"),
    )
