"""Auth: who may read or act on which session, from JSON Web Tokens (RFC 7519, via PyJWT).

A token names a subject and what it may do::

    {"sub": "alice", "sessions": ["s-42", "team-a-*"], "actions": ["view", "command"],
     "exp": 1767225600}

- ``sessions``: session ids or shell-style patterns (``fnmatch``); ``["*"]`` is every session.
- ``actions``: ``view`` (read streams, snapshots, the session list and activity of its
  sessions), ``command`` (start and cancel runs), ``approve`` (answer approvals), ``publish``
  (``POST /v1/sessions/{id}/events``; a publisher token).
- ``exp`` is required; ``aud``/``iss`` are checked when ``GATEWAY_JWT_AUDIENCE`` /
  ``GATEWAY_JWT_ISSUER`` are set.

Keys: HS256 with a shared secret (``GATEWAY_JWT_SECRET``), or RS256/ES256 with a PEM public key
(``GATEWAY_JWT_PUBLIC_KEY``: the PEM text or a file path) or a JWKS file
(``GATEWAY_JWT_JWKS_FILE``, keys chosen by the token's ``kid``). Without any of them the
gateway runs only with ``--insecure`` (everyone is the subject ``anonymous`` with every right).
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.core.errors import GatewayError
from gateway.settings import Settings

ACTIONS = ("view", "command", "approve", "publish")
ASYMMETRIC = ("RS256", "ES256")
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output


class AuthError(GatewayError):
    """Authentication or authorization failed: HTTP ``status`` with a machine ``code``.

    Codes: ``unauthorized`` (401, no token), ``invalid_token`` (401), ``token_expired`` (401),
    ``forbidden`` (403, the token does not grant the action on that session). A 401 carries
    ``WWW-Authenticate: Bearer error="<code>"`` (RFC 6750).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": f'Bearer error="{code}"'} if status == 401 else None
        super().__init__(status, code, message, headers)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``subject``, the session patterns and actions it holds,
    and when its token expires (Unix seconds; None for the insecure anonymous principal)."""

    subject: str
    sessions: tuple[str, ...]
    actions: frozenset[str]
    expires: float | None = None

    def sees(self, session_id: str) -> bool:
        """Whether ``session_id`` matches one of the token's session patterns."""
        return any(fnmatch.fnmatchcase(session_id, p) for p in self.sessions)

    def can(self, action: str, session_id: str | None = None) -> bool:
        """Whether the token grants ``action`` (on ``session_id`` when given)."""
        return action in self.actions and (session_id is None or self.sees(session_id))

    def require(self, action: str, session_id: str | None = None) -> None:
        """Raises AuthError 403 ``forbidden`` unless :meth:`can`."""
        if not self.can(action, session_id):
            where = f" on session {session_id!r}" if session_id else ""
            raise AuthError(403, "forbidden", f"token of {self.subject!r} may not {action}{where}")


ANONYMOUS = Principal("anonymous", ("*",), frozenset(ACTIONS))


class Authenticator:
    """Verifies bearer tokens against the configured key.

    Raises:
        ValueError: at construction, when no key is configured and ``settings.insecure`` is
            false, or a key file cannot be read.
    """

    def __init__(self, settings: Settings) -> None:
        self.insecure = settings.insecure
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self._keys: list[tuple[Any, list[str]]] = []
        self._jwks: jwt.PyJWKSet | None = None
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value()
            if len(secret) < MIN_SECRET_BYTES or secret.upper().startswith("REPLACE"):
                raise ValueError(
                    f"GATEWAY_JWT_SECRET must be a random secret of at least {MIN_SECRET_BYTES} "
                    "characters (e.g. `openssl rand -hex 32`), not a placeholder"
                )
            self._keys.append((secret, ["HS256"]))
        if settings.jwt_public_key:
            self._keys.append((_pem(settings.jwt_public_key), list(ASYMMETRIC)))
        if settings.jwt_jwks_file:
            self._jwks = jwt.PyJWKSet.from_json(Path(settings.jwt_jwks_file).read_text())
        if not self.configured and not self.insecure:
            raise ValueError(
                "no token key configured: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or "
                "GATEWAY_JWT_JWKS_FILE, or run with --insecure (development only)"
            )

    @property
    def configured(self) -> bool:
        """Whether a signing secret or public key is configured."""
        return bool(self._keys) or self._jwks is not None

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token`` (``ANONYMOUS`` in insecure mode without a key).

        Raises:
            AuthError: 401 ``unauthorized`` / ``invalid_token`` / ``token_expired``.
        """
        if not self.configured:
            return ANONYMOUS
        if not token:
            raise AuthError(401, "unauthorized", "a bearer token is required")
        claims = self._decode(token)
        sub = claims.get("sub")
        sessions = claims.get("sessions", [])
        actions = claims.get("actions", [])
        if not isinstance(sub, str) or not sub:
            raise AuthError(401, "invalid_token", "the token has no subject (sub)")
        if not _strings(sessions) or not _strings(actions):
            raise AuthError(401, "invalid_token", "sessions and actions must be string lists")
        return Principal(sub, tuple(sessions), frozenset(actions), float(claims["exp"]))

    def _decode(self, token: str) -> dict[str, Any]:
        options: jwt.types.Options = {"require": ["exp", "sub"]}
        candidates = list(self._keys)
        try:
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                for key in self._jwks.keys:
                    if kid is None or key.key_id == kid:
                        candidates.append((key.key, [key.algorithm_name or "RS256"]))
        except jwt.PyJWTError as exc:
            raise AuthError(401, "invalid_token", f"malformed token: {exc}") from exc
        last: Exception | None = None
        for key, algorithms in candidates:
            try:
                return jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    options=options,
                )
            except jwt.ExpiredSignatureError as exc:
                raise AuthError(401, "token_expired", "the token has expired") from exc
            except jwt.PyJWTError as exc:
                last = exc
        raise AuthError(401, "invalid_token", f"token rejected: {last}")


def mint(
    key: str,
    subject: str,
    *,
    sessions: Iterable[str] = ("*",),
    actions: Iterable[str] = ("view", "command", "approve"),
    ttl_s: float = 3600,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    kid: str | None = None,
) -> str:
    """Sign a token (``gateway token``): ``key`` is the HS256 secret or a PEM private key.

    Raises:
        ValueError: an unknown action, or an empty subject.
    """
    acts = list(actions)
    unknown = sorted(set(acts) - set(ACTIONS))
    if unknown:
        raise ValueError(f"unknown actions {unknown}; known: {', '.join(ACTIONS)}")
    if not subject:
        raise ValueError("subject must not be empty")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "sessions": list(sessions),
        "actions": acts,
        "iat": now,
        "exp": now + int(ttl_s),
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, _pem(key) if algorithm in ASYMMETRIC else key, algorithm, headers)


def _pem(value: str) -> str:
    """PEM text as given, or read from the file it names."""
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def describe(principal: Principal) -> str:
    """A one-line JSON description of ``principal`` (logs, ``gateway token --show``)."""
    return json.dumps(
        {
            "sub": principal.subject,
            "sessions": list(principal.sessions),
            "actions": sorted(principal.actions),
        }
    )
