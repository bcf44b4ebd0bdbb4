"""Errors: every error the HTTP API answers, as ``{"code": ..., "message": ...}``.

:class:`~gateway.core.errors.GatewayError` (and its subclasses) carries its own status and
code. Body validation errors get the code the handler's schema names for the failing field
(``schemas.*.CODES``); malformed JSON is ``400 invalid_json``, JSON nested too deeply to
parse ``400 too_deep``; Redis being unreachable ``503 redis_unavailable`` with
``Retry-After``; anything else ``500 internal_error``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.utils.scope.state import ScopeState
from redis.exceptions import RedisError

from gateway.core.errors import GatewayError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}
_INDEX = re.compile(r"\[[^\]]*\]")


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error."""
    return {"code": code, "message": message}


def gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[dict[str, str]]:
    """A :class:`GatewayError`, with its status and headers."""
    return Response(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)


def _raw_json(request: Request[Any, Any, Any]) -> tuple[bool, Any]:
    """(body present, parsed body or None), from the body Litestar already read."""
    raw = ScopeState.from_scope(request.scope).body
    if not isinstance(raw, bytes) or not raw.strip():
        return False, None
    try:
        return True, json.loads(raw)
    except (ValueError, RecursionError):
        return True, None


def field_code(codes: dict[str, str], key: str) -> str:
    """The code for a failing field path: exact, then with indexes as ``[]``, then its
    parents; ``invalid_request`` when the schema names none."""
    candidates = [key, _INDEX.sub("[]", key)]
    generic = candidates[-1]
    while "." in generic or generic.endswith("[]"):
        generic = generic.rpartition(".")[0] if "." in generic else generic[:-2]
        candidates.append(generic)
    for cand in candidates:
        if cand and cand in codes:
            return codes[cand]
    return codes.get("", "invalid_request")


def validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, str]]:
    """A body (or parameter) that failed validation, with the schema's error code."""
    codes: dict[str, str] = request.route_handler.opt.get("codes", {})
    present, body = _raw_json(request)
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message") or exc.detail)
    # Pydantic bodies (the AG-UI models) report no ``source``: only bodies are pydantic here.
    if first.get("source", "body") == "body":
        if not present:
            return Response(error_body("invalid_json", "request body is empty"), status_code=400)
        if not isinstance(body, dict):
            code = codes.get("", "invalid_request")
            return Response(error_body(code, "body must be a JSON object"), status_code=400)
        key = str(first.get("key", ""))
        return Response(error_body(field_code(codes, key), f"{key}: {message}"), status_code=400)
    return Response(error_body("invalid_request", message), status_code=400)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    """Litestar's own errors (no route, wrong method, unreadable JSON)."""
    detail = str(exc.detail)
    if exc.status_code == 400 and "JSON is malformed" in detail:
        body = error_body("invalid_json", f"request body is not JSON: {detail}")
        return Response(body, status_code=400)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return Response(error_body(code, detail), status_code=exc.status_code)


def too_deep(_: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, str]]:
    """A JSON body nested beyond what the parser recurses into."""
    return Response(error_body("too_deep", "request body is nested too deeply"), status_code=400)


def redis_error(request: Request[Any, Any, Any], exc: RedisError) -> Response[dict[str, str]]:
    """Redis unreachable (restart, failover): the client retries."""
    log.warning("redis error: %r", exc)
    request.app.state.runtime.metrics.redis_errors.inc()
    return Response(
        error_body("redis_unavailable", "the event store is unavailable, retry"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """A bug: logged with its traceback, answered without details."""
    log.exception("unhandled error", exc_info=exc)
    return Response(
        error_body("internal_error", "internal error"), status_code=HTTP_500_INTERNAL_SERVER_ERROR
    )


EXCEPTION_HANDLERS: Any = {
    GatewayError: gateway_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    RedisError: redis_error,
    Exception: internal_error,
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def reject_cross_site(request: Request[Any, Any, Any]) -> None:
    """Refuse state-changing requests a browser sends from another site (CSRF defence).

    Uses ``Sec-Fetch-Site`` (set by the browser, not by page scripts), else compares the
    ``Origin`` with the ``Host`` the request was sent to. Origins in ``GATEWAY_CORS_ORIGINS``
    are allowed; requests without either header (servers, curl) are not browser-driven.

    Raises:
        GatewayError: 403 ``cross_site``.
    """
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    allowed = request.app.state.runtime.settings.cors_origins
    if origin and origin in allowed:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        cross = site not in ("same-origin", "none")
    elif origin:
        host = request.headers.get("host", "")
        theirs = urlsplit(origin)
        cross = (theirs.netloc if ":" in host else theirs.hostname or "") != host
    else:
        cross = False
    if cross:
        raise GatewayError(
            403, "cross_site", "cross-site request refused (allow its origin in CORS settings)"
        )
