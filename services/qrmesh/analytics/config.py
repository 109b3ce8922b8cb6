"""The analytics service's own settings (QRMESH_ANALYTICS_*), read from `Settings.extra`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qrmesh.platform.settings import Settings, SettingsError, int_setting


def _int(extra: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return int_setting(
        {f"QRMESH_ANALYTICS_{k}": v for k, v in extra.items()}, f"QRMESH_ANALYTICS_{name}", default, low=low, high=high
    )


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """Where scans come from, how they are consumed, how long raw scans are kept."""

    stream: str = "scans"
    """QRMESH_ANALYTICS_STREAM: the Redis stream of scan events (default `scans`)."""
    group: str = "analytics"
    """QRMESH_ANALYTICS_GROUP: the consumer group on it (default `analytics`)."""
    group_start: str = "0"
    """QRMESH_ANALYTICS_GROUP_START: where a group created now starts: "0" (default: every event still in
    the stream, so events written before analytics first ran are counted) or "$" (only new ones)."""
    batch: int = 5000
    """QRMESH_ANALYTICS_BATCH: entries read per XREADGROUP and written per transaction (larger batches sum
    more scans into each rollup row; bench/analytics_ingest.py)."""
    block_ms: int = 1000
    """QRMESH_ANALYTICS_BLOCK_MS: how long one XREADGROUP waits for new entries."""
    claim_idle_ms: int = 60_000
    """QRMESH_ANALYTICS_CLAIM_IDLE_MS: pending entries idle this long (their consumer died) are claimed."""
    max_deliveries: int = 5
    """QRMESH_ANALYTICS_MAX_DELIVERIES: deliveries of an entry that keeps failing before it is dead-lettered."""
    retention_days: int = 365
    """QRMESH_ANALYTICS_RETENTION_DAYS: days raw scans are kept for organizations without a retention of
    their own (rollups are kept)."""
    geoip_city_db: Path | None = None
    """QRMESH_ANALYTICS_GEOIP_CITY_DB: a MaxMind-format (.mmdb) city database for region and city; without
    one both stay empty."""
    consumers: int = 1
    """QRMESH_ANALYTICS_CONSUMERS: stream consumers per process (0: this process only answers queries)."""
    qr_address: str = ""
    """QRMESH_ANALYTICS_QR_ADDR: host:port of the qr service (which codes a folder or tag holds)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> AnalyticsConfig:
        extra = dict(settings.extra)
        geoip = extra.get("GEOIP_CITY_DB", "").strip()
        path = Path(geoip) if geoip else None
        if path is not None and not path.is_file():
            raise SettingsError(f"QRMESH_ANALYTICS_GEOIP_CITY_DB={geoip}: no such file")
        start = extra.get("GROUP_START", "").strip() or "0"
        if start not in {"0", "$"}:
            raise SettingsError(f'QRMESH_ANALYTICS_GROUP_START must be "0" or "$", got {start!r}')
        return cls(
            group_start=start,
            stream=extra.get("STREAM", "").strip() or "scans",
            group=extra.get("GROUP", "").strip() or "analytics",
            batch=_int(extra, "BATCH", 5000, low=1, high=100_000),
            block_ms=_int(extra, "BLOCK_MS", 1000, low=1, high=60_000),
            claim_idle_ms=_int(extra, "CLAIM_IDLE_MS", 60_000, low=100, high=86_400_000),
            max_deliveries=_int(extra, "MAX_DELIVERIES", 5, low=1, high=1000),
            retention_days=_int(extra, "RETENTION_DAYS", 365, low=1, high=36_500),
            geoip_city_db=path,
            consumers=_int(extra, "CONSUMERS", 1, low=0, high=64),
            qr_address=extra.get("QR_ADDR", "").strip(),
        )
