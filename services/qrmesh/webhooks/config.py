"""The webhooks service's own settings (QRMESH_WEBHOOKS_*), read from `Settings.extra`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qrmesh.platform.settings import Settings, SettingsError, int_setting
from qrmesh.webhooks.domain.retry import DEFAULT_SCHEDULE
from qrmesh.webhooks.domain.sealing import parse_key


def _int(extra: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return int_setting(
        {f"QRMESH_WEBHOOKS_{k}": v for k, v in extra.items()}, f"QRMESH_WEBHOOKS_{name}", default, low=low, high=high
    )


def flag(extra: Mapping[str, str], name: str, default: bool = False) -> bool:
    """QRMESH_WEBHOOKS_{name} as a boolean (true/false, yes/no, on/off, 1/0), `default` when unset."""
    raw = extra.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"QRMESH_WEBHOOKS_{name} must be true or false, got {raw!r}")


def seconds(extra: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """QRMESH_WEBHOOKS_{name} as seconds within [low, high], `default` when unset."""
    raw = extra.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"QRMESH_WEBHOOKS_{name} must be a number of seconds, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"QRMESH_WEBHOOKS_{name} must be between {low} and {high}, got {raw!r}")
    return value


def _key(raw: str) -> bytes | None:
    try:
        return parse_key(raw)
    except ValueError as exc:
        raise SettingsError(f"QRMESH_WEBHOOKS_SECRET_KEY {exc}") from None


def _schedule(raw: str) -> tuple[float, ...]:
    if not raw.strip():
        return DEFAULT_SCHEDULE
    try:
        steps = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"QRMESH_WEBHOOKS_RETRY_SCHEDULE must be seconds, comma-separated, got {raw!r}") from None
    if not steps or len(steps) > 20 or any(not 0 <= s <= 86400 for s in steps):
        raise SettingsError("QRMESH_WEBHOOKS_RETRY_SCHEDULE must be 1 to 20 steps of 0 to 86400 seconds")
    return steps


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """How deliveries are made, retried and batched, and where events come from."""

    allow_private_targets: bool = False
    """QRMESH_WEBHOOKS_ALLOW_PRIVATE_TARGETS (default false): let webhooks call loopback addresses (127.0.0.0/8,
    ::1). For tests and local development only; private, link-local and metadata addresses stay refused."""
    retry_schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    """QRMESH_WEBHOOKS_RETRY_SCHEDULE: seconds before each retry, comma-separated (default
    5,60,300,1800,7200,18000,36000,36000: about a day). Each wait is drawn in [step/2, step] (equal jitter)."""
    dispatch: bool = True
    """QRMESH_WEBHOOKS_DISPATCH (default true): run the delivery loop in this process. False serves the API and
    queues deliveries without sending any (another process sends them)."""
    concurrency: int = 32
    """QRMESH_WEBHOOKS_CONCURRENCY (default 32): deliveries in flight per process."""
    poll_interval: float = 1.0
    """QRMESH_WEBHOOKS_POLL_INTERVAL (seconds, default 1): how often the queue is looked at when idle."""
    connect_timeout: float = 5.0
    """QRMESH_WEBHOOKS_CONNECT_TIMEOUT (seconds, default 5)."""
    total_timeout: float = 10.0
    """QRMESH_WEBHOOKS_TIMEOUT (seconds, default 10): one attempt, redirects included."""
    max_redirects: int = 3
    """QRMESH_WEBHOOKS_MAX_REDIRECTS (default 3): redirects followed, each target checked again."""
    scans_stream: str = "scans"
    """QRMESH_WEBHOOKS_SCANS_STREAM (default "scans"): where scans come from."""
    scan_batch_size: int = 100
    """QRMESH_WEBHOOKS_SCAN_BATCH_SIZE (default 100): scans per `scan.recorded` delivery at most."""
    scan_batch_seconds: float = 5.0
    """QRMESH_WEBHOOKS_SCAN_BATCH_SECONDS (default 5): how long scans are gathered before they are sent."""
    claim_idle_ms: int = 60_000
    """QRMESH_WEBHOOKS_CLAIM_IDLE_MS (default 60000): stream entries pending longer are taken over."""
    secret_key: bytes | None = None
    """QRMESH_WEBHOOKS_SECRET_KEY: base64 of 32 random bytes that encrypt signing secrets at rest (AES-256-GCM).
    Unset: secrets are stored as issued in the service's own schema (never returned by the API again)."""
    cache_seconds: float = 5.0
    """QRMESH_WEBHOOKS_CACHE_SECONDS (default 5): how long an organization's subscriptions are cached by the
    consumers (changes in this process drop the cache at once)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhooksConfig:
        """Parse QRMESH_WEBHOOKS_* variables, failing with a message that names the bad one."""
        extra = dict(settings.extra)
        return cls(
            allow_private_targets=flag(extra, "ALLOW_PRIVATE_TARGETS"),
            dispatch=flag(extra, "DISPATCH", True),
            retry_schedule=_schedule(extra.get("RETRY_SCHEDULE", "")),
            concurrency=_int(extra, "CONCURRENCY", 32, low=1, high=1024),
            poll_interval=seconds(extra, "POLL_INTERVAL", 1.0, low=0.05, high=60),
            connect_timeout=seconds(extra, "CONNECT_TIMEOUT", 5.0, low=0.1, high=60),
            total_timeout=seconds(extra, "TIMEOUT", 10.0, low=0.1, high=120),
            max_redirects=_int(extra, "MAX_REDIRECTS", 3, low=0, high=10),
            scans_stream=extra.get("SCANS_STREAM", "").strip() or "scans",
            scan_batch_size=_int(extra, "SCAN_BATCH_SIZE", 100, low=1, high=1000),
            scan_batch_seconds=seconds(extra, "SCAN_BATCH_SECONDS", 5.0, low=0.01, high=300),
            claim_idle_ms=_int(extra, "CLAIM_IDLE_MS", 60_000, low=100, high=86_400_000),
            cache_seconds=seconds(extra, "CACHE_SECONDS", 5.0, low=0, high=300),
            secret_key=_key(extra.get("SECRET_KEY", "")),
        )
