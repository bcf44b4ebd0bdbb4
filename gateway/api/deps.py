"""Deps: what every handler gets before it runs. One guard validates the ids in the path
(``400 invalid_id``), authenticates the caller (``401``) and checks the handler's action on
the session (``403``), before the body is even read; one dependency, ``call``, hands the
handler the runtime, the principal and the validated session id.

A handler declares its action with ``opt={"action": "view" | "command" | "approve" |
"publish"}``; ``opt={"scoped": False}`` checks the action without the path's session (a
mux's own routes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.handlers import BaseRouteHandler

from gateway.api.auth import Principal
from gateway.api.runtime import Runtime
from gateway.core import events
from gateway.core.errors import GatewayError

# Checked in this order: the session first, as every error message names it.
ID_PARAMS = ("session_id", "connection_id", "run_id", "approval_id", "mux_id")


@dataclass(frozen=True, slots=True)
class Call:
    """The request being handled: the process ``rt``, the caller ``who`` and the path's
    validated ``sid`` ('' when the path names no session)."""

    rt: Runtime
    who: Principal
    sid: str

    @property
    def owner(self) -> str:
        """What is stored as the owner of what this caller creates."""
        return self.rt.owner(self.who)


def check_id(value: str, what: str) -> str:
    """``value`` if it is a valid id, else ``400 invalid_id``."""
    if not events.valid_id(value):
        raise GatewayError(400, "invalid_id", f"{what} {value!r} is not a valid id")
    return value


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    """The process's :class:`Runtime` (built by the lifespan)."""
    return connection.app.state.runtime  # type: ignore[no-any-return]


def header(connection: ASGIConnection[Any, Any, Any, Any], name: bytes) -> str | None:
    """The first value of the request header ``name`` (lower case, as ASGI sends names).

    Read from the scope: ``connection.headers`` would build a copy of every header and
    cache it in the scope, held for as long as an SSE stream stays open."""
    for key, value in connection.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The request's token: ``Authorization: Bearer …``, else ``?access_token=`` (EventSource
    cannot set headers; such URLs are masked in the access log)."""
    value = header(connection, b"authorization") or ""
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return connection.query_params.get("access_token") or None


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The guard of every ``/v1`` route (see the module docstring).

    Raises:
        GatewayError: 400 ``invalid_id``; 401 ``unauthorized`` / ``invalid_token`` /
            ``token_expired``; 403 ``forbidden``.
    """
    params = connection.path_params
    for name in ID_PARAMS:
        if name in params:
            check_id(params[name], name)
    principal = runtime_of(connection).auth.authenticate(bearer(connection))
    action = handler.opt.get("action")
    if action:
        sid = params.get("session_id") if handler.opt.get("scoped", True) else None
        principal.require(action, sid)
    connection.state.principal = principal


async def provide_call(request: ASGIConnection[Any, Any, Any, Any]) -> Call:
    """The ``call`` dependency (after :func:`authorize`)."""
    return Call(
        runtime_of(request), request.state.principal, request.path_params.get("session_id", "")
    )


DEPENDENCIES = {"call": Provide(provide_call)}
CallDep = NamedDependency[Call]  # how a handler asks for it: ``call: CallDep``
