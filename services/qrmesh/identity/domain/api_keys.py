"""API key rules: the scopes a key may carry and its expiry."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from qrmesh.platform.errors import InvalidArgument

SCOPES = frozenset({"qr:read", "qr:write", "analytics:read", "webhooks:write", "members:read"})
# last_use_time is written at most this often per key, so busy keys cause no write storm.
LAST_USE_RESOLUTION_SECONDS = 60


def check_scopes(scopes: Iterable[str], *, field: str = "apiKey.scopes") -> tuple[str, ...]:
    """The scopes, deduplicated and sorted; InvalidArgument if none or one is unknown."""
    unique = sorted(set(scopes))
    if not unique:
        raise InvalidArgument.field(field, "must name at least one scope", reason="INVALID_SCOPE")
    unknown = [scope for scope in unique if scope not in SCOPES]
    if unknown:
        known = ", ".join(sorted(SCOPES))
        raise InvalidArgument.field(
            field, f"unknown scope {unknown[0]!r}; known scopes are {known}", reason="INVALID_SCOPE"
        )
    return tuple(unique)


def check_expiry(expires_at: datetime | None, now: datetime, *, field: str = "apiKey.expireTime") -> None:
    """InvalidArgument if a requested expiry is not in the future."""
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument.field(field, "must be in the future", reason="INVALID_EXPIRE_TIME")


def is_active(*, revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> bool:
    """Whether a key works at `now`."""
    return revoked_at is None and (expires_at is None or now < expires_at)
