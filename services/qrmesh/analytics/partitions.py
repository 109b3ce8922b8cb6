"""Monthly partitions of the raw `analytics.scans` table.

One partition per UTC month, named `scans_YYYYMM`, holding [first of the
month, first of the next month). The current month and the next
`AHEAD` months are created when the service starts and once a day after
that; a month an arriving event needs (a late or replayed event, a clock
far off) is created on demand before the batch that needs it is written.
Creation is idempotent and serialized by an advisory lock, so replicas
racing to create the same month do not fail. CREATE and DROP need the parent
table's ACCESS EXCLUSIVE lock, and a DDL statement waiting for it (behind a
long read, an export) makes every insert queue behind it: each waits at most
`LOCK_TIMEOUT` and is retried (`LOCK_ATTEMPTS` times, in a savepoint) before the
round fails and is tried again later.

The naming and month arithmetic here are pure and unit-tested; the
functions taking a connection run the DDL.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

SCHEMA = "analytics"
PARENT = "scans"
AHEAD = 2
"""Months created ahead of the current one."""
_NAME = re.compile(r"^scans_(\d{4})(\d{2})$")
_LOCK = zlib.crc32(b"qrmesh-analytics-partitions")
LOCK_TIMEOUT = "2s"
"""How long one partition DDL statement waits for the parent table's lock."""
LOCK_ATTEMPTS = 5
RETRY_PAUSE = 1.0
_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True, order=True)
class Month:
    """A UTC calendar month."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1 <= self.year <= 9999:
            raise ValueError(f"not a month: {self.year}-{self.month}")

    @classmethod
    def of(cls, moment: datetime | date) -> Month:
        """The UTC month holding this moment (a naive datetime is taken as UTC)."""
        if isinstance(moment, datetime) and moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    def plus(self, months: int) -> Month:
        """This month shifted by `months` (negative: back)."""
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        """The month's first instant, UTC."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The next month's first instant, UTC (exclusive bound)."""
        return self.plus(1).start

    @property
    def name(self) -> str:
        """The partition's table name, `scans_YYYYMM`."""
        return f"{PARENT}_{self.year:04d}{self.month:02d}"


def month_of_partition(name: str) -> Month | None:
    """The month a partition name stands for; None when it is not one of ours."""
    match = _NAME.match(name)
    if match is None:
        return None
    try:
        return Month(int(match.group(1)), int(match.group(2)))
    except ValueError:
        return None


def months_ahead(now: datetime, ahead: int = AHEAD) -> list[Month]:
    """The months that should exist at `now`: the current one and `ahead` after it."""
    current = Month.of(now)
    return [current.plus(offset) for offset in range(ahead + 1)]


def months_for(times: Iterable[datetime]) -> set[Month]:
    """The months these event times (UTC) fall in."""
    return {Month(year, month) for year, month in {(moment.year, moment.month) for moment in times}}


def create_statement(month: Month) -> str:
    """DDL creating the month's partition if it is missing."""
    return (
        f'CREATE TABLE IF NOT EXISTS "{SCHEMA}"."{month.name}" PARTITION OF "{SCHEMA}"."{PARENT}" '
        f"FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
    )


def drop_statement(month: Month) -> str:
    """DDL dropping the month's partition (its rows with it)."""
    return f'DROP TABLE IF EXISTS "{SCHEMA}"."{month.name}"'


async def existing(connection: AsyncConnection) -> set[Month]:
    """The months that have a partition."""
    rows = await connection.execute(
        text(
            "SELECT child.relname FROM pg_inherits "
            "JOIN pg_class parent ON parent.oid = pg_inherits.inhparent "
            "JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "JOIN pg_namespace ns ON ns.oid = parent.relnamespace "
            "WHERE ns.nspname = :schema AND parent.relname = :parent"
        ),
        {"schema": SCHEMA, "parent": PARENT},
    )
    months = (month_of_partition(str(name)) for (name,) in rows)
    return {month for month in months if month is not None}


def _lock_not_available(error: DBAPIError) -> bool:
    original = getattr(error, "orig", None)
    return _LOCK_NOT_AVAILABLE in {getattr(original, "sqlstate", None), getattr(original, "pgcode", None)} or (
        "lock timeout" in str(error)
    )


async def _ddl(connection: AsyncConnection, statement: str, *, attempts: int, pause: float) -> None:
    """Run one DDL statement waiting at most LOCK_TIMEOUT for its locks, in a savepoint, retried."""
    await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    for attempt in range(1, attempts + 1):
        try:
            async with connection.begin_nested():
                await connection.execute(text(statement))
            return
        except DBAPIError as exc:
            if attempt == attempts or not _lock_not_available(exc):
                raise
        await asyncio.sleep(pause)


async def ensure(
    connection: AsyncConnection,
    months: Iterable[Month],
    *,
    attempts: int = LOCK_ATTEMPTS,
    pause: float = RETRY_PAUSE,
) -> list[Month]:
    """Create the partitions of these months that are missing, in the connection's transaction (commit it);
    the months created."""
    wanted = sorted(set(months))
    if not wanted:
        return []
    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    have = await existing(connection)
    created = [month for month in wanted if month not in have]
    for month in created:
        await _ddl(connection, create_statement(month), attempts=attempts, pause=pause)
    return created


async def drop(connection: AsyncConnection, months: Iterable[Month]) -> list[Month]:
    """Drop the partitions of these months that exist, in the connection's transaction; the months dropped."""
    wanted = sorted(set(months))
    if not wanted:
        return []
    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    have = await existing(connection)
    dropped = [month for month in wanted if month in have]
    for month in dropped:
        await _ddl(connection, drop_statement(month), attempts=LOCK_ATTEMPTS, pause=RETRY_PAUSE)
    return dropped
