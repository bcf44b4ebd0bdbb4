"""Operations: liveness, readiness and Prometheus metrics (open, no token)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway.api.deps import runtime_of
from gateway.api.schemas import Error, Status


@get("/healthz")
async def healthz() -> Status:
    """Liveness: the process serves requests."""
    return Status("ok")


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[Status | Error]:
    """Readiness: Redis answers a PING and the replica is not draining (else ``503``
    ``draining`` or ``redis_unavailable``)."""
    rt = runtime_of(request)
    if rt.draining:
        return Response(Error("draining", "shutting down"), status_code=503)
    try:
        await rt.store.redis.ping()
    except (RedisError, OSError) as exc:
        return Response(Error("redis_unavailable", str(exc)), status_code=503)
    return Response(Status("ready"))


@get("/metrics")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition of this process's series."""
    registry = runtime_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


HANDLERS = [healthz, readyz, metrics]
