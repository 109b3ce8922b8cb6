"""Analytics queries at scale: 10M synthetic scans of one organization over a year, a breakdown and a
time series over the whole year through the real query code (and through gRPC), beside a naive
`GROUP BY` over the raw scans measured in the same run on the same data.

    python -m bench.analytics_query [--scans 10000000] [--runs 30] [--database-url URL]

The scans live in a database of their own, `qrmesh_bench` (QRMESH_BENCH_DATABASE changes it; created when
absent; never the test database), schema `analytics` as the service migrates it. bench/analytics_data.py generates them
one week at a time (each week its share of the year's scans) and bench/analytics_load.py writes
them in bulk: raw rows by COPY, then the week's rollups by set-based SQL from those rows, the
same rows the ingestion would have written (tests/integration/test_bench_loader.py compares the
two row for row), two worker processes in parallel. Uniques are counted as when the scans arrive
live. The data is kept and reused while its fingerprint (scan count, seed, generator and loader
versions, migrations) is the same; `--reload` drops the schema and loads again.

`--layout` rebuilds the rollups' primary keys in the column order to measure: `as-migrated`
(organization, code, hour or day, dimension, ...) or `dimension-first` (organization, code,
dimension, hour or day, ...), where one dimension's rows over a year are adjacent in the index.
The gRPC figures come from an in-process server without caller checks (the bench runs no
identity service); everything behind the guard is the real path.

Each query runs `--runs` times after a warm-up; p50 and p95 are printed and written to
bench/results/analytics_query.json. The answers of ours and of the naive queries are compared: a
difference fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import analytics_load
from bench.analytics_data import GENERATOR_VERSION, HOUR_WEIGHTS, WEEKDAY_WEIGHTS, Shape, rows
from bench.analytics_load import LOADER_VERSION
from bench.report import Figure, Sample, emit
from qrmesh.analytics import server as analytics_server
from qrmesh.analytics.domain.buckets import Granularity
from qrmesh.analytics.queries import Queries, Query, Summary
from qrmesh.analytics.scope import Scopes
from qrmesh.analytics.store_read import Scope
from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.platform.database import create_engine, migrate
from qrmesh.platform.server import create_server
from qrmesh.platform.settings import Settings

DATABASE = os.environ.get("QRMESH_BENCH_DATABASE", "qrmesh_bench")
"""Where the generated scans are kept between runs."""
SEED = 7
START = datetime(2025, 11, 1, tzinfo=UTC)
DAYS = 365
WEEKS = (DAYS + 6) // 7
ORGANIZATION = "bench-org"
STOCKHOLM = ZoneInfo("Europe/Stockholm")
TARGET_MS = 50.0


def bench_url(admin_url: str) -> str:
    return make_url(admin_url).set(database=DATABASE).render_as_string(hide_password=False)


async def ensure_database(admin_url: str) -> None:
    """Create `qrmesh_bench` if it is missing and migrate the analytics schema into it."""
    admin = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
    engine = create_engine(bench_url(admin_url), schema="analytics")
    try:
        await migrate(engine, Path(analytics_server.__file__).with_name("migrations"), "analytics")
        async with engine.begin() as connection:
            await connection.execute(
                text("CREATE TABLE IF NOT EXISTS public.bench_state (name text PRIMARY KEY, value text NOT NULL)")
            )
    finally:
        await engine.dispose()


def week_counts(total: int) -> list[int]:
    """Scans per week: each week's share of the year under the generator's hour, weekday and growth weights."""
    hours = DAYS * 24
    weights = [0.0] * WEEKS
    for index in range(hours):
        moment = START + timedelta(hours=index)
        weights[index // (24 * 7)] += (
            HOUR_WEIGHTS[moment.hour] * WEEKDAY_WEIGHTS[moment.weekday()] * (0.6 + 0.8 * index / hours)
        )
    scale = total / sum(weights)
    counts = [int(weight * scale) for weight in weights]
    counts[-1] += total - sum(counts)
    return counts


def fingerprint(total: int) -> str:
    """What the kept database must have been loaded with to be reused: count, seed, range, generator and
    loader versions, and the analytics migrations it was made with."""
    versions = Path(analytics_server.__file__).with_name("migrations") / "versions"
    revisions = ",".join(sorted(path.stem for path in versions.glob("*.py")))
    return (
        f"{total}:seed {SEED}:{START.date()}+{DAYS}d:generator {GENERATOR_VERSION}:loader {LOADER_VERSION}:{revisions}"
    )


def _load_weeks(url: str, weeks: list[tuple[int, int]]) -> None:
    """A worker process: generate these (week, count) slices and load each (raw rows, then rollups)."""

    async def run() -> None:
        connection = await asyncpg.connect(
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            await analytics_load.tune(connection)
            for week, count in weeks:
                days = min(7, DAYS - week * 7)
                start = START + timedelta(days=7 * week)
                shape = Shape(organization=ORGANIZATION, start=start, hours=days * 24)
                made = sorted(rows(count, shape, seed=SEED * 1000 + week), key=lambda row: (row[1], row[0]))
                await analytics_load.load_slice(connection, made, start, start + timedelta(days=days))
                print(f"  week {week + 1}/{WEEKS}: {len(made):,} scans", flush=True)
        finally:
            await connection.close()

    asyncio.run(run())


async def load(admin_url: str, total: int, *, reload: bool, workers: int = 2) -> float | None:
    """Fill the bench database with `total` scans unless it holds them already (same fingerprint); seconds
    spent loading."""
    url = bench_url(admin_url)
    engine = create_engine(url, schema="analytics")
    marker = fingerprint(total)
    try:
        async with engine.connect() as connection:
            loaded = (
                await connection.execute(text("SELECT value FROM public.bench_state WHERE name = 'scans'"))
            ).scalar_one_or_none()
        if loaded == marker and not reload:
            return None
        print(f"loading {total:,} scans into {DATABASE} ({workers} worker processes)", flush=True)
        # A fresh schema, as the service's migrations make it today.
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM public.bench_state WHERE name = 'scans'"))
            await connection.execute(text("DROP SCHEMA IF EXISTS analytics CASCADE"))
        await migrate(engine, Path(analytics_server.__file__).with_name("migrations"), "analytics")
    finally:
        await engine.dispose()
    started = time.perf_counter()
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await analytics_load.ensure_partitions(connection, START, START + timedelta(days=DAYS))
    finally:
        await connection.close()
    slices = list(enumerate(week_counts(total)))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_load_weeks, args=(url, slices[index::workers])) for index in range(workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise RuntimeError(f"a loader process failed with exit code {process.exitcode}")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    loaded_at = time.perf_counter()
    print(f"  raw rows and rollups written in {loaded_at - started:.0f} s; VACUUM ANALYZE", flush=True)
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await connection.execute("SET maintenance_work_mem = '512MB'")
        for table in ("scans", "rollup_hourly", "rollup_daily"):
            await connection.execute(f"VACUUM ANALYZE analytics.{table}")
        await connection.execute(
            "INSERT INTO public.bench_state (name, value) VALUES ('scans', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            marker,
        )
    finally:
        await connection.close()
    print(f"  vacuumed in {time.perf_counter() - loaded_at:.0f} s", flush=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------- measuring


async def timed(call: Callable[[], Awaitable[Any]], runs: int, budget: float = 60.0) -> tuple[list[float], Any]:
    """Milliseconds of each of `runs` calls after one warm-up (fewer, at least 3, once `budget` seconds
    are spent); the last answer."""
    answer = await call()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - began < budget):
        started = time.perf_counter()
        answer = await call()
        times.append((time.perf_counter() - started) * 1000)
    return times, answer


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


class NoScopes(Scopes):
    """Whole-organization queries need no qr service."""

    def __init__(self) -> None:
        super().__init__("", service="analytics", service_secret="")


async def naive_values(pool: asyncpg.Pool, column: str, start: datetime, end: datetime) -> dict[str, int]:
    rows = await pool.fetch(
        f"SELECT {column} AS value, count(*) AS scans FROM analytics.scans "  # noqa: S608 - a column name of ours
        "WHERE organization_id = $1 AND time >= $2 AND time < $3 AND outcome = 1 AND NOT bot GROUP BY 1",
        ORGANIZATION,
        start,
        end,
    )
    return {row["value"]: row["scans"] for row in rows}


async def naive_days(pool: asyncpg.Pool, zone: str, start: datetime, end: datetime) -> dict[datetime, int]:
    rows = await pool.fetch(
        "SELECT date_trunc('day', time, $4) AS day, count(*) AS scans FROM analytics.scans "
        "WHERE organization_id = $1 AND time >= $2 AND time < $3 AND outcome = 1 AND NOT bot GROUP BY 1",
        ORGANIZATION,
        start,
        end,
        zone,
    )
    return {row["day"]: row["scans"] for row in rows}


async def naive_summary(pool: asyncpg.Pool, start: datetime, end: datetime) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM analytics.scans "
            "WHERE organization_id = $1 AND time >= $2 AND time < $3 AND outcome = 1 AND NOT bot",
            ORGANIZATION,
            start,
            end,
        )
    )


async def naive_peak(pool: asyncpg.Pool, zone: str, start: datetime, end: datetime) -> list[int]:
    rows = await pool.fetch(
        "SELECT extract(isodow FROM time AT TIME ZONE $4)::int AS day, extract(hour FROM time AT TIME ZONE $4)::int "
        "AS hour, count(*) AS scans FROM analytics.scans "
        "WHERE organization_id = $1 AND time >= $2 AND time < $3 AND outcome = 1 AND NOT bot GROUP BY 1, 2",
        ORGANIZATION,
        start,
        end,
        zone,
    )
    cells = [0] * 168
    for row in rows:
        cells[(row["day"] - 1) * 24 + row["hour"]] = row["scans"]
    return cells


PROPOSED_KEY = ("organization_id", "qr_code_id", "dimension", "{bucket}", "value", "bot")
MIGRATED_KEY = ("organization_id", "qr_code_id", "{bucket}", "dimension", "value", "bot")


async def rollup_key(url: str, layout: str) -> str:
    """Give the rollups' primary keys the asked column order (`as-migrated`, or `dimension-first` as
    proposed); the order in use."""
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        used = ""
        for table, bucket in (("rollup_daily", "day"), ("rollup_hourly", "hour")):
            columns = await connection.fetchval(
                "SELECT array_agg(a.attname ORDER BY k.ordinality) FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = $1::regclass AND i.indisprimary",
                f"analytics.{table}",
            )
            if layout != "keep":
                wanted = [
                    c.format(bucket=bucket) for c in (PROPOSED_KEY if layout == "dimension-first" else MIGRATED_KEY)
                ]
                if list(columns) != wanted:
                    print(f"  rebuilding the primary key of {table} as ({', '.join(wanted)}); takes a minute")
                    await connection.execute("SET maintenance_work_mem = '1GB'")
                    await connection.execute(
                        f"ALTER TABLE analytics.{table} DROP CONSTRAINT {table}_pkey, "
                        f"ADD PRIMARY KEY ({', '.join(wanted)})"
                    )
                    await connection.execute(f"ANALYZE analytics.{table}")
                    columns = wanted
            used = ", ".join(columns).replace("hour", "time").replace("day", "time")
        return used
    finally:
        await connection.close()


def figure(name: str, which: str, ours: list[float], base: list[float], *, target: bool) -> Figure:
    pick = statistics.median if which == "p50" else p95
    ours_value, base_value = pick(ours), pick(base)
    return Figure(
        name=name,
        unit=f"ms {which}",
        ours=Sample(ours_value, Sample.of(ours).spread, len(ours)),
        baseline_name="naive GROUP BY on raw scans",
        baseline=Sample(base_value, Sample.of(base).spread, len(base)),
        higher_is_better=False,
        target=f"{which} <= {TARGET_MS:.0f} ms" if target else "",
        met=(ours_value <= TARGET_MS) if target else None,
    )


async def measure(admin_url: str, runs: int, baseline_runs: int, layout: str) -> tuple[list[Figure], dict[str, Any]]:
    url = bench_url(admin_url)
    key = await rollup_key(url, layout)
    print(f"rollup primary keys: ({key})")
    engine: AsyncEngine = create_engine(url, schema="analytics", pool_size=4)
    queries = Queries(engine, NoScopes())
    start = datetime(2025, 11, 1, tzinfo=STOCKHOLM).astimezone(UTC)
    end = datetime(2026, 11, 1, tzinfo=STOCKHOLM).astimezone(UTC)
    year = Query(Scope(ORGANIZATION), start, end, STOCKHOLM, include_bots=False)
    off_hours = dataclasses.replace(year, start=start + timedelta(hours=9, minutes=17), end=end - timedelta(minutes=43))
    india = ZoneInfo("Asia/Kolkata")
    kolkata = dataclasses.replace(
        year,
        zone=india,
        start=datetime(2025, 11, 1, tzinfo=india).astimezone(UTC),
        end=datetime(2026, 11, 1, tzinfo=india).astimezone(UTC),
    )
    pool = await asyncpg.create_pool(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    figures: list[Figure] = []
    checks: dict[str, Any] = {"rollup_primary_key": key}
    try:
        async with pool.acquire() as connection:
            total = await connection.fetchval(
                "SELECT count(*) FROM analytics.scans WHERE organization_id = $1", ORGANIZATION
            )
        print(f"{total:,} scans of one organization in {DATABASE}")
        checks["scans"] = total
        cases: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]], bool]] = [
            (
                "breakdown by country, a year",
                lambda: queries.values(year, analytics_pb2.COUNTRY),
                lambda: naive_values(pool, "country", start, end),
                True,
            ),
            (
                "breakdown by device type, a year",
                lambda: queries.values(year, analytics_pb2.DEVICE_TYPE),
                lambda: naive_values(pool, "device_type", start, end),
                True,
            ),
            (
                "daily series in Stockholm, a year",
                lambda: queries.time_series(year, Granularity.DAY),
                lambda: naive_days(pool, "Europe/Stockholm", start, end),
                True,
            ),
            (
                "summary, a year",
                lambda: queries.summary(year),
                lambda: naive_summary(pool, start, end),
                False,
            ),
            (
                "peak times in Stockholm, a year",
                lambda: queries.peak_times(year),
                lambda: naive_peak(pool, "Europe/Stockholm", start, end),
                False,
            ),
            (
                "breakdown by country, edges off the hour",
                lambda: queries.values(off_hours, analytics_pb2.COUNTRY),
                lambda: naive_values(pool, "country", off_hours.start, off_hours.end),
                False,
            ),
            (
                "daily series in Kolkata (:30), a year",
                lambda: queries.time_series(kolkata, Granularity.DAY),
                lambda: naive_days(pool, "Asia/Kolkata", kolkata.start, kolkata.end),
                False,
            ),
        ]
        for name, ours_call, naive_call, target in cases:
            ours_times, ours_answer = await timed(ours_call, runs)
            base_times, base_answer = await timed(naive_call, baseline_runs)
            agree = same(ours_answer, base_answer)
            checks[name] = "same numbers" if agree else "DIFFERENT"
            if not agree:
                raise AssertionError(f"{name}: ours and the naive query disagree")
            figures.append(figure(name, "p50", ours_times, base_times, target=target))
            figures.append(figure(name, "p95", ours_times, base_times, target=False))
            print(
                f"  {name}: ours p50 {statistics.median(ours_times):.1f} ms ({len(ours_times)} runs),"
                f" naive p50 {statistics.median(base_times):.0f} ms ({len(base_times)} runs), same numbers"
            )
        figures.extend(await through_grpc(url, runs, year, pool))
        note = f"over {total:,} synthetic scans of one organization in a year"
        figures = [dataclasses.replace(f, details={**f.details, "note": note}) for f in figures]
    finally:
        await pool.close()
        await engine.dispose()
    return figures, checks


def same(ours: Any, naive: Any) -> bool:
    """Whether our answer has the naive query's numbers (values, buckets, a summary or peak cells)."""
    if isinstance(ours, dict):
        return bool({value: scans for value, (scans, _) in ours.items() if scans} == naive)
    if isinstance(ours, Summary):
        return bool(ours.scans == naive)
    if ours and isinstance(ours[0], int):
        return bool(ours == naive)
    return bool({bucket.start: bucket.scans for bucket in ours if bucket.scans} == naive)


async def through_grpc(url: str, runs: int, year: Query, pool: asyncpg.Pool) -> list[Figure]:
    """The same breakdown and series as RPCs to an in-process analytics server (no caller checks:
    the bench has no identity service), beside the naive queries."""
    settings = Settings(
        service="analytics",
        database_url=url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        metrics_port=0,
        extra={"CONSUMERS": "0", "STREAM": "bench-analytics-unused", "RETENTION_DAYS": "36500"},
    )
    spec = dataclasses.replace(analytics_server.SPEC, guarded=False, access=None)
    server, port = await create_server(settings, spec)
    await server.start()
    figures = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
            parent, zone = f"organizations/{ORGANIZATION}", "Europe/Stockholm"
            begin, finish = _stamp(year.start), _stamp(year.end)
            breakdown = analytics_service_pb2.GetScanBreakdownRequest(
                parent=parent, dimension=analytics_pb2.COUNTRY, start_time=begin, end_time=finish, time_zone=zone
            )
            series = analytics_service_pb2.GetScanTimeSeriesRequest(
                parent=parent, granularity=analytics_pb2.DAY, start_time=begin, end_time=finish, time_zone=zone
            )
            for name, call, naive in (
                (
                    "GetScanBreakdown (country), a year",
                    lambda: stub.GetScanBreakdown(breakdown),
                    lambda: naive_values(pool, "country", year.start, year.end),
                ),
                (
                    "GetScanTimeSeries (day, Stockholm), a year",
                    lambda: stub.GetScanTimeSeries(series),
                    lambda: naive_days(pool, "Europe/Stockholm", year.start, year.end),
                ),
            ):
                ours_times, _ = await timed(call, runs)
                base_times, _ = await timed(naive, max(3, runs // 10))
                figures.append(figure(name, "p50", ours_times, base_times, target=True))
                figures.append(figure(name, "p95", ours_times, base_times, target=False))
    finally:
        await server.stop(0)
    return figures


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument("--reload", action="store_true", help="load the scans again even if they are there")
    parser.add_argument(
        "--layout",
        choices=("keep", "as-migrated", "dimension-first"),
        default="keep",
        help="the rollups' primary key column order to measure with (rebuilt if needed; default: as it is)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server where qrmesh_bench may be created (default: DATABASE_URL)",
    )
    args = parser.parse_args()

    async def run() -> tuple[list[Figure], dict[str, Any]]:
        await ensure_database(args.database_url)
        seconds = await load(args.database_url, args.scans, reload=args.reload)
        if seconds is not None:
            print(f"loaded {args.scans:,} scans in {seconds:.0f} s ({args.scans / seconds:,.0f} scans/s)")
        else:
            print(f"reusing the {args.scans:,} scans already in {DATABASE}")
        figures, checks = await measure(args.database_url, args.runs, args.baseline_runs, args.layout)
        checks["load_seconds"] = seconds
        return figures, checks

    figures, checks = asyncio.run(run())
    emit("analytics_query", figures, args={"scans": args.scans, "runs": args.runs, "layout": args.layout}, extra=checks)
    missed = sorted({f.name for f in figures if f.met is False})
    if missed:
        print("targets not met: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
