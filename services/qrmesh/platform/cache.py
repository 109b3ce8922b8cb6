"""Redis (or Valkey): one asyncio client per process."""

from __future__ import annotations

import redis.asyncio as redis

from qrmesh.platform.settings import SettingsError


def create_redis(url: str) -> redis.Redis:
    """A client for REDIS_URL (redis://, rediss://, unix:// or valkey+unix://)."""
    if url.startswith("valkey+unix://"):
        url = "unix://" + url.removeprefix("valkey+unix://")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {url!r}")
    return redis.from_url(url, health_check_interval=30, socket_connect_timeout=5)
