"""Daily upkeep of the raw scans: partitions ahead, retention, the visitor dedup table.

Runs at start and then once a day, in one replica at a time (a PostgreSQL
advisory lock; a replica that does not get it skips that round):
- create the current month's partition and the next `partitions.AHEAD`;
- drop whole partitions older than the longest retention of any organization
  (`domain.retention`), and delete rows of organizations with a shorter one;
- forget `daily_visitors` rows older than `KEEP_VISITOR_DAYS` (visitor ids change
  every UTC day, so no later scan can match them; the consumer gives scans of
  such days no unique) and dead letters older than `KEEP_DEAD_LETTER_DAYS`;
- trim the scan stream below what every consumer group has acknowledged
  (`trim_stream`).

Rows are deleted `DELETE_BATCH` at a time, each batch its own transaction, so
no statement holds locks for long. The first round runs in the background
after start (consumers create the partitions they need themselves).

Per-organization retention is read from `analytics.organization_retention`
(organization_id, days); organizations without a row keep
QRMESH_ANALYTICS_RETENTION_DAYS. `set_organization_retention` is the hook plans
will call.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from qrmesh.analytics import partitions
from qrmesh.analytics.domain import retention
from qrmesh.platform import tasks

log = logging.getLogger("qrmesh.analytics.retention")

EVERY = 86_400.0
RETRY = 300.0
KEEP_VISITOR_DAYS = 3
KEEP_DEAD_LETTER_DAYS = 30
DELETE_BATCH = 10_000
"""Raw rows deleted per statement."""
_LOCK = zlib.crc32(b"qrmesh-analytics-retention")


@dataclass(slots=True)
class Report:
    """What one round did."""

    created: list[partitions.Month] = field(default_factory=list)
    dropped: list[partitions.Month] = field(default_factory=list)
    deleted_rows: int = 0
    pruned_visitors: int = 0
    pruned_dead_letters: int = 0
    longest_days: int = 0
    ran: bool = True
    """False when another replica held the lock (only `longest_days` was read)."""


async def organization_retention(connection: AsyncConnection) -> dict[str, int]:
    """Organizations with a retention of their own, in days."""
    rows = await connection.execute(text("SELECT organization_id, days FROM analytics.organization_retention"))
    return {str(organization): int(days) for organization, days in rows}


async def set_organization_retention(connection: AsyncConnection, organization_id: str, days: int | None) -> None:
    """Give an organization its own retention (None: back to the default)."""
    if days is None:
        await connection.execute(
            text("DELETE FROM analytics.organization_retention WHERE organization_id = :org"), {"org": organization_id}
        )
        return
    if days <= 0:
        raise ValueError("a retention is at least one day")
    await connection.execute(
        text(
            "INSERT INTO analytics.organization_retention (organization_id, days) VALUES (:org, :days) "
            "ON CONFLICT (organization_id) DO UPDATE SET days = excluded.days"
        ),
        {"org": organization_id, "days": days},
    )


async def _delete(connection: AsyncConnection, deletion: retention.Deletion, *, batch: int = DELETE_BATCH) -> int:
    """Delete the rows of a deletion, `batch` rows per statement, each in a transaction of its own."""
    where = "time < :before"
    params: dict[str, object] = {"before": deletion.before, "limit": batch}
    if deletion.organizations:
        where += " AND organization_id NOT IN :orgs" if deletion.exclude else " AND organization_id IN :orgs"
        params["orgs"] = list(deletion.organizations)
    elif not deletion.exclude:
        return 0
    statement = text(
        "DELETE FROM analytics.scans WHERE (time, event_id) IN ("  # noqa: S608 - constant text, bound values
        f"SELECT time, event_id FROM analytics.scans WHERE {where} LIMIT :limit)"
    )
    if deletion.organizations:
        statement = statement.bindparams(bindparam("orgs", expanding=True))
    deleted = 0
    while True:
        async with connection.begin():
            result = await connection.execute(statement, params)
        count = int(result.rowcount or 0)
        deleted += count
        if count < batch:
            return deleted


async def run_once(
    engine: AsyncEngine,
    default_days: int,
    *,
    now: datetime | None = None,
    wait: bool = False,
    client: redis.Redis | None = None,
    stream: str = "",
) -> Report:
    """One round of upkeep: skipped when another replica runs one, or (`wait`) after it. With a Redis client,
    the stream is trimmed too."""
    now = now or datetime.now(UTC)
    report = Report()
    async with engine.connect() as connection:
        async with connection.begin():
            overrides = await organization_retention(connection)
        report.longest_days = retention.longest(default_days, overrides)
        if wait:
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK})
            got: Any = True
        else:
            got = (await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK})).scalar()
        await connection.commit()
        if not got:
            report.ran = False
            return report
        try:
            async with connection.begin():
                report.created = await partitions.ensure(connection, partitions.months_ahead(now))
            async with connection.begin():
                months = await partitions.existing(connection)
                report.dropped = await partitions.drop(
                    connection, retention.partitions_to_drop(months, now, report.longest_days)
                )
            for deletion in retention.deletions(default_days, overrides, now):
                report.deleted_rows += await _delete(connection, deletion)
            async with connection.begin():
                result = await connection.execute(
                    text("DELETE FROM analytics.daily_visitors WHERE day < :day"),
                    {"day": (now - timedelta(days=KEEP_VISITOR_DAYS)).date()},
                )
                report.pruned_visitors = int(result.rowcount or 0)
            async with connection.begin():
                result = await connection.execute(
                    text("DELETE FROM analytics.dead_letters WHERE time < :before"),
                    {"before": now - timedelta(days=KEEP_DEAD_LETTER_DAYS)},
                )
                report.pruned_dead_letters = int(result.rowcount or 0)
            if client is not None and stream:
                await trim_stream(client, stream)
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK})
            await connection.commit()
    if report.created or report.dropped or report.deleted_rows:
        log.info(
            "analytics upkeep",
            extra={
                "created": ",".join(m.name for m in report.created),
                "dropped": ",".join(m.name for m in report.dropped),
                "deleted_rows": report.deleted_rows,
                "pruned_visitors": report.pruned_visitors,
            },
        )
    return report


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text_id = value.decode() if isinstance(value, bytes) else value
    milliseconds, _, sequence = text_id.partition("-")
    return int(milliseconds), int(sequence or 0)


async def trim_stream(client: redis.Redis, stream: str) -> str | None:
    """Trim the stream's entries every consumer group is done with (XTRIM MINID ~): below the oldest entry a
    group still has pending, or for a group with nothing pending, its last delivered entry. Nothing is trimmed
    without groups, or when a group's lag is unknown. The MINID used, or None."""
    try:
        groups: Any = await client.xinfo_groups(stream)
    except ResponseError:
        return None  # no such stream
    if not groups:
        return None
    floor: tuple[int, int] | None = None
    for group in groups:
        if group.get("lag") is None:
            return None
        if int(group["pending"]) > 0:
            summary: Any = await client.xpending(stream, group["name"])
            oldest = summary.get("min") if summary else None
            if oldest is None:
                return None
            candidate = _stream_id(oldest)
        else:
            candidate = _stream_id(group["last-delivered-id"])
        floor = candidate if floor is None else min(floor, candidate)
    if floor is None or floor == (0, 0):
        return None
    minid = f"{floor[0]}-{floor[1]}"
    await client.xtrim(stream, minid=minid, approximate=True)
    return minid


class Upkeep:
    """Runs `run_once` in the background after start and every day."""

    def __init__(
        self,
        engine: AsyncEngine,
        default_days: int,
        *,
        on_longest: Callable[[int], None] | None = None,
        client: redis.Redis | None = None,
        stream: str = "",
    ) -> None:
        self.engine = engine
        self.default_days = default_days
        self.on_longest = on_longest
        self.client = client
        self.stream = stream
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the rounds: the first right away in the background (start is not held up by it), then daily."""
        self._task = asyncio.create_task(self._run(), name="analytics-upkeep")

    async def close(self) -> None:
        if self._task is not None:
            await tasks.stop(self._task)
            self._task = None

    async def _round(self) -> bool:
        try:
            report = await run_once(self.engine, self.default_days, client=self.client, stream=self.stream)
        except Exception:
            log.exception("analytics upkeep failed")
            return False
        if self.on_longest is not None:
            self.on_longest(report.longest_days)
        return True

    async def _run(self) -> None:
        while True:
            delay = EVERY if await self._round() else RETRY
            await asyncio.sleep(delay)
