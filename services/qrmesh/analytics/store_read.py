"""PostgreSQL reads of the analytics schema for queries: rollup rows and raw scans, one round trip each.

`counts` sums the scans of a plan's pieces (see `domain.buckets`): the daily and hourly rollups for
whole UTC days and hours (each day or hour named, one index seek each), the raw `scans` table for
the rest (one index range scan per window), in one statement (UNION ALL of up to three branches). Rows can be put
into buckets (`width_bucket` over the bucket starts), by value, by code and by bot.

Unique visitors in raw pieces follow the rollups' rule: a scan adds one when it is the first of its
visitor that UTC day (for the code, or for the organization in organization-wide rows but QR_CODE,
whose rows count each code's own), bots included in deciding who came first. To know that, the raw
branch reads from the UTC midnight before each raw piece (`raw_windows`) and numbers each visitor's
scans of the day.

Functions take the session (or connection) keyword-only and only read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from qrmesh.analytics.domain.aggregate import COUNTED, ORGANIZATION, SCAN_COLUMNS, TOTAL
from qrmesh.analytics.domain.buckets import DAY, HOUR, Piece, Source, ceil_to, floor_to, raw_windows
from qrmesh.analytics.v1 import analytics_pb2

SCHEMA = "analytics"
D = analytics_pb2.Dimension
RAW_COLUMNS: dict[int, str] = {
    D.COUNTRY: "country",
    D.REGION: "region",
    D.CITY: "city",
    D.DEVICE_TYPE: "device_type",
    D.OS: "os",
    D.BROWSER: "browser",
    D.LANGUAGE: "language",
    D.REFERRER: "referrer",
    D.MATCHED_RULE: "matched_rule",
    D.DESTINATION: "destination_url",
    D.QR_CODE: "qr_code_id",
    D.DEVICE_BRAND: "device_brand",
}
"""The raw column of each dimension."""
EXPORT_COLUMNS = ("time", "event_id", *(c for c in SCAN_COLUMNS if c not in ("time", "event_id", "organization_id")))


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose scans: the whole organization (its organization-wide rollup rows) or some of its codes."""

    organization_id: str
    code_ids: tuple[str, ...] | None = None
    """None: every code of the organization; otherwise exactly these (possibly none)."""

    @property
    def empty(self) -> bool:
        return self.code_ids is not None and not self.code_ids


@dataclass(frozen=True, slots=True)
class Grouping:
    """What a count is split by (each off: one group)."""

    dimension: int = TOTAL
    """Split by this dimension's value (0: no split)."""
    bounds: Sequence[datetime] | None = None
    """Split into the buckets starting at these instants (index 0 is the first bucket)."""
    by_code: bool = False
    """Split by code id."""
    labels: Sequence[int] | None = None
    """With `bounds`: count bucket i under `labels[i]` instead (peak times fold hours into 168 cells)."""
    by_bot: bool = False
    """Split by the bot flag and count bots too (otherwise bots count only with `include_bots`)."""
    include_bots: bool = False
    uniques: bool = True
    """Count unique visitors (costs a look back to the UTC midnight before raw pieces)."""


_READ_SETTINGS = sa.text(
    "SELECT set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('work_mem', '64MB', true), set_config('max_parallel_workers_per_gather', '0', true)"
)


async def begin_reads(*, session: AsyncSession) -> None:
    """Settings for this transaction's reads, measured with bench/analytics_query.py: no JIT (the piece
    arrays' row estimates make the planner expect big scans; compiling took longer than the reads), a
    plan for the actual ranges every time (a prepared statement's generic plan, tried from its sixth run
    on, cannot see how short a range is: 10x slower), room to sort a day of raw scans in memory, and no
    parallel workers (they take longer to start than these index reads take)."""
    await session.execute(_READ_SETTINGS)


Key = tuple[int, str, str, bool]
"""(bucket index, value, code id, bot) of a count."""


def _bucket(time_sql: str, grouping: Grouping) -> str:
    if not grouping.bounds:
        return "0"
    if grouping.labels is not None:
        return f"(CAST(:labels AS int[]))[width_bucket({time_sql}, CAST(:bounds AS timestamptz[]))]"
    return f"width_bucket({time_sql}, CAST(:bounds AS timestamptz[])) - 1"


def _codes_sql(column: str, scope: Scope) -> str:
    return f"{column} = ANY(CAST(:codes AS text[]))" if scope.code_ids is not None else f"{column} = :whole"


def _rollup_branch(source: Source, scope: Scope, grouping: Grouping, *, anchored: bool = False) -> str:
    daily = source is Source.DAILY
    table, column, kind = ("rollup_daily", "day", "date") if daily else ("rollup_hourly", "hour", "timestamptz")
    bots = "" if grouping.by_bot or grouping.include_bots else "AND NOT r.bot"
    # Every hour (day) is named: one index seek each to its rows of the dimension, whichever order the
    # key puts the time and the dimension in (a range over the time would read every dimension's rows).
    if anchored:
        # Days read whole for one bucket, and their hours outside it subtracted, count in that bucket.
        prefix = "ad" if daily else "ah"
        source_sql = f"""unnest(CAST(:{prefix}_at AS {kind}[]), CAST(:{prefix}_sign AS int[]),
                              CAST(:{prefix}_bucket AS int[])) AS a(at, sign, bucket)
        JOIN {SCHEMA}.{table} r ON r.{column} = a.at"""
        bucket, sign = "a.bucket", "a.sign * "
    else:
        moment = "(r.day::timestamp AT TIME ZONE 'UTC')" if daily else "r.hour"
        source_sql = f"{SCHEMA}.{table} r"
        bucket, sign = _bucket(moment, grouping), ""
        bots += f" AND r.{column} = ANY(CAST(:{'days' if daily else 'hours'} AS {kind}[]))"
    if anchored and grouping.labels is not None:
        raise ValueError("labels fold hour buckets, which never read whole days")
    return f"""
        SELECT {bucket} AS k,
               {"r.value" if grouping.dimension != TOTAL else "''"} AS v,
               {"r.qr_code_id" if grouping.by_code else "''"} AS c,
               {"r.bot" if grouping.by_bot else "false"} AS b,
               sum({sign}r.scans)::bigint AS scans, sum({sign}r.uniques)::bigint AS uniques
        FROM {source_sql}
        WHERE r.organization_id = :org AND {_codes_sql("r.qr_code_id", scope)}
          AND r.dimension = :dimension {bots}
        GROUP BY 1, 2, 3, 4"""  # noqa: S608 - constants only; values are bound


def _raw_branch(scope: Scope, grouping: Grouping) -> str:
    column = RAW_COLUMNS.get(grouping.dimension)
    codes = "AND s.qr_code_id = ANY(CAST(:codes AS text[]))" if scope.code_ids is not None else ""
    # Each window is one index range scan: OFFSET 0 keeps the planner from flattening the LATERAL
    # subquery into a join that filters every scan of the organization.
    rows = f"""
            SELECT s.time, s.event_id, s.bot, s.visitor_id, s.qr_code_id, {f"s.{column}" if column else "''"} AS value
            FROM unnest(CAST(:ws AS timestamptz[]), CAST(:we AS timestamptz[])) AS w(s, e)
            CROSS JOIN LATERAL (
                SELECT * FROM {SCHEMA}.scans s
                WHERE s.organization_id = :org AND s.time >= w.s AND s.time < w.e AND s.outcome = :counted {codes}
                OFFSET 0
            ) s"""  # noqa: S608 - constants only; values are bound
    bots = "" if grouping.by_bot or grouping.include_bots else "AND NOT x.bot"
    select = f"""
        SELECT {_bucket("x.time", grouping)} AS k, x.value AS v,
               {"x.qr_code_id" if grouping.by_code else "''"} AS c,
               {"x.bot" if grouping.by_bot else "false"} AS b,
               count(*)::bigint AS scans,"""
    if not grouping.uniques:
        return f"""{select} 0::bigint AS uniques
        FROM ({rows}) x
        WHERE true {bots}
        GROUP BY 1, 2, 3, 4"""
    # Windows start at the UTC midnight before their raw pieces: a scan is a new visitor's when it is
    # the first of its visitor (per code, or per organization) that day; only scans inside a piece count.
    # Per code when reading codes' rows, and for QR_CODE: the organization's QR_CODE rows count each
    # code's own unique visitors.
    per_code = scope.code_ids is not None or grouping.dimension == D.QR_CODE
    owner = "r.qr_code_id, " if per_code else ""
    return f"""{select}
               count(*) FILTER (WHERE x.first AND x.visitor_id <> '')::bigint AS uniques
        FROM (
            SELECT r.*, row_number() OVER (
                PARTITION BY (r.time AT TIME ZONE 'UTC')::date, {owner}r.visitor_id
                ORDER BY r.time, r.event_id) = 1 AS first
            FROM ({rows}) r
        ) x
        WHERE width_bucket(x.time, CAST(:edges AS timestamptz[])) % 2 = 1 {bots}
        GROUP BY 1, 2, 3, 4"""  # noqa: S608


def _steps(piece: Piece, step: timedelta) -> list[datetime]:
    """The starts of the hours (days) a rollup piece covers."""
    count = (piece.end - piece.start) // step
    return [piece.start + index * step for index in range(count)]


async def counts(
    scope: Scope, pieces: Sequence[Piece], *, session: AsyncSession, grouping: Grouping
) -> dict[Key, tuple[int, int]]:
    """(scans, unique visitors) of the pieces, by (bucket, value, code, bot) as `grouping` splits them."""
    if scope.empty or not pieces:
        return {}
    params: dict[str, Any] = {
        "org": scope.organization_id,
        "whole": ORGANIZATION,
        "dimension": grouping.dimension,
        "counted": COUNTED,
    }
    if scope.code_ids is not None:
        params["codes"] = list(scope.code_ids)
    if grouping.bounds:
        params["bounds"] = list(grouping.bounds)
    if grouping.labels is not None:
        params["labels"] = list(grouping.labels)
    branches = []
    free = [piece for piece in pieces if piece.bucket is None]
    days = [day.date() for piece in free if piece.source is Source.DAILY for day in _steps(piece, DAY)]
    if days:
        branches.append(_rollup_branch(Source.DAILY, scope, grouping))
        params["days"] = days
    hours = [hour for piece in free if piece.source is Source.HOURLY for hour in _steps(piece, HOUR)]
    if hours:
        branches.append(_rollup_branch(Source.HOURLY, scope, grouping))
        params["hours"] = hours
    for source, prefix, step in ((Source.DAILY, "ad", DAY), (Source.HOURLY, "ah", HOUR)):
        anchored = [
            (moment, piece.sign, piece.bucket)
            for piece in pieces
            if piece.bucket is not None and piece.source is source
            for moment in _steps(piece, step)
        ]
        if anchored:
            branches.append(_rollup_branch(source, scope, grouping, anchored=True))
            params[f"{prefix}_at"] = [m.date() if source is Source.DAILY else m for m, _, _ in anchored]
            params[f"{prefix}_sign"] = [sign for _, sign, _ in anchored]
            params[f"{prefix}_bucket"] = [bucket for _, _, bucket in anchored]
    raw = [piece for piece in pieces if piece.source is Source.RAW]
    if raw:
        branches.append(_raw_branch(scope, grouping))
        windows = raw_windows(raw) if grouping.uniques else [(piece.start, piece.end) for piece in raw]
        params["ws"] = [start for start, _ in windows]
        params["we"] = [end for _, end in windows]
        params["edges"] = [moment for piece in raw for moment in (piece.start, piece.end)]
    # A raw dimension value is never NULL, rollup values neither: keys compare as stored.
    statement = sa.text("\nUNION ALL\n".join(branches))
    out: dict[Key, tuple[int, int]] = {}
    for k, v, c, b, scans, uniques in await session.execute(statement, params):
        key = (int(k), str(v), str(c), bool(b))
        before = out.get(key, (0, 0))
        out[key] = (before[0] + int(scans), before[1] + int(uniques))
    return out


async def scan_times(
    scope: Scope, start: datetime, end: datetime, *, session: AsyncSession, include_bots: bool
) -> tuple[datetime | None, datetime | None]:
    """The first and last counted scan in `[start, end)`.

    From the raw scans (index order, one row each); where retention already dropped the raw scans
    of an hour that the hourly rollups still count, that hour's start stands in for them."""
    if scope.empty:
        return None, None
    bots = "" if include_bots else "AND NOT bot"
    raw_codes = "AND qr_code_id = ANY(CAST(:codes AS text[]))" if scope.code_ids is not None else ""
    rollup_codes = _codes_sql("qr_code_id", scope)
    raw = f"""SELECT time FROM {SCHEMA}.scans WHERE organization_id = :org {raw_codes}
              AND time >= :start AND time < :end AND outcome = :counted {bots}"""  # noqa: S608
    hours = f"""SELECT hour FROM {SCHEMA}.rollup_hourly WHERE organization_id = :org AND {rollup_codes}
                AND dimension = :total AND hour >= :first_hour AND hour < :last_hour AND scans > 0 {bots}"""  # noqa: S608
    statement = sa.text(
        f"""SELECT ({raw} ORDER BY time LIMIT 1), ({raw} ORDER BY time DESC LIMIT 1),
                   ({hours} ORDER BY hour LIMIT 1), ({hours} ORDER BY hour DESC LIMIT 1)"""
    )
    first_hour = ceil_to(start, HOUR)
    params: dict[str, Any] = {
        "org": scope.organization_id,
        "whole": ORGANIZATION,
        "start": start,
        "end": end,
        "counted": COUNTED,
        "total": TOTAL,
        "first_hour": first_hour,
        "last_hour": floor_to(end, HOUR),
    }
    if scope.code_ids is not None:
        params["codes"] = list(scope.code_ids)
    first, last, first_rolled, last_rolled = (await session.execute(statement, params)).one()
    if first_rolled is not None and (first is None or first >= first_rolled + HOUR):
        first = first_rolled  # the raw scans of that hour are past retention
    if last_rolled is not None and (last is None or last < last_rolled):
        last = last_rolled
    return first, last


async def stream_scans(
    scope: Scope,
    start: datetime,
    end: datetime,
    *,
    connection: AsyncConnection,
    include_bots: bool,
    batch: int = 2000,
) -> AsyncIterator[Sequence[sa.Row[Any]]]:
    """Every stored scan in `[start, end)` (every outcome), oldest first, in batches, through a
    server-side cursor: memory stays bounded whatever the range holds."""
    if scope.empty:
        return
    bots = "" if include_bots else "AND NOT bot"
    codes = "AND qr_code_id = ANY(CAST(:codes AS text[]))" if scope.code_ids is not None else ""
    statement = sa.text(
        f"""SELECT {", ".join(EXPORT_COLUMNS)} FROM {SCHEMA}.scans
            WHERE organization_id = :org {codes} AND time >= :start AND time < :end {bots}
            ORDER BY time, event_id"""  # noqa: S608
    )
    params: dict[str, Any] = {"org": scope.organization_id, "start": start, "end": end}
    if scope.code_ids is not None:
        params["codes"] = list(scope.code_ids)
    result = await connection.stream(statement.execution_options(yield_per=batch), params)
    async for rows in result.partitions(batch):
        yield rows


__all__ = ["EXPORT_COLUMNS", "RAW_COLUMNS", "Grouping", "Key", "Scope", "counts", "scan_times", "stream_scans"]
