"""Settings read once from the environment, with errors that name the variable."""

from __future__ import annotations

import pytest

from qrmesh.platform.settings import Settings, SettingsError

BASE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1/qrmesh", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_defaults() -> None:
    settings = Settings.from_env("qr", BASE, port=50051)
    assert settings.port == 50051
    assert settings.host == "127.0.0.1"
    assert settings.otlp_endpoint is None
    assert settings.log_format == "json"


def test_environment_overrides_and_service_extras() -> None:
    env = {**BASE, "QRMESH_GRPC_PORT": "6000", "QRMESH_QR_SHORT_DOMAIN": "qr.example", "QRMESH_LOG_FORMAT": "TEXT"}
    settings = Settings.from_env("qr", env)
    assert settings.port == 6000
    assert settings.log_format == "text"
    assert settings.extra == {"SHORT_DOMAIN": "qr.example"}


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env("qr", env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("QRMESH_GRPC_PORT", "http", "QRMESH_GRPC_PORT must be an integer, got 'http'"),
        ("QRMESH_GRPC_PORT", "70000", "QRMESH_GRPC_PORT must be between 0 and 65535, got 70000"),
        ("QRMESH_SHUTDOWN_GRACE", "soon", "QRMESH_SHUTDOWN_GRACE must be a number, got 'soon'"),
        ("QRMESH_LOG_LEVEL", "loud", "QRMESH_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'"),
    ],
)
def test_malformed_values_are_explained(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("qr", {**BASE, name: value})
    assert str(caught.value) == message


def test_settings_are_frozen() -> None:
    settings = Settings.from_env("qr", BASE)
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
