"""Settings: every tunable of the gateway and the demo worker, read from the environment.

Environment variables use the ``GATEWAY_`` prefix (``GATEWAY_HEARTBEAT_INTERVAL=5``);
the Redis address is the conventional ``REDIS_URL``. Unset ``REDIS_URL`` means the
embedded in-process fakeredis, which only makes sense for ``gateway demo`` and unit tests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_FRONTEND = Path(__file__).resolve().parent.parent / "frontend"


class Settings(BaseSettings):
    """Gateway and worker settings. Durations are seconds, sizes are counts of events."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "GATEWAY_REDIS_URL")
    )
    key_prefix: str = "gw"
    insecure: bool = Field(
        default=False, description="Serve without token checks (development; --insecure)."
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 shared secret.")
    jwt_public_key: str | None = Field(
        default=None, description="RS256/ES256 public key: PEM text or a file path."
    )
    jwt_jwks_file: str | None = Field(default=None, description="A JWKS file of public keys.")
    jwt_audience: str | None = Field(default=None, description="Required `aud`, when set.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss`, when set.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from another site (JSON list); none = off.",
    )
    max_streams_per_subject: int = Field(
        default=32, ge=1, description="Open streams per token subject; the oldest is superseded."
    )
    connection_rate: int = Field(
        default=120, ge=1, description="Connections and streams a subject may open per minute."
    )
    redis_retry_budget: float = Field(
        default=10.0,
        ge=0,
        description="Redis Cluster: how long a command is retried through a failover.",
    )
    redis_max_connections: int = Field(
        default=6, ge=1, description="Command connections per process (plus one Pub/Sub)."
    )
    retention_maxlen: int = Field(
        default=20_000, ge=10, description="Events kept per session (approximate trim)."
    )
    retention_after_run: int = Field(
        default=1000,
        ge=0,
        description="Events kept once a run ends and its state is folded into the snapshot "
        "(0: no compaction).",
    )
    session_ttl: float = Field(
        default=30 * 86_400, gt=0, description="Idle time after which a session expires (s)."
    )
    connection_ttl: float = Field(default=3600.0, gt=0, description="Idle consumer offset TTL.")
    heartbeat_interval: float = Field(default=15.0, gt=0)
    gc_freeze: bool = Field(
        default=False,
        description="gc.freeze() once started, so the collector stops re-scanning start-up "
        "objects, and again every gc_freeze_interval (`gateway serve` turns it on).",
    )
    gc_freeze_interval: float = Field(
        default=10.0,
        ge=0,
        description="With gc_freeze: seconds between freezes of what survived a young "
        "collection, so full collections skip long-lived streams (0: only at start-up).",
    )
    gc_full_interval: float = Field(
        default=300.0,
        ge=0,
        description="With gc_freeze: seconds between full collections of frozen objects "
        "(frees garbage cycles among them; 0: never).",
    )
    auto_commit_interval: float = Field(default=0.25, gt=0)
    queue_size: int = Field(default=512, ge=8, description="Live events buffered per viewer.")
    catchup_page: int = Field(default=500, ge=1, description="Events per catch-up XRANGE.")
    sse_retry_ms: int = Field(default=2000, ge=100)
    frontend_dir: Path = _FRONTEND
    docs_dir: Path = _FRONTEND.parent / "docs"
    tokens_per_second: float = Field(
        default=40.0, gt=0, description="Demo worker answer pace, in tokens per second."
    )
    worker_name: str | None = None
    max_event_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted event data, in bytes (413)."
    )
    max_event_depth: int = Field(default=32, ge=2, description="Deepest accepted data nesting.")
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions to redact from event data (JSON list in env).",
    )
    run_lease_ttl: float = Field(
        default=15.0, gt=0, description="A worker's run lease; renewed at a third of it."
    )
    run_pickup_timeout: float = Field(
        default=60.0, gt=0, description="How long an accepted run may wait for a worker."
    )
    drain_timeout: float = Field(
        default=10.0, gt=0, description="SIGTERM: longest wait for open streams before exit."
    )
    drain_spread: float = Field(
        default=1.0, ge=0, description="SIGTERM: open streams are closed over this many seconds."
    )
    drain_retry_ms: int = Field(
        default=250, ge=0, description="SSE retry hint sent to streams closed by a drain."
    )
    command_claim_idle: float = Field(
        default=60.0, gt=0, description="Unacked command age before another worker reclaims it."
    )
    worker_drain_timeout: float = Field(
        default=20.0,
        ge=0,
        description="Worker SIGTERM: how long runs may finish before they are handed back.",
    )

    @property
    def requeue_grace(self) -> float:
        """Seconds a run may stay ``queued`` before a reaper sends its command again."""
        return min(5.0, self.run_pickup_timeout / 2)
