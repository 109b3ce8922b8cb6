"""Writes of the analytics ingestion, straight on asyncpg, in the caller's transaction.

A batch of raw rows is COPYed into a temporary staging table (asyncpg encodes
records in C; arrays of the same rows cost twice as much to encode), then ONE
statement inserts them into `analytics.scans` with ON CONFLICT DO NOTHING and,
from the counted rows that were new, records their visitors in `daily_visitors`:
the code's key of each visitor's earliest scan, and the organization's key only
where the code's key was new (a visitor the code saw today was seen by the
organization too: both keys always go in together). It answers, per new event,
whether it is its visitor's first scan of the day for the code and for the
organization. Rollup increments
go the same way: COPY into staging, then one INSERT .. ON CONFLICT DO UPDATE per
table. Every step writes in key order (raw rows, code visitors, organization
visitors, hourly, daily), so two consumers lock rows in one order and do not
deadlock.

`RAW_UNNEST` (raw rows as arrays in one INSERT .. SELECT FROM unnest, no staging)
is kept for comparison; bench/analytics_ingest.py measures both.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qrmesh.analytics.domain.aggregate import SCAN_COLUMNS, RollupRow

RAW_COPY = "copy"
RAW_UNNEST = "unnest"
_COLUMNS = ", ".join(SCAN_COLUMNS)
_TYPES = {"event_id": "uuid", "time": "timestamptz", "outcome": "smallint", "bot": "boolean"}
_ARRAYS = ", ".join(f"${index}::{_TYPES.get(column, 'text')}[]" for index, column in enumerate(SCAN_COLUMNS, 1))
STAGING = "analytics_scans_staging"
HOURLY_STAGING = "analytics_rollup_hourly_staging"
DAILY_STAGING = "analytics_rollup_daily_staging"
ROLLUP_COLUMNS = ("organization_id", "qr_code_id", "{bucket}", "dimension", "value", "bot", "scans", "uniques")
_CREATE_STAGING = [
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} (LIKE analytics.scans) ON COMMIT DELETE ROWS",
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {HOURLY_STAGING} (LIKE analytics.rollup_hourly) ON COMMIT DELETE ROWS",
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {DAILY_STAGING} (LIKE analytics.rollup_daily) ON COMMIT DELETE ROWS",
]
_staged: weakref.WeakSet[Any] = weakref.WeakSet()
"""Connections whose session already has the staging tables."""

# Identifiers in these statements are module constants, never input: S608 does not apply.
# Outcome 1 is REDIRECTED (`domain.aggregate.COUNTED`), the only outcome rollups and uniques count.
_VISITORS_OF_NEW = """
visits AS (
    SELECT event_id, time, (time AT TIME ZONE 'UTC')::date AS day,
           hashtextextended(organization_id || '/' || qr_code_id || '/' || visitor_id, 0) AS code_key,
           hashtextextended(organization_id || '//' || visitor_id, 0) AS organization_key
    FROM new WHERE outcome = 1 AND visitor_id <> ''
), code_firsts AS (
    SELECT DISTINCT ON (day, code_key) day, code_key, event_id FROM visits ORDER BY day, code_key, time, event_id
), fresh_codes AS (
    INSERT INTO analytics.daily_visitors (day, visitor_key) SELECT day, code_key FROM code_firsts ORDER BY 1, 2
    ON CONFLICT DO NOTHING RETURNING day, visitor_key
), organization_firsts AS (
    SELECT DISTINCT ON (v.day, v.organization_key) v.day, v.organization_key, v.event_id
    FROM visits v JOIN fresh_codes f ON f.day = v.day AND f.visitor_key = v.code_key
    ORDER BY v.day, v.organization_key, v.time, v.event_id
), fresh_organizations AS (
    INSERT INTO analytics.daily_visitors (day, visitor_key)
    SELECT day, organization_key FROM organization_firsts ORDER BY 1, 2
    ON CONFLICT DO NOTHING RETURNING day, visitor_key
)
SELECT n.event_id::text, c.event_id IS NOT NULL, o.event_id IS NOT NULL
FROM new n
LEFT JOIN (
    SELECT c.event_id FROM code_firsts c JOIN fresh_codes f ON f.day = c.day AND f.visitor_key = c.code_key
) c ON c.event_id = n.event_id
LEFT JOIN (
    SELECT o.event_id FROM organization_firsts o
    JOIN fresh_organizations f ON f.day = o.day AND f.visitor_key = o.organization_key
) o ON o.event_id = n.event_id
"""
_RETURNING = "RETURNING event_id, time, organization_id, qr_code_id, visitor_id, outcome"
INSERT_FROM_STAGING = (
    f"WITH new AS (INSERT INTO analytics.scans ({_COLUMNS}) SELECT {_COLUMNS} FROM {STAGING} "  # noqa: S608
    f"ORDER BY time, event_id ON CONFLICT DO NOTHING {_RETURNING}), {_VISITORS_OF_NEW}"
)
INSERT_FROM_ARRAYS = (
    f"WITH new AS (INSERT INTO analytics.scans ({_COLUMNS}) SELECT * FROM unnest({_ARRAYS}) "  # noqa: S608
    f"ON CONFLICT DO NOTHING {_RETURNING}), {_VISITORS_OF_NEW}"
)


def _upsert(table: str, staging: str, bucket: str) -> str:
    key = f"organization_id, qr_code_id, {bucket}, dimension, value, bot"
    return (
        f"INSERT INTO analytics.{table} AS r ({key}, scans, uniques) "  # noqa: S608
        f"SELECT {key}, scans, uniques FROM {staging} ORDER BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET scans = r.scans + excluded.scans, uniques = r.uniques + excluded.uniques"
    )


UPSERT_HOURLY = _upsert("rollup_hourly", HOURLY_STAGING, "hour")
UPSERT_DAILY = _upsert("rollup_daily", DAILY_STAGING, "day")
INSERT_DEAD_LETTERS = (
    "INSERT INTO analytics.dead_letters (stream, stream_id, reason, time, deliveries, payload) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::integer[], $6::bytea[]) "
    "ON CONFLICT (stream, stream_id) DO UPDATE SET reason = excluded.reason, deliveries = excluded.deliveries"
)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


async def ensure_staging(connection: Any) -> None:
    """Create this session's staging tables (once per connection); call it outside a transaction, so a
    transaction that rolls back does not take them along."""
    if connection in _staged:
        return
    for statement in _CREATE_STAGING:
        await connection.execute(statement)
    _staged.add(connection)


@dataclass(frozen=True, slots=True)
class Inserted:
    """What inserting a batch of raw rows found."""

    new: set[str]
    """Event ids that were not stored before."""
    code_firsts: set[str]
    """Counted new events that are their visitor's first scan of the code that UTC day."""
    organization_firsts: set[str]
    """Counted new events that are their visitor's first scan in the organization that UTC day."""


async def insert_scans(connection: Any, rows: Sequence[Sequence[Any]], *, method: str = RAW_COPY) -> Inserted:
    """Insert raw rows, skipping those already stored, and record the visitors of the new counted ones."""
    if not rows:
        return Inserted(set(), set(), set())
    # The planner cannot know how many rows the CTEs hold and would join them by nested loops (measured:
    # 16 s instead of 20 ms for 10,000 scans); hash joins it is, for this transaction.
    await connection.execute("SET LOCAL enable_nestloop = off")
    if method == RAW_UNNEST:
        answer = await connection.fetch(INSERT_FROM_ARRAYS, *_columns(rows, len(SCAN_COLUMNS)))
    else:
        await connection.copy_records_to_table(STAGING, records=rows, columns=SCAN_COLUMNS)
        answer = await connection.fetch(INSERT_FROM_STAGING)
    inserted = Inserted({record[0] for record in answer}, set(), set())
    for event_id, code_first, organization_first in answer:
        if code_first:
            inserted.code_firsts.add(event_id)
        if organization_first:
            inserted.organization_firsts.add(event_id)
    return inserted


async def add_rollups(connection: Any, hourly: Sequence[RollupRow], daily: Sequence[RollupRow]) -> None:
    """Add increments to the hourly and daily rollups (staging tables ensured by the caller)."""
    for staging, bucket, rows, statement in (
        (HOURLY_STAGING, "hour", hourly, UPSERT_HOURLY),
        (DAILY_STAGING, "day", daily, UPSERT_DAILY),
    ):
        if rows:
            columns = [column.format(bucket=bucket) for column in ROLLUP_COLUMNS]
            await connection.copy_records_to_table(staging, records=rows, columns=columns)
            await connection.execute(statement)


async def insert_dead_letters(connection: Any, letters: Sequence[tuple[str, str, str, datetime, int, bytes]]) -> None:
    """Keep entries that could not be processed: (stream, stream id, reason, time, deliveries, payload)."""
    if letters:
        await connection.execute(INSERT_DEAD_LETTERS, *_columns(sorted(letters), 6))
