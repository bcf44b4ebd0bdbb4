"""Errors: the one error type of the gateway, with an HTTP status and a machine-readable code.

Every error the HTTP API, the Durable Streams endpoint and authentication answer with is a
:class:`GatewayError`, rendered as ``{"code": ..., "message": ...}`` with its ``status`` and
``headers``. Domain errors that callers also catch by kind (an invalid offset, a refused
publish) are subclasses, so the API needs no translation table.
"""

from __future__ import annotations


class GatewayError(Exception):
    """An error answered as ``{"code", "message"}`` with HTTP ``status`` and ``headers``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"
