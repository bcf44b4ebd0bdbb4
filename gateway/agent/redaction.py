"""Redaction: secrets that tools print are masked before an event is stored.

The publisher applies :class:`Redactor` to every string inside an event's ``data`` (keys
and values, at any depth) before the publish script runs, so neither the log, a replay nor a
snapshot ever holds them. Built-in patterns cover common credential shapes; more come from
``GATEWAY_REDACT_PATTERNS`` (a JSON list of regular expressions).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "[REDACTED]"

# Shapes of well-known credentials, each with what replaces a match.
BUILTIN_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----", MASK),
    (r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}", MASK),  # OpenAI / Anthropic style API keys
    (r"\bAKIA[0-9A-Z]{16}\b", MASK),  # AWS access key id
    (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", MASK),  # GitHub tokens
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", MASK),  # Slack tokens
    (r"\bAIza[0-9A-Za-z_-]{35}\b", MASK),  # Google API keys
    (r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", MASK),  # JWTs
    (r"(?i:(\bbearer\s+))[A-Za-z0-9._~+/-]{16,}=*", r"\1" + MASK),  # Authorization headers
    # key = value assignments of secrets: keep the name, mask the value.
    (
        r"(?i:(\b(?:api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token)"
        r"[\"']?\s*[:=]\s*[\"']?))[^\s\"',;]{8,}",
        r"\1" + MASK,
    ),
)


# Every built-in shape contains one of these (compared lower-cased): a string holding none
# of them cannot match a built-in pattern, so the patterns need not run on it. Keep this in
# step with BUILTIN_PATTERNS (tests/test_units.py checks the two agree on random text).
BUILTIN_LITERALS = (
    "-----begin", "sk-", "akia", "gh", "xox", "aiza", "eyj", "bearer",
    "api", "secret", "passw", "token",
)  # fmt: skip


class Redactor:
    """Masks secrets in strings and JSON-like values.

    Redaction works on one event at a time: a secret that a model streams across several
    ``message.delta`` events is not seen whole (tool output arrives whole and is covered).

    Args:
        extra: additional regular expressions; each match is replaced by ``[REDACTED]``.

    Raises:
        re.error: an extra pattern does not compile.
    """

    def __init__(self, extra: tuple[str, ...] | list[str] = ()) -> None:
        rules = [*BUILTIN_PATTERNS, *((p, MASK) for p in extra)]
        self.rules = [(re.compile(p), repl) for p, repl in rules]
        # Most strings hold no secret, and nine regex scans of each were most of a small
        # publish's cost: strings without any built-in shape's literal skip those patterns.
        self._extra = self.rules[len(BUILTIN_PATTERNS) :]

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``[REDACTED]``."""
        low = value.lower()
        rules = self.rules if any(lit in low for lit in BUILTIN_LITERALS) else self._extra
        for pattern, repl in rules:
            value = pattern.sub(repl, value)
        return value

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value
