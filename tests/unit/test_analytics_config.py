"""The analytics service's settings (QRMESH_ANALYTICS_*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.platform.settings import Settings, SettingsError

BASE = {"DATABASE_URL": "postgresql://db/qrmesh", "REDIS_URL": "redis://redis:6379/0"}


def config(environ: dict[str, str]) -> AnalyticsConfig:
    return AnalyticsConfig.from_settings(Settings.from_env("analytics", {**BASE, **environ}))


def test_defaults() -> None:
    default = config({})
    assert (default.stream, default.group, default.group_start) == ("scans", "analytics", "0")
    assert default.retention_days == 365
    assert default.geoip_city_db is None
    assert default.consumers >= 1


def test_every_setting(tmp_path: Path) -> None:
    database = tmp_path / "city.mmdb"
    database.write_bytes(b"")
    chosen = config(
        {
            "QRMESH_ANALYTICS_STREAM": "scans-eu",
            "QRMESH_ANALYTICS_GROUP": "analytics-eu",
            "QRMESH_ANALYTICS_GROUP_START": "$",
            "QRMESH_ANALYTICS_BATCH": "500",
            "QRMESH_ANALYTICS_BLOCK_MS": "50",
            "QRMESH_ANALYTICS_CLAIM_IDLE_MS": "5000",
            "QRMESH_ANALYTICS_MAX_DELIVERIES": "3",
            "QRMESH_ANALYTICS_RETENTION_DAYS": "730",
            "QRMESH_ANALYTICS_GEOIP_CITY_DB": str(database),
            "QRMESH_ANALYTICS_CONSUMERS": "0",
            "QRMESH_ANALYTICS_QR_ADDR": "qr:50051",
        }
    )
    assert chosen == AnalyticsConfig(
        stream="scans-eu",
        group="analytics-eu",
        group_start="$",
        batch=500,
        block_ms=50,
        claim_idle_ms=5000,
        max_deliveries=3,
        retention_days=730,
        geoip_city_db=database,
        consumers=0,
        qr_address="qr:50051",
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BATCH", "0", "QRMESH_ANALYTICS_BATCH"),
        ("RETENTION_DAYS", "many", "QRMESH_ANALYTICS_RETENTION_DAYS"),
        ("GROUP_START", "1-0", "QRMESH_ANALYTICS_GROUP_START"),
        ("GEOIP_CITY_DB", "/nonexistent/city.mmdb", "no such file"),
    ],
)
def test_bad_settings_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        config({f"QRMESH_ANALYTICS_{name}": value})
