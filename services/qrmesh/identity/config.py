"""The identity service's own settings (QRMESH_IDENTITY_*), read from `Settings.extra`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from qrmesh.platform.settings import Settings, int_setting


def _int(extra: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return int_setting(
        {f"QRMESH_IDENTITY_{k}": v for k, v in extra.items()}, f"QRMESH_IDENTITY_{name}", default, low=low, high=high
    )


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """Token lifetimes, key rotation and key protection."""

    access_token_ttl: timedelta = timedelta(minutes=15)
    """QRMESH_IDENTITY_ACCESS_TOKEN_TTL (seconds, default 900)."""
    refresh_token_ttl: timedelta = timedelta(days=30)
    """QRMESH_IDENTITY_REFRESH_TOKEN_TTL_DAYS (default 30)."""
    key_rotation: timedelta = timedelta(days=30)
    """QRMESH_IDENTITY_KEY_ROTATION_DAYS (default 30): a signing key older than this is replaced."""
    key_passphrase: bytes | None = None
    """QRMESH_IDENTITY_KEY_PASSPHRASE: when set, private signing keys are stored encrypted with it."""
    email_token_ttl: timedelta = timedelta(hours=24)
    """How long verification emails' tokens work."""
    reset_token_ttl: timedelta = timedelta(hours=1)
    """How long password reset tokens work."""
    invitation_ttl: timedelta = timedelta(days=7)
    """How long invitations can be accepted."""
    public_base_url: str = "http://127.0.0.1:8080"
    """Where links in emails point."""
    max_owned_organizations: int = 20
    """QRMESH_IDENTITY_MAX_OWNED_ORGANIZATIONS (default 20): organizations one user may own; each new
    organization starts on the free plan with allowances of its own, so they are not unlimited."""

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityConfig:
        """Parse QRMESH_IDENTITY_* variables, failing with a message that names the bad one."""
        extra = dict(settings.extra)
        passphrase = extra.get("KEY_PASSPHRASE", "")
        return cls(
            access_token_ttl=timedelta(seconds=_int(extra, "ACCESS_TOKEN_TTL", 900, low=60, high=86_400)),
            refresh_token_ttl=timedelta(days=_int(extra, "REFRESH_TOKEN_TTL_DAYS", 30, low=1, high=365)),
            key_rotation=timedelta(days=_int(extra, "KEY_ROTATION_DAYS", 30, low=1, high=3650)),
            key_passphrase=passphrase.encode("utf-8") if passphrase else None,
            public_base_url=settings.public_base_url,
            max_owned_organizations=_int(extra, "MAX_OWNED_ORGANIZATIONS", 20, low=1, high=100_000),
        )
