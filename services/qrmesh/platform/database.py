"""PostgreSQL: one async engine per process (SQLAlchemy 2 on asyncpg), a schema
per service, and Alembic migrations applied at start under an advisory lock so
that replicas starting together migrate once."""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from qrmesh.platform.settings import SettingsError

_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}


def async_url(url: str) -> URL:
    """DATABASE_URL as a SQLAlchemy URL for asyncpg (postgres:// and postgresql:// accepted)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types here
        raise SettingsError(f"DATABASE_URL is not a valid URL: {exc}") from None
    if parsed.drivername not in _SCHEMES:
        raise SettingsError(f"DATABASE_URL must start with postgresql://, got {parsed.drivername}://")
    return parsed.set(drivername="postgresql+asyncpg")


def create_engine(url: str, *, schema: str, pool_size: int = 10) -> AsyncEngine:
    """An engine whose connections look in `schema` first."""
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": {"search_path": f"{schema},public", "application_name": f"qrmesh-{schema}"}},
    )


def alembic_config(migrations: Path, schema: str) -> Config:
    """An Alembic config for a service's migrations folder."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("path_separator", "os")
    config.attributes["schema"] = schema
    return config


def _upgrade(connection: Connection, config: Config, schema: str, revision: str) -> None:
    key = zlib.crc32(f"qrmesh-migrate-{schema}".encode())
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
    try:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.commit()


async def migrate(engine: AsyncEngine, migrations: Path, schema: str, revision: str = "head") -> None:
    """Apply the service's migrations up to `revision` (idempotent, safe to race)."""
    config = alembic_config(migrations, schema)
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade, config, schema, revision)
