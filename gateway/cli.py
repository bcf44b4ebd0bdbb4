"""CLI: the ``gateway`` console script (demo, serve, worker), built on Typer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from typing import Annotated

import typer
import uvicorn

from gateway.settings import Settings

app = typer.Typer(
    help="Redis-backed SSE gateway for live AI-agent sessions.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Gateway + demo agent worker + viewer UI in one process.

    Uses the embedded in-process fakeredis unless REDIS_URL is set.
    """
    from gateway.http import create_app

    _logging(log_level)
    settings = Settings()
    store = settings.redis_url or "embedded in-process fakeredis (set REDIS_URL for real Redis)"
    url = f"http://{host}:{port}"
    typer.echo(
        f"""
Agent stream gateway demo
  open      {url}
  store     {store}
  api docs  {url}/schema  (OpenAPI), docs/api.md

Try: type "How does reconnect resume from the stored offset?" and press Enter.
     Switch to another session while it streams, come back, reload the page:
     the transcript resumes exactly where you left it.
     Ask for "approval" in a prompt to get an approve/deny card; Esc cancels a run.
Insecure demo mode: no authentication, bound to {host}. Ctrl-C stops.
"""
    )
    uvicorn.run(
        create_app(settings, run_worker=True),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=3,
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    redis_url: Annotated[
        str | None, typer.Option(envvar="REDIS_URL", help="Redis URL (env REDIS_URL).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the gateway alone against REDIS_URL. Other settings: GATEWAY_* env vars."""
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    if not Settings().redis_url:
        raise typer.BadParameter("serve needs Redis: pass --redis-url or set REDIS_URL")
    _logging(log_level)
    uvicorn.run(
        "gateway.http:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        # The drain closes streams within drain_spread; this bounds the wait for stragglers.
        timeout_graceful_shutdown=math.ceil(Settings().drain_timeout),
    )


@app.command()
def worker(
    redis_url: Annotated[
        str | None, typer.Option(envvar="REDIS_URL", help="Redis URL (env REDIS_URL).")
    ] = None,
    tokens_per_second: Annotated[
        float | None, typer.Option(help="Answer pace (env GATEWAY_TOKENS_PER_SECOND).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the demo agent worker alone against REDIS_URL."""
    from gateway.publisher import Publisher
    from gateway.redisconn import connect
    from gateway.streams import Streams
    from gateway.worker import DemoWorker

    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    settings = Settings()
    if tokens_per_second:
        settings.tokens_per_second = tokens_per_second
    if not settings.redis_url:
        raise typer.BadParameter("worker needs Redis: pass --redis-url or set REDIS_URL")
    _logging(log_level)

    async def main() -> None:
        redis = connect(settings, role="worker")
        streams = Streams(redis, settings.key_prefix)
        w = DemoWorker(streams, Publisher.from_settings(streams, settings), settings)
        typer.echo(f"worker {w.name} consuming commands from {settings.redis_url}")
        try:
            await w.run_forever()
        finally:
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
