"""The benchmark's fast loader writes what the ingestion writes.

The same synthetic scans go once through the ingestion's write path (`Consumer.write`, a batch at a
time, in time order) into one database and once through bench/analytics_load.py into another; raw
scans, both rollups and the daily visitors are compared row for row. The scans span days the
ingestion still remembers visitors of (uniques counted) and older days (late: no uniques), two
organizations, outcomes that are not counted and scans without a visitor id.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bench import analytics_load
from bench.analytics_data import Shape, bench_database, generate, rows
from qrmesh.analytics import retention
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.enrich import Enricher, Prepared
from qrmesh.analytics.ingest import Consumer
from qrmesh.platform.database import create_engine
from qrmesh.scans.v1 import scan_event_pb2

Event = scan_event_pb2.ScanEvent
TABLES = {
    "scans": "time, event_id",
    "rollup_hourly": "organization_id, qr_code_id, hour, dimension, value, bot",
    "rollup_daily": "organization_id, qr_code_id, day, dimension, value, bot",
    "daily_visitors": "day, visitor_key",
}


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_rows_are_what_the_ingestion_stores_of_the_generated_events() -> None:
    shape = Shape(codes=7, hours=48)
    enricher = Enricher()
    prepared = [enricher.prepare("0-0", event) for event in generate(3000, shape, seed=11)]
    assert [row.row for row in prepared if row is not None] == list(rows(3000, shape, seed=11))


def _scans() -> list[tuple[Any, ...]]:
    """Two organizations; days the ingestion remembers visitors of and days it has forgotten (kept a day away
    from the boundary, so midnight passing during the test changes nothing); some scans not counted or
    without a visitor."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old = today - timedelta(days=retention.KEEP_VISITOR_DAYS + 6)
    recent = today - timedelta(days=1)
    made = [
        *rows(9000, Shape(organization="org-a", codes=12, start=old, hours=4 * 24), seed=1),
        *rows(9000, Shape(organization="org-a", codes=12, start=recent, hours=2 * 24, repeat=0.3), seed=2),
        *rows(2000, Shape(organization="org-b", codes=3, start=recent, hours=2 * 24, repeat=0.5), seed=3),
    ]
    changed = []
    for index, row in enumerate(made):
        values = list(row)
        if index % 37 == 0:
            values[5] = Event.EXPIRED
        if index % 41 == 0:
            values[18] = ""
        changed.append(tuple(values))
    return sorted(changed, key=lambda row: (row[1], row[0]))


async def _contents(url: str) -> dict[str, list[asyncpg.Record]]:
    connection = await asyncpg.connect(_plain(url))
    try:
        return {
            table: await connection.fetch(f"SELECT * FROM analytics.{table} ORDER BY {key}")  # noqa: S608
            for table, key in TABLES.items()
        }
    finally:
        await connection.close()


@pytest.fixture
async def databases(postgres_admin_url: str) -> AsyncIterator[tuple[str, str]]:
    names = [f"qrmesh_loader_{os.getpid()}_{which}" for which in ("ingested", "loaded")]
    urls = [await bench_database(postgres_admin_url, name, fresh=True) for name in names]
    try:
        yield urls[0], urls[1]
    finally:
        admin = await asyncpg.connect(_plain(postgres_admin_url))
        try:
            for name in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _ingest(url: str, scans: list[tuple[Any, ...]]) -> None:
    engine = create_engine(url, schema="analytics", pool_size=1)
    consumer = Consumer(engine, None, AnalyticsConfig(stream="bench-loader-unused"), Enricher(), name="bench-loader")  # type: ignore[arg-type]
    prepared = [Prepared(f"{index}-0", row, row[5] == Event.REDIRECTED, "", "") for index, row in enumerate(scans)]
    try:
        for offset in range(0, len(prepared), 1000):
            batch = prepared[offset : offset + 1000]
            await consumer.ensure_partitions(batch)
            await consumer.write(batch, [])
    finally:
        await engine.dispose()


async def _load(url: str, scans: list[tuple[Any, ...]]) -> None:
    connection = await asyncpg.connect(_plain(url))
    forgotten = (datetime.now(UTC) - timedelta(days=retention.KEEP_VISITOR_DAYS)).date()
    try:
        await analytics_load.tune(connection)
        start, end = analytics_load.day_start(scans[0][1]), analytics_load.day_after(scans[-1][1])
        middle = start + (end - start) // 2
        middle = analytics_load.day_start(middle)
        # Two slices, as the benchmark loads a week at a time.
        for begin, finish in ((start, middle), (middle, end)):
            part = [row for row in scans if begin <= row[1] < finish]
            await analytics_load.load_slice(
                connection, part, begin, finish, forgotten=forgotten, visitors_from=date.min
            )
    finally:
        await connection.close()


async def test_the_loader_writes_what_the_ingestion_writes(databases: tuple[str, str]) -> None:
    ingested_url, loaded_url = databases
    scans = _scans()
    await _ingest(ingested_url, scans)
    await _load(loaded_url, scans)
    ingested, loaded = await _contents(ingested_url), await _contents(loaded_url)

    assert len(ingested["scans"]) == len(scans)
    hourly = ingested["rollup_hourly"]
    assert hourly, "the ingestion wrote no rollups"
    forgotten = (datetime.now(UTC) - timedelta(days=retention.KEEP_VISITOR_DAYS)).date()
    assert any(row["uniques"] for row in hourly if row["hour"].date() >= forgotten), "no uniques counted"
    assert not any(row["uniques"] for row in hourly if row["hour"].date() < forgotten), "late scans counted"
    assert any(row["uniques"] < row["scans"] for row in hourly if row["hour"].date() >= forgotten), "no repeats"
    for table in TABLES:
        want, got = [tuple(row) for row in ingested[table]], [tuple(row) for row in loaded[table]]
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        # Differences only (pytest's diff of two lists this long takes minutes).
        assert (len(got), missing[:5], extra[:5]) == (len(want), [], []), table
