"""The redirect's own settings (QRMESH_REDIRECT_*), read from `Settings.extra`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from qrmesh.platform.settings import Settings, SettingsError, int_setting


def _int(extra: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return int_setting(
        {f"QRMESH_REDIRECT_{k}": v for k, v in extra.items()}, f"QRMESH_REDIRECT_{name}", default, low=low, high=high
    )


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    """Where the redirect listens, whom it asks, where it spools."""

    http_host: str
    """QRMESH_REDIRECT_HTTP_HOST (default: the gRPC host)."""
    http_port: int
    """QRMESH_REDIRECT_HTTP_PORT (default 8081; 0 picks a free port)."""
    qr_address: str
    """QRMESH_REDIRECT_QR_ADDR: host:port of the qr service (links, scan limits)."""
    spool_dir: Path
    """QRMESH_REDIRECT_SPOOL_DIR: where scan events wait while Redis is unreachable (default .qrmesh/spool)."""
    visitor_secret: bytes
    """QRMESH_REDIRECT_VISITOR_SECRET: keys the daily visitor hash and A/B stickiness (default: derived
    from QRMESH_SERVICE_SECRET). Every redirect process must share it."""
    cache_entries: int = 100_000
    """QRMESH_REDIRECT_CACHE_ENTRIES: links kept in memory."""
    password_attempts: int = 10
    """QRMESH_REDIRECT_PASSWORD_ATTEMPTS: wrong passwords per code and address per 15 minutes."""
    stream_maxlen: int = 0
    """QRMESH_REDIRECT_STREAM_MAXLEN: trim the `scans` stream to about this many entries (0: never)."""
    stream: str = "scans"
    """QRMESH_REDIRECT_STREAM: the Redis stream scan events go to (default `scans`; tests use private ones)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RedirectConfig:
        extra = dict(settings.extra)
        secret = extra.get("VISITOR_SECRET", "").strip()
        if secret:
            visitor_secret = secret.encode()
        elif settings.service_secret:
            visitor_secret = hashlib.sha256(b"qrmesh visitor secret\x00" + settings.service_secret.encode()).digest()
        else:
            raise SettingsError(
                "QRMESH_REDIRECT_VISITOR_SECRET (or QRMESH_SERVICE_SECRET) must be set: it keys visitor hashes"
            )
        return cls(
            http_host=extra.get("HTTP_HOST", "").strip() or settings.host,
            http_port=_int(extra, "HTTP_PORT", 8081, low=0, high=65535),
            qr_address=extra.get("QR_ADDR", "").strip(),
            spool_dir=Path(extra.get("SPOOL_DIR", "").strip() or ".qrmesh/spool"),
            visitor_secret=visitor_secret,
            cache_entries=_int(extra, "CACHE_ENTRIES", 100_000, low=100, high=10_000_000),
            password_attempts=_int(extra, "PASSWORD_ATTEMPTS", 10, low=1, high=1000),
            stream_maxlen=_int(extra, "STREAM_MAXLEN", 0, low=0, high=1_000_000_000),
            stream=extra.get("STREAM", "").strip() or "scans",
        )
