"""Process settings, read from the environment once and frozen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _text(environ: Mapping[str, str], name: str, default: str | None) -> str:
    value = environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise SettingsError(f"{name} is not set; it is required (see README, 'Configuration')")
    return default


def int_setting(environ: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    """The integer variable `name` within [low, high], or `default` when unset; SettingsError names it."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(environ: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service process is configured with."""

    service: str
    """Which service this process runs (e.g. "qr")."""
    database_url: str
    """PostgreSQL URL (DATABASE_URL), e.g. postgresql://postgres@127.0.0.1:5432/qrmesh."""
    redis_url: str
    """Redis or Valkey URL (REDIS_URL), e.g. redis://127.0.0.1:6379/0."""
    host: str = "127.0.0.1"
    """Address the gRPC server binds (QRMESH_GRPC_HOST); "[::]" for every interface."""
    port: int = 0
    """Port the gRPC server binds (QRMESH_GRPC_PORT); 0 picks a free port."""
    public_base_url: str = "http://127.0.0.1:8080"
    """Base URL of the edge as users reach it (QRMESH_PUBLIC_BASE_URL)."""
    log_level: str = "info"
    """Log level (QRMESH_LOG_LEVEL): debug, info, warning, error."""
    log_format: str = "json"
    """Log format (QRMESH_LOG_FORMAT): json for machines, text for people."""
    shutdown_grace: float = 10.0
    """Seconds in-flight RPCs get to finish on SIGTERM (QRMESH_SHUTDOWN_GRACE)."""
    default_deadline: float = 5.0
    """Deadline in seconds put on outgoing RPCs that set none (QRMESH_DEFAULT_DEADLINE)."""
    db_pool_size: int = 10
    """Connections kept in the database pool (QRMESH_DB_POOL_SIZE)."""
    otlp_endpoint: str | None = None
    """OTLP gRPC endpoint for traces (OTEL_EXPORTER_OTLP_ENDPOINT); no export when unset."""
    metrics_host: str = ""
    """Address the Prometheus `/metrics` server binds (QRMESH_METRICS_HOST); empty: the gRPC host."""
    metrics_port: int = 0
    """Port of the `/metrics` server (QRMESH_METRICS_PORT, 9464 when unset); 0 picks a free port."""
    identity_address: str = ""
    """host:port of the identity service (QRMESH_IDENTITY_ADDR), for verifying callers."""
    service_secret: str = ""
    """Shared secret that proves one service to another (QRMESH_SERVICE_SECRET); internal RPCs
    are refused while it is empty."""
    rate_user_per_second: float = 20.0
    """Calls a second each user may make per organization (QRMESH_RATE_USER_PER_SECOND; 0: unlimited),
    unless the service's rate policy (plans) says otherwise."""
    rate_user_burst: int = 100
    """Calls a user may make at once before the per-second rate applies (QRMESH_RATE_USER_BURST)."""
    rate_api_key_per_second: float = 20.0
    """Calls a second each API key may make (QRMESH_RATE_API_KEY_PER_SECOND; 0: unlimited)."""
    rate_api_key_burst: int = 100
    """Calls an API key may make at once (QRMESH_RATE_API_KEY_BURST)."""
    rate_anonymous_per_second: float = 20.0
    """Calls a second to public RPCs from one client address (IPv6: one /64) by callers who are not
    signed in (QRMESH_RATE_ANONYMOUS_PER_SECOND; 0: unlimited)."""
    rate_anonymous_burst: int = 100
    """Calls an address may make at once (QRMESH_RATE_ANONYMOUS_BURST)."""
    rate_timeout: float = 0.2
    """Seconds the rate limiter waits for Redis before letting the call through (QRMESH_RATE_TIMEOUT)."""
    events_stream: str = "events"
    """Redis stream of domain events (QRMESH_EVENTS_STREAM): `qrmesh.events.v1.Event` entries."""
    mail_stream: str = "mail"
    """Redis stream of mail to send (QRMESH_MAIL_STREAM): `qrmesh.events.v1.Mail` entries."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Service-specific variables (QRMESH_<SERVICE>_*), for the service to parse."""

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None, *, port: int = 0) -> Settings:
        """Read settings for `service` from the environment, failing on the first bad variable."""
        env = os.environ if environ is None else environ
        prefix = f"QRMESH_{service.upper()}_"
        return cls(
            service=service,
            database_url=_text(env, "DATABASE_URL", None),
            redis_url=_text(env, "REDIS_URL", None),
            host=_text(env, "QRMESH_GRPC_HOST", "127.0.0.1"),
            port=int_setting(env, "QRMESH_GRPC_PORT", port, low=0, high=65535),
            public_base_url=_text(env, "QRMESH_PUBLIC_BASE_URL", "http://127.0.0.1:8080").rstrip("/"),
            log_level=_choice(env, "QRMESH_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=_choice(env, "QRMESH_LOG_FORMAT", "json", ("json", "text")),
            shutdown_grace=_float(env, "QRMESH_SHUTDOWN_GRACE", 10.0, low=0.0, high=600.0),
            default_deadline=_float(env, "QRMESH_DEFAULT_DEADLINE", 5.0, low=0.05, high=600.0),
            db_pool_size=int_setting(env, "QRMESH_DB_POOL_SIZE", 10, low=1, high=200),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None,
            metrics_host=env.get("QRMESH_METRICS_HOST", "").strip(),
            metrics_port=int_setting(env, "QRMESH_METRICS_PORT", 9464, low=0, high=65535),
            identity_address=env.get("QRMESH_IDENTITY_ADDR", "").strip(),
            service_secret=env.get("QRMESH_SERVICE_SECRET", "").strip(),
            rate_user_per_second=_float(env, "QRMESH_RATE_USER_PER_SECOND", 20.0, low=0.0, high=1e6),
            rate_user_burst=int_setting(env, "QRMESH_RATE_USER_BURST", 100, low=1, high=1_000_000),
            rate_api_key_per_second=_float(env, "QRMESH_RATE_API_KEY_PER_SECOND", 20.0, low=0.0, high=1e6),
            rate_api_key_burst=int_setting(env, "QRMESH_RATE_API_KEY_BURST", 100, low=1, high=1_000_000),
            rate_anonymous_per_second=_float(env, "QRMESH_RATE_ANONYMOUS_PER_SECOND", 20.0, low=0.0, high=1e6),
            rate_anonymous_burst=int_setting(env, "QRMESH_RATE_ANONYMOUS_BURST", 100, low=1, high=1_000_000),
            rate_timeout=_float(env, "QRMESH_RATE_TIMEOUT", 0.2, low=0.001, high=10.0),
            events_stream=_text(env, "QRMESH_EVENTS_STREAM", "events"),
            mail_stream=_text(env, "QRMESH_MAIL_STREAM", "mail"),
            extra={k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix)},
        )
