"""CLI: the ``gateway`` console script (demo, serve, worker, token), built on Typer."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
from typing import Annotated

import typer
import uvicorn

from gateway.settings import Settings

app = typer.Typer(
    help="Redis-backed SSE gateway for live AI-agent sessions.",
    no_args_is_help=True,
    add_completion=False,
)


class _RedactTokens(logging.Filter):
    """Masks ``access_token=`` query values in access-log lines: EventSource and beacons must
    send the token in the URL, and a token in a log file is a credential at rest."""

    _TOKEN = re.compile(r"(access_token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1REDACTED", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("uvicorn.access").addFilter(_RedactTokens())


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Gateway + demo agent worker + viewer UI in one process.

    Uses the embedded in-process fakeredis unless REDIS_URL is set.
    """
    from gateway.api.app import create_app

    _logging(log_level)
    settings = Settings(insecure=True)
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
INSECURE demo mode: no token checks; anyone who reaches {host}:{port} can read and act on
every session. Use `gateway serve` with GATEWAY_JWT_SECRET (or a public key) in production.
Ctrl-C stops.
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
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve without token checks (development only; env GATEWAY_INSECURE=1).",
        ),
    ] = False,
) -> None:
    """Run the gateway alone against REDIS_URL. Other settings: GATEWAY_* env vars.

    Refuses to start without a token key (GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or
    GATEWAY_JWT_JWKS_FILE) unless --insecure is given.
    """
    from gateway.api.auth import Authenticator

    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    if insecure:
        os.environ["GATEWAY_INSECURE"] = "1"  # the app factory (and every worker) reads it
    os.environ.setdefault("GATEWAY_GC_FREEZE", "1")
    settings = Settings()
    if not settings.redis_url:
        raise typer.BadParameter("serve needs Redis: pass --redis-url or set REDIS_URL")
    try:
        auth = Authenticator(settings)
    except (ValueError, OSError) as exc:
        typer.echo(f"gateway serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not auth.configured:
        typer.echo(
            f"WARNING: --insecure: no token checks; anyone reaching {host}:{port} can read "
            "and act on every session.",
            err=True,
        )
    _logging(log_level)
    uvicorn.run(
        "gateway.api.app:create_app",
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
    agui_url: Annotated[
        str | None,
        typer.Option(help="Relay runs to this AG-UI agent endpoint instead of the demo agent."),
    ] = None,
    agui_header: Annotated[
        list[str] | None,
        typer.Option(help="'Name: value' header sent to the AG-UI agent (repeatable)."),
    ] = None,
) -> None:
    """Run the demo agent worker alone against REDIS_URL, or with --agui-url the AG-UI relay:
    each run is POSTed as a RunAgentInput to that URL and the events it streams are written
    into the session's log (gateway.agent.agui_relay).

    SIGTERM drains: no new commands; runs finish within GATEWAY_WORKER_DRAIN_TIMEOUT or are
    handed back to another worker; then the process exits.
    """
    from gateway.agent.publisher import Publisher
    from gateway.agent.worker import Worker, demo_worker
    from gateway.store import Store
    from gateway.store.client import connect

    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    settings = Settings()
    if tokens_per_second:
        settings.tokens_per_second = tokens_per_second
    if not settings.redis_url:
        raise typer.BadParameter("worker needs Redis: pass --redis-url or set REDIS_URL")
    headers = {}
    for h in agui_header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--agui-header {h!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    _logging(log_level)

    async def main() -> None:
        from gateway.agent.agui_relay import AguiRelay

        redis = connect(settings, role="worker")
        store = Store(redis, settings.key_prefix)
        publisher = Publisher.from_settings(store, settings)
        relay = AguiRelay(agui_url, headers=headers) if agui_url else None
        w = (
            Worker(store, publisher, settings, relay)
            if relay
            else demo_worker(store, publisher, settings)
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.begin_drain)
        typer.echo(f"worker {w.name} consuming commands from {settings.redis_url}")
        try:
            await w.run_forever()
        finally:
            if relay is not None:
                await relay.aclose()
            await redis.aclose()
        typer.echo(f"worker {w.name} drained")

    asyncio.run(main())


@app.command()
def token(
    subject: Annotated[str, typer.Argument(help="The token's subject (sub): a user or service.")],
    session: Annotated[
        list[str] | None,
        typer.Option(
            "--session", "-s", help="Session id or pattern (repeatable; default: every session)."
        ),
    ] = None,
    action: Annotated[
        list[str] | None,
        typer.Option(
            "--action",
            "-a",
            help="view, command, approve or publish (repeatable; default: view command approve).",
        ),
    ] = None,
    ttl: Annotated[float, typer.Option(help="Lifetime in seconds.")] = 3600,
    algorithm: Annotated[str, typer.Option(help="HS256 (secret), RS256 or ES256.")] = "HS256",
    key: Annotated[
        str | None,
        typer.Option(help="HS256 secret or PEM private key (file); default GATEWAY_JWT_SECRET."),
    ] = None,
    kid: Annotated[str | None, typer.Option(help="Key id header (for a JWKS).")] = None,
) -> None:
    """Mint a token for development: prints the JWT on stdout.

    Example: gateway token alice -s 'team-a-*' -a view -a command
    """
    from gateway.api.auth import mint

    settings = Settings()
    signing = key or (settings.jwt_secret.get_secret_value() if settings.jwt_secret else None)
    if not signing:
        raise typer.BadParameter("pass --key or set GATEWAY_JWT_SECRET")
    try:
        typer.echo(
            mint(
                signing,
                subject,
                sessions=session or ["*"],
                actions=action or ["view", "command", "approve"],
                ttl_s=ttl,
                algorithm=algorithm,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                kid=kid,
            )
        )
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
