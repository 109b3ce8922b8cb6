"""Synthetic scans loaded straight into PostgreSQL, for the analytics query benchmark.

The ingestion path (a batch at a time: raw rows, daily visitors, rollup upserts) stores about 4,000
scans a second here, which makes 10 million scans a 40-minute wait. This loader writes the same
tables in bulk instead:

1. raw rows (bench/analytics_data.py `rows`, the rows the ingestion stores for `generate`'s events)
   COPYed into `analytics.scans` (binary COPY, encoded by asyncpg in C);
2. per slice of whole UTC days, set-based SQL from those raw rows: which counted scan is its
   visitor's first of the UTC day for its code and for its organization (the first by (time,
   event id), visitors keyed by the same `hashtextextended` keys the ingestion keeps in
   `daily_visitors`), then `rollup_hourly` (one GROUP BY over each scan's total, dimension and
   QR_CODE rows, for its code and for its organization), `rollup_daily` (sums of the hourly rows)
   and, if asked, `daily_visitors`.

What comes out is what the ingestion writes when the same scans arrive in time order
(tests/integration/test_bench_loader.py loads the same scans both ways and compares every table
row for row). `forgotten` reproduces the ingestion's rule for late scans: a scan of a UTC day
before `forgotten` adds no unique (the ingestion has pruned that day's visitors). The benchmark
passes None: uniques as counted when the scans arrived live.

A slice's days must hold no other scans and no rollup rows yet (the rollups are INSERTed, not
added to).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from qrmesh.analytics import partitions
from qrmesh.analytics.domain.aggregate import COUNTED, DIMENSION_COLUMNS, ORGANIZATION, QR_CODE, SCAN_COLUMNS, TOTAL

LOADER_VERSION = 1
"""Bumped whenever what the loader writes for the same rows changes."""

FLAGGED = "bench_flagged_scans"

_CODE_KEY = "hashtextextended(organization_id || '/' || qr_code_id || '/' || visitor_id, 0)"
_ORGANIZATION_KEY = "hashtextextended(organization_id || '//' || visitor_id, 0)"

# The slice's counted scans with their UTC hour and day, visitor keys and whether each is its visitor's first
# of the day for the code and for the organization (as the ingestion's `daily_visitors` inserts decide, a scan
# without a visitor id is nobody's first). $1, $2: the slice; $3: the first day whose scans may count uniques.
_FLAG = f"""
CREATE TEMPORARY TABLE {FLAGGED} ON COMMIT DROP AS
SELECT *,
       has_visitor AND day >= $3::date
           AND row_number() OVER (PARTITION BY day, code_key ORDER BY time, event_id) = 1 AS code_first,
       has_visitor AND day >= $3::date
           AND row_number() OVER (PARTITION BY day, organization_key ORDER BY time, event_id) = 1
           AS organization_first
FROM (
    SELECT event_id, time, organization_id, qr_code_id, bot, {", ".join(column for _, column in DIMENSION_COLUMNS)},
           date_trunc('hour', time, 'UTC') AS hour, (time AT TIME ZONE 'UTC')::date AS day,
           visitor_id <> '' AS has_visitor,
           CASE WHEN visitor_id <> '' THEN {_CODE_KEY} END AS code_key,
           CASE WHEN visitor_id <> '' THEN {_ORGANIZATION_KEY} END AS organization_key
    FROM analytics.scans
    WHERE time >= $1 AND time < $2 AND outcome = {COUNTED}
) counted
"""  # noqa: S608 - constants of ours


def _dimension_rows(dimension: int, column: str) -> str:
    """One dimension's hourly rows, for each code and for the organization in one pass (grouping sets); the
    total (dimension 0) groups by no column and has the value ''."""
    value = f"f.{column}" if column else "''"
    by = f", f.{column}" if column else ""
    groups = f"(f.organization_id, f.qr_code_id, f.hour, f.bot{by}), (f.organization_id, f.hour, f.bot{by})"
    return f"""
    SELECT f.organization_id, CASE WHEN GROUPING(f.qr_code_id) = 1 THEN '{ORGANIZATION}' ELSE f.qr_code_id END,
           f.hour, {dimension}::smallint, {value}, f.bot, count(*),
           CASE WHEN GROUPING(f.qr_code_id) = 1 THEN count(*) FILTER (WHERE f.organization_first)
                ELSE count(*) FILTER (WHERE f.code_first) END
    FROM {FLAGGED} f
    GROUP BY GROUPING SETS ({groups})"""  # noqa: S608 - constants of ours


def _hourly_rows() -> str:
    """Every hourly row of the flagged scans: as `domain.aggregate.aggregate` counts (each dimension and the
    total for the code and for the organization; the organization's QR_CODE rows count the code's uniques)."""
    parts = [
        _dimension_rows(TOTAL, ""),
        *(_dimension_rows(dimension, column) for dimension, column in DIMENSION_COLUMNS),
    ]
    parts.append(f"""
    SELECT f.organization_id, '{ORGANIZATION}', f.hour, {QR_CODE}::smallint, f.qr_code_id, f.bot, count(*),
           count(*) FILTER (WHERE f.code_first)
    FROM {FLAGGED} f
    GROUP BY f.organization_id, f.hour, f.bot, f.qr_code_id""")  # noqa: S608 - constants of ours
    return "\n    UNION ALL".join(parts)


_KEY = "organization_id, qr_code_id, {bucket}, dimension, value, bot"
_HOURLY = f"""
INSERT INTO analytics.rollup_hourly ({_KEY.format(bucket="hour")}, scans, uniques)
{_hourly_rows()}
"""
_DAILY = f"""
INSERT INTO analytics.rollup_daily ({_KEY.format(bucket="day")}, scans, uniques)
SELECT organization_id, qr_code_id, (hour AT TIME ZONE 'UTC')::date, dimension, value, bot, sum(scans), sum(uniques)
FROM analytics.rollup_hourly
WHERE hour >= $1 AND hour < $2
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
"""  # noqa: S608 - constants of ours
_VISITORS = f"""
INSERT INTO analytics.daily_visitors (day, visitor_key)
SELECT day, key FROM (
    SELECT day, code_key AS key FROM {FLAGGED} WHERE has_visitor AND day >= $1::date
    UNION
    SELECT day, organization_key FROM {FLAGGED} WHERE has_visitor AND day >= $1::date
) keys
ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""  # noqa: S608 - constants of ours


def months(start: datetime, end: datetime) -> set[partitions.Month]:
    """The months of the scans partitions that [start, end) touches."""
    found = {partitions.Month.of(start)}
    month = partitions.Month.of(start)
    while month.end < end:
        month = month.plus(1)
        found.add(month)
    return found


async def ensure_partitions(connection: Any, start: datetime, end: datetime) -> None:
    """Create the scans partitions of [start, end) that are missing (asyncpg connection)."""
    for month in sorted(months(start, end), key=lambda m: (m.year, m.month)):
        # Another loader may create it between IF NOT EXISTS and CREATE.
        with contextlib.suppress(asyncpg.DuplicateTableError):
            await connection.execute(partitions.create_statement(month))


async def tune(connection: Any) -> None:
    """Session settings for bulk loading: no waiting for WAL flushes, room for the slice's sorts."""
    await connection.execute("SET synchronous_commit = off")
    await connection.execute("SET work_mem = '256MB'")
    await connection.execute("SET maintenance_work_mem = '512MB'")


async def copy_scans(connection: Any, rows: Iterable[Sequence[Any]]) -> None:
    """COPY raw rows (values of SCAN_COLUMNS) into `analytics.scans` (their partitions must exist)."""
    await connection.copy_records_to_table("scans", schema_name="analytics", records=rows, columns=SCAN_COLUMNS)


async def build_rollups(
    connection: Any,
    start: datetime,
    end: datetime,
    *,
    forgotten: date | None = None,
    visitors_from: date | None = None,
) -> None:
    """Write the hourly and daily rollups (and `daily_visitors` of the days from `visitors_from` on, when given)
    of the scans in [start, end), whole UTC days, in one transaction."""
    if start.timestamp() % 86400 or end.timestamp() % 86400:
        raise ValueError("a slice is whole UTC days")
    async with connection.transaction():
        await connection.execute(_FLAG, start, end, forgotten or date.min)
        await connection.execute(f"ANALYZE {FLAGGED}")
        await connection.execute(_HOURLY)
        await connection.execute(_DAILY, start, end)
        if visitors_from is not None:
            await connection.execute(_VISITORS, visitors_from)


async def load_slice(
    connection: Any,
    rows: Sequence[Sequence[Any]],
    start: datetime,
    end: datetime,
    *,
    forgotten: date | None = None,
    visitors_from: date | None = None,
) -> None:
    """Raw rows of whole UTC days [start, end) (all of those days' scans), then their rollups."""
    outside = [row[1] for row in rows if not start <= row[1] < end]
    if outside:
        raise ValueError(f"{len(outside)} rows fall outside the slice, e.g. {outside[0].isoformat()}")
    await ensure_partitions(connection, start, end)
    await copy_scans(connection, rows)
    await build_rollups(connection, start, end, forgotten=forgotten, visitors_from=visitors_from)


def day_start(moment: datetime) -> datetime:
    """Midnight UTC of the moment's UTC day."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def day_after(moment: datetime) -> datetime:
    """Midnight UTC after the moment's UTC day."""
    return day_start(moment) + timedelta(days=1)
