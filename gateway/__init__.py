"""Redis-backed streaming gateway for live AI-agent sessions.

Data flows one way: agent worker (``publisher``) → Redis (``streams`` owns every key) →
per-process fan-out (``hub``) → one SSE response per viewer (``connections``) → browser.
"""

__version__ = "0.1.0"
