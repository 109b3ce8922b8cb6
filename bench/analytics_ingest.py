"""Scan ingestion: events per second one analytics consumer stores from the stream, beside the bare cost of
reading and acknowledging the same entries and a naive consumer that writes a row per round trip.

    python -m bench.analytics_ingest [--events 200000] [--runs 3] [--naive-events 5000]

Each run fills a fresh stream of its own with `--events` synthetic scans of the last hour
(bench/analytics_data.py: real user agents, countries, repeats, bots; 50 codes of one organization), then:
- bare: XREADGROUP + XACK of every entry in batches of --batch, nothing else (the floor Redis sets);
- ours: the service's `Consumer` (decode, enrich, one transaction per batch: raw rows, visitors, rollups,
  then XACK) with raw rows COPYed into a staging table, one and two consumers in this process
  (QRMESH_ANALYTICS_CONSUMERS), and one with raw rows as arrays in `INSERT .. SELECT FROM unnest`;
- naive: decode and enrich the same way, then one INSERT round trip per scan (raw rows only, no rollups),
  on `--naive-events` entries.
Everything runs in this one process. Besides events per second (wall clock, with PostgreSQL on the same
machine), it reports the CPU each event costs this process and the database's backends (read from /proc
when PostgreSQL is local): events per CPU-second of the consumer is its capacity when the database has cores
of its own. Uses DATABASE_URL (database `qrmesh_bench_ingest`, created and emptied here; never the test
databases) or an embedded PostgreSQL, and always an embedded Valkey. Prints a table and writes
bench/results/analytics_ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.analytics_data import Shape, bench_database, generate
from bench.report import Figure, Sample, emit
from bench.servers import engines
from qrmesh.analytics import store_write
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.domain import enrichment
from qrmesh.analytics.enrich import SCAN_COLUMNS, Enricher
from qrmesh.analytics.ingest import Consumer, Entry
from qrmesh.platform.database import create_engine

GROUP = "analytics"
Runner = Callable[[redis.Redis, str, int, int, AsyncEngine], Coroutine[Any, Any, float]]
DATABASE = "qrmesh_bench_ingest"
TARGET = 20_000


def backend_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds each of these local PostgreSQL backends used so far (none when /proc does not show them)."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


async def backends(engine: AsyncEngine) -> list[int]:
    """PIDs of every backend connected to the bench database (only this benchmark uses it)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name"), {"name": DATABASE}
        )
        return [int(pid) for (pid,) in rows]


async def fill(client: redis.Redis, stream: str, payloads: list[bytes]) -> None:
    """XADD every payload (field `event`) and create the group at the start."""
    await client.delete(stream)
    for start in range(0, len(payloads), 2000):
        async with client.pipeline(transaction=False) as pipe:
            for payload in payloads[start : start + 2000]:
                pipe.xadd(stream, {"event": payload})
            await pipe.execute()
    await client.xgroup_create(stream, GROUP, id="0")


async def read(client: redis.Redis, stream: str, batch: int) -> list[Entry]:
    answer: Any = await client.xreadgroup(GROUP, "bench", {stream: ">"}, count=batch)
    entries: list[Entry] = []
    for _, items in answer or []:
        entries.extend((entry_id.decode(), fields) for entry_id, fields in items)
    return entries


async def bare(client: redis.Redis, stream: str, count: int, batch: int, _: AsyncEngine) -> float:
    """Seconds to read and acknowledge `count` entries."""
    started = time.perf_counter()
    done = 0
    while done < count:
        entries = await read(client, stream, batch)
        if not entries:
            break
        await client.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
        done += len(entries)
    return time.perf_counter() - started


def ours(method: str, lanes: int = 1) -> Runner:
    """The service's consumers: `lanes` of them in this process (QRMESH_ANALYTICS_CONSUMERS)."""

    async def run(client: redis.Redis, stream: str, count: int, batch: int, engine: AsyncEngine) -> float:
        config = AnalyticsConfig(stream=stream, group=GROUP, batch=batch, block_ms=100, claim_idle_ms=600_000)
        consumers = [
            Consumer(engine, client, config, Enricher(), name=f"bench-{lane}", raw_method=method)
            for lane in range(lanes)
        ]

        async def drain(consumer: Consumer) -> None:
            while sum(c.processed for c in consumers) < count:
                result = await consumer.step()
                if not result.entries:
                    return

        started = time.perf_counter()
        await asyncio.gather(*(drain(consumer) for consumer in consumers))
        elapsed = time.perf_counter() - started
        stored = sum(consumer.stored for consumer in consumers)
        if stored != count:
            raise RuntimeError(f"stored {stored} of {count}")
        return elapsed

    return run


async def naive(client: redis.Redis, stream: str, count: int, batch: int, engine: AsyncEngine) -> float:
    """Decode and enrich as ours does, then an INSERT per scan; seconds for `count` entries."""
    enricher = Enricher()
    statement = (
        f"INSERT INTO analytics.scans ({', '.join(SCAN_COLUMNS)}) "  # noqa: S608 - constants
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(SCAN_COLUMNS) + 1))}) ON CONFLICT DO NOTHING"
    )
    started = time.perf_counter()
    done = 0
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        pg: Any = raw.driver_connection
        while done < count:
            entries = await read(client, stream, batch)
            if not entries:
                break
            for entry_id, fields in entries:
                row = enricher.prepare(entry_id, enricher.decode(fields[b"event"]))
                if row is not None:
                    await pg.execute(statement, *row.row)
            await client.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
            done += len(entries)
    return time.perf_counter() - started


async def empty(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("TRUNCATE analytics.scans, analytics.rollup_hourly, analytics.rollup_daily, analytics.daily_visitors")
        )


async def measure(args: argparse.Namespace, database_url: str, redis_url: str) -> list[Figure]:
    url = await bench_database(database_url, DATABASE, fresh=True)
    engine = create_engine(url, schema="analytics", pool_size=4)
    client = redis.from_url(redis_url)
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    events = list(generate(args.events, Shape(organization="bench-ingest", start=start, hours=1), seed=11))
    payloads = [event.SerializeToString() for event in events]
    naive_payloads = payloads[: args.naive_events]
    variants: list[tuple[str, Runner, list[bytes]]] = [
        ("bare", bare, payloads),
        ("copy x1", ours(store_write.RAW_COPY, 1), payloads),
        ("copy x2", ours(store_write.RAW_COPY, 2), payloads),
        ("unnest x1", ours(store_write.RAW_UNNEST, 1), payloads),
        ("naive", naive, naive_payloads),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    database_cpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    cache: dict[str, Any] = {}
    try:
        for run in range(args.runs):
            for name, runner, chosen in variants:
                await empty(engine)
                stream = f"bench-scans-{name.replace(' ', '-')}-{run}"
                await fill(client, stream, chosen)
                database_before = backend_cpu(await backends(engine))
                process_before = time.process_time()
                seconds = await runner(client, stream, len(chosen), args.batch, engine)
                process_cpu = time.process_time() - process_before
                database_after = backend_cpu(await backends(engine))
                # Backends that went away during the run are not counted (the pool keeps its connections).
                pg_cpu = sum(used - database_before.get(pid, 0.0) for pid, used in database_after.items())
                await client.delete(stream, f"{stream}:dead")
                count = len(chosen)
                rates[name].append(count / seconds)
                cpu[name].append(process_cpu / count * 1e6)
                database_cpu[name].append(pg_cpu / count * 1e6)
                print(
                    f"run {run + 1}: {name:9} {count:>8} events in {seconds:6.2f} s = {count / seconds:>9,.0f} /s; "
                    f"CPU per event: this process {cpu[name][-1]:5.1f} us, PostgreSQL {database_cpu[name][-1]:5.1f} us"
                )
            hits, misses, size = enrichment.agent_cache_info()
            cache = {"hits": hits, "misses": misses, "entries": size}
        async with engine.connect() as connection:
            rows = {
                table: (await connection.execute(text(f"SELECT count(*) FROM analytics.{table}"))).scalar()  # noqa: S608
                for table in ("scans", "rollup_hourly", "rollup_daily", "daily_visitors")
            }
    finally:
        await client.aclose()
        await engine.dispose()
    best = max(("copy x1", "copy x2"), key=lambda name: statistics.median(rates[name]))
    capacity = [1e6 / micros for micros in cpu["copy x1"]]
    details = {
        "events": args.events,
        "batch": args.batch,
        "best": best,
        "cpu_us_per_event": {name: statistics.median(values) for name, values in cpu.items()},
        "postgresql_cpu_us_per_event": {name: statistics.median(values) for name, values in database_cpu.items()},
        "rows_after_last_run": rows,
        "user_agent_cache": cache,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    return [
        Figure(
            f"ingestion, one process ({best})",
            "events/s",
            Sample.of(rates[best]),
            "bare XREADGROUP+XACK",
            Sample.of(rates["bare"]),
            target=f">= {TARGET:,} scans/s per consumer process",
            met=statistics.median(rates[best]) >= TARGET,
            details=details,
        ),
        Figure(
            "consumer CPU: events per CPU-second",
            "events/s",
            Sample.of(capacity),
            "bare XREADGROUP+XACK",
            Sample.of([1e6 / micros for micros in cpu["bare"]]),
            target=f">= {TARGET:,} scans/s of one consumer's core (database on its own)",
            met=statistics.median(capacity) >= TARGET,
        ),
        Figure(
            f"ingestion, one process ({best})",
            "events/s",
            Sample.of(rates[best]),
            "naive INSERT per scan",
            Sample.of(rates["naive"]),
            details={"naive_events": args.naive_events},
        ),
        Figure(
            "one consumer, raw rows by COPY",
            "events/s",
            Sample.of(rates["copy x1"]),
            "raw rows by unnest arrays",
            Sample.of(rates["unnest x1"]),
        ),
        Figure(
            "two consumers in the process",
            "events/s",
            Sample.of(rates["copy x2"]),
            "one consumer",
            Sample.of(rates["copy x1"]),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=AnalyticsConfig().batch)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as workdir,
        engines(Path(workdir), own_redis=True) as (
            database_url,
            redis_url,
        ),
    ):
        figures = asyncio.run(measure(args, database_url, redis_url))
    emit("analytics_ingest", figures, args=vars(args))


if __name__ == "__main__":
    main()
