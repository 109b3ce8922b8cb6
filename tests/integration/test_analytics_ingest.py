"""Scan ingestion of the analytics service against real Redis and PostgreSQL.

Tests that need the service use the session's `analytics_server` and its private
stream; tests of crashes run consumers of their own on streams of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import maxminddb
import pytest
import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.analytics_data import Shape, generate
from qrmesh.analytics import partitions, retention
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.domain import retention as retention_rules
from qrmesh.analytics.domain.aggregate import DIMENSIONS
from qrmesh.analytics.enrich import CityDatabase, Enricher, Prepared
from qrmesh.analytics.ingest import LIVE_CHANNEL, LIVE_CHUNK, WATCHING_KEY, Consumer, Entry
from qrmesh.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.database import create_engine
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2
from tests.conftest import SERVICE_SECRET

Event = scan_event_pb2.ScanEvent
COLUMNS = ("country", "region", "city", "device_type", "os", "browser", "language", "referrer", "matched_rule")
COLUMNS_BY_DIMENSION = dict(zip(DIMENSIONS, (*COLUMNS, "destination_url", "device_brand"), strict=True))


@pytest.fixture(scope="module")
async def engine(analytics_server: Server, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, schema="analytics")
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def private_stream(client: redis.Redis) -> AsyncIterator[str]:
    """A stream (and dead-letter stream) of this test's own."""
    name = f"test-scans-{secrets.token_hex(6)}"
    yield name
    await client.delete(name, f"{name}:dead")


def event(
    organization: str,
    code: str = "code-1",
    *,
    when: datetime | None = None,
    visitor: str = "visitor-1",
    agent: str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    outcome: int = Event.REDIRECTED,
    bot: bool = False,
) -> Event:
    stamp = Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return Event(
        event_id=str(uuid.uuid4()),
        time=stamp,
        short_code="abc",
        qr_code=f"organizations/{organization}/qrCodes/{code}",
        organization=f"organizations/{organization}",
        outcome=outcome,  # type: ignore[arg-type]
        destination_url="https://example.com/",
        user_agent=agent,
        accept_language="sv-SE,sv;q=0.9",
        referer="https://L.Facebook.com:443/x",
        country="SE",
        ip_address="81.224.0.0",
        visitor_id=visitor,
        bot=bot,
        method="GET",
    )


async def append(client: redis.Redis, stream: str, events: Sequence[Event | bytes]) -> list[str]:
    """XADD the events in one MULTI, so a consumer reads them in one batch."""
    async with client.pipeline(transaction=True) as pipe:
        for item in events:
            payload = item if isinstance(item, bytes) else item.SerializeToString()
            pipe.xadd(stream, {"event": payload})
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def drained(client: redis.Redis, stream: str, group: str = "analytics", patience: float = 30.0) -> None:
    """Wait until the group has read and acknowledged every entry of the stream."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        groups: Any = await client.xinfo_groups(stream)
        info = next((g for g in groups if g["name"] in (group, group.encode())), None)
        if info is not None and info["lag"] == 0 and info["pending"] == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream {stream} not drained: {info}")
        await asyncio.sleep(0.05)


async def scalar(engine: AsyncEngine, sql: str, **params: object) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


async def totals(engine: AsyncEngine, organization: str, code: str = "") -> tuple[int, int]:
    """(scans, uniques) of the daily total rows, bots included."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT coalesce(sum(scans), 0), coalesce(sum(uniques), 0) FROM analytics.rollup_daily "
                    "WHERE organization_id = :org AND qr_code_id = :code AND dimension = 0"
                ),
                {"org": organization, "code": code},
            )
        ).one()
    return int(row[0]), int(row[1])


def consumer_config(stream: str, **changes: Any) -> AnalyticsConfig:
    return AnalyticsConfig(stream=stream, group="analytics", batch=100, block_ms=50, claim_idle_ms=200, **changes)


# -- through the service ---------------------------------------------------------------------------------------


async def test_a_replayed_event_counts_once(
    analytics_server: Server, analytics_stream: str, client: redis.Redis, engine: AsyncEngine
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    first = event(organization, visitor="v1")
    second = event(organization, visitor="v1")
    other = event(organization, code="code-2", visitor="v2")
    await append(client, analytics_stream, [first, second, first, other])
    await drained(client, analytics_stream)
    await append(client, analytics_stream, [first, other])  # a later replay, another batch
    await drained(client, analytics_stream)

    stored = await scalar(engine, "SELECT count(*) FROM analytics.scans WHERE organization_id = :org", org=organization)
    assert stored == 3
    assert await totals(engine, organization, "code-1") == (2, 1)
    assert await totals(engine, organization, "code-2") == (1, 1)
    assert await totals(engine, organization) == (3, 2)
    hourly = await scalar(
        engine,
        "SELECT sum(scans) FROM analytics.rollup_hourly WHERE organization_id = :org AND qr_code_id = '' "
        "AND dimension = 11",
        org=organization,
    )
    assert hourly == 3


async def test_rollups_match_the_raw_scans(
    analytics_server: Server, analytics_stream: str, client: redis.Redis, engine: AsyncEngine
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    start = (datetime.now(UTC) - timedelta(hours=60)).replace(minute=0, second=0, microsecond=0)
    events = list(generate(1500, Shape(organization=organization, codes=5, start=start, hours=48), seed=3))
    events.append(event(organization, outcome=Event.PAUSED))  # stored, not counted
    await append(client, analytics_stream, events)
    await drained(client, analytics_stream)

    assert (
        await scalar(engine, "SELECT count(*) FROM analytics.scans WHERE organization_id = :org", org=organization)
        == 1501
    )
    async with engine.connect() as connection:
        for dimension, column in COLUMNS_BY_DIMENSION.items():
            for table, bucket, raw_bucket in (
                ("rollup_daily", "day", "(time AT TIME ZONE 'UTC')::date"),
                ("rollup_hourly", "hour", "date_trunc('hour', time)"),
            ):
                for code_filter, raw_filter in (
                    ("qr_code_id = ''", "true"),
                    ("qr_code_id = 'code-0001'", "qr_code_id = 'code-0001'"),
                ):
                    rollup = (
                        await connection.execute(
                            text(
                                f"SELECT {bucket}, value, bot, scans FROM analytics.{table} "  # noqa: S608
                                f"WHERE organization_id = :org AND {code_filter} AND dimension = :dimension "
                                "ORDER BY 1, 2, 3"
                            ),
                            {"org": organization, "dimension": dimension},
                        )
                    ).all()
                    raw = (
                        await connection.execute(
                            text(
                                f"SELECT {raw_bucket}, {column}, bot, count(*) FROM analytics.scans "  # noqa: S608
                                f"WHERE organization_id = :org AND outcome = 1 AND {raw_filter} "
                                "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                            ),
                            {"org": organization},
                        )
                    ).all()
                    assert [tuple(r) for r in rollup] == [tuple(r) for r in raw], (table, column, code_filter)
        uniques = (
            await connection.execute(
                text(
                    "SELECT day, qr_code_id, sum(uniques) FROM analytics.rollup_daily WHERE organization_id = :org "
                    "AND dimension = 0 GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"org": organization},
            )
        ).all()
        expected = (
            await connection.execute(
                text(
                    "SELECT d, c, count(DISTINCT visitor_id) FROM ("
                    "  SELECT (time AT TIME ZONE 'UTC')::date AS d, qr_code_id AS c, visitor_id FROM analytics.scans"
                    "  WHERE organization_id = :org AND outcome = 1"
                    "  UNION ALL SELECT (time AT TIME ZONE 'UTC')::date, '', visitor_id FROM analytics.scans"
                    "  WHERE organization_id = :org AND outcome = 1"
                    ") s GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"org": organization},
            )
        ).all()
    assert [tuple(r) for r in uniques] == [tuple(r) for r in expected]
    async with engine.connect() as connection:
        hourly_uniques = (
            await connection.execute(
                text(
                    "SELECT hour, qr_code_id, sum(uniques) FROM analytics.rollup_hourly WHERE organization_id = :org "
                    "AND dimension = 0 GROUP BY 1, 2 HAVING sum(uniques) > 0 ORDER BY 1, 2"
                ),
                {"org": organization},
            )
        ).all()
        first_hours = (
            await connection.execute(
                text(
                    "SELECT date_trunc('hour', first, 'UTC'), c, count(*) FROM ("
                    "  SELECT min(time) AS first, qr_code_id AS c FROM analytics.scans"
                    "  WHERE organization_id = :org AND outcome = 1"
                    "  GROUP BY (time AT TIME ZONE 'UTC')::date, qr_code_id, visitor_id"
                    "  UNION ALL SELECT min(time), '' FROM analytics.scans WHERE organization_id = :org AND outcome = 1"
                    "  GROUP BY (time AT TIME ZONE 'UTC')::date, visitor_id"
                    ") s GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"org": organization},
            )
        ).all()
    # Each visitor's unique is in the hour of their first scan of the day.
    assert [tuple(r) for r in hourly_uniques] == [tuple(r) for r in first_hours]
    bots = await scalar(
        engine,
        "SELECT sum(scans) FROM analytics.rollup_daily WHERE organization_id = :org AND qr_code_id = '' "
        "AND dimension = 4 AND value = 'bot'",
        org=organization,
    )
    assert bots == sum(1 for e in events if e.bot)


async def test_a_visitor_s_first_scan_carries_the_unique_even_within_one_batch(
    analytics_server: Server, analytics_stream: str, client: redis.Redis, engine: AsyncEngine
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    now = datetime.now(UTC).replace(minute=30)
    if now > datetime.now(UTC):
        now -= timedelta(hours=1)
    first = event(organization, when=now - timedelta(minutes=20), visitor="v")
    again = event(organization, when=now, visitor="v")
    other_code = event(organization, code="code-2", when=now - timedelta(minutes=25), visitor="v")
    await append(client, analytics_stream, [again, first, other_code])  # out of order in the stream
    await drained(client, analytics_stream)
    assert await totals(engine, organization, "code-1") == (2, 1)
    assert await totals(engine, organization, "code-2") == (1, 1)
    assert await totals(engine, organization) == (3, 1)
    hour_of_first = await scalar(
        engine,
        "SELECT hour FROM analytics.rollup_hourly WHERE organization_id = :org AND qr_code_id = 'code-1' "
        "AND dimension = 0 AND uniques = 1",
        org=organization,
    )
    assert hour_of_first == (now - timedelta(minutes=20)).replace(minute=0, second=0, microsecond=0)
    # The organization's QR_CODE breakdown counts code-2's own unique visitor.
    assert (
        await scalar(
            engine,
            "SELECT sum(uniques) FROM analytics.rollup_daily WHERE organization_id = :org AND qr_code_id = '' "
            "AND dimension = 11 AND value = 'code-2'",
            org=organization,
        )
        == 1
    )
    await append(client, analytics_stream, [event(organization, when=now, visitor="v")])  # later, same day
    await drained(client, analytics_stream)
    assert await totals(engine, organization) == (4, 1)


async def test_enrichment_is_stored(
    analytics_server: Server, analytics_stream: str, client: redis.Redis, engine: AsyncEngine
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    await append(client, analytics_stream, [event(organization)])
    await drained(client, analytics_stream)
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT device_type, device_brand, os, browser, language, referrer, country, region, city "
                    "FROM analytics.scans WHERE organization_id = :org"
                ),
                {"org": organization},
            )
        ).one()
    assert tuple(row) == ("mobile", "Apple", "iOS", "Mobile Safari", "sv", "l.facebook.com", "SE", "", "")


async def test_unknown_codes_are_acknowledged_and_not_stored(
    analytics_server: Server, analytics_stream: str, client: redis.Redis, engine: AsyncEngine
) -> None:
    orphan = Event(event_id=str(uuid.uuid4()), short_code="nope", outcome=Event.UNKNOWN_CODE)
    orphan.time.FromDatetime(datetime.now(UTC))
    await append(client, analytics_stream, [orphan])
    await drained(client, analytics_stream)
    assert await scalar(engine, "SELECT count(*) FROM analytics.scans WHERE short_code = 'nope'") == 0


async def test_an_undecodable_entry_is_a_dead_letter_listed_by_the_admin_rpc(
    analytics_server: Server, analytics_stream: str, client: redis.Redis
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    garbage = b"\xff\xff\xff not a scan event " + secrets.token_bytes(8)
    no_id = event(organization)
    no_id.event_id = "not-a-uuid"
    ids = await append(client, analytics_stream, [garbage, no_id])
    await drained(client, analytics_stream)
    # Gone from the session's stream once handled: other tests read it and expect ScanEvents only.
    await client.xdel(analytics_stream, *ids)

    dead: Any = await client.xrange(f"{analytics_stream}:dead")
    by_id = {fields[b"stream_id"].decode(): fields for _, fields in dead}
    assert set(ids) <= set(by_id)
    assert by_id[ids[0]][b"event"] == garbage
    assert b"not a ScanEvent" in by_id[ids[0]][b"reason"]
    assert b"not a UUID" in by_id[ids[1]][b"reason"]

    token = service_token(SERVICE_SECRET, "ops")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_server.port}") as channel:
        admin = analytics_service_pb2_grpc.AnalyticsAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.ListDeadLetters(analytics_service_pb2.ListDeadLettersRequest())
        assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        seen: dict[str, Any] = {}
        page_token = ""
        while True:
            answer = await admin.ListDeadLetters(
                analytics_service_pb2.ListDeadLettersRequest(page_size=1, page_token=page_token),
                metadata=((SERVICE_TOKEN_HEADER, token),),
            )
            assert len(answer.dead_letters) <= 1
            seen.update({letter.stream_id: letter for letter in answer.dead_letters})
            page_token = answer.next_page_token
            if not page_token:
                break
        assert seen[ids[0]].payload == garbage
        assert "not a ScanEvent" in seen[ids[0]].reason
        assert seen[ids[0]].deliveries == 1
        assert "not a UUID" in seen[ids[1]].reason

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.ListDeadLetters(
                analytics_service_pb2.ListDeadLettersRequest(page_token="garbage!"),
                metadata=((SERVICE_TOKEN_HEADER, token),),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_month_without_a_partition_gets_one(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    # A month no other test (nor the service's upkeep, keeping 365 days) touches: a consumer of its own keeps
    # a century, and the month's partition goes again at the end.
    organization = f"org-{secrets.token_hex(4)}"
    month = partitions.Month(1971, 6)
    when = month.start + timedelta(days=3)
    async with engine.begin() as connection:
        await connection.execute(text(partitions.drop_statement(month)))
    consumer = Consumer(
        engine, client, consumer_config(private_stream, retention_days=36_500), Enricher(), name="old-months"
    )
    await consumer.ensure_group()
    await append(client, private_stream, [event(organization, when=when)])
    try:
        assert len((await consumer.step()).stored) == 1
        async with engine.begin() as connection:
            assert month in await partitions.existing(connection)
        stored = await scalar(
            engine,
            f"SELECT count(*) FROM analytics.{month.name} WHERE organization_id = :org",  # noqa: S608
            org=organization,
        )
        assert stored == 1
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(partitions.drop_statement(month)))


# -- crashes and poison ----------------------------------------------------------------------------------------


class CrashAfterCommit(Consumer):
    """Dies (raises) after its transaction committed and before it acknowledges: what a kill at that
    instant leaves behind."""

    async def after_commit(self, entries: Sequence[Entry]) -> None:
        raise RuntimeError("killed between commit and XACK")


async def test_a_consumer_that_dies_after_commit_double_counts_nothing(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    events = [event(organization, visitor=f"v{i % 7}") for i in range(40)]
    await append(client, private_stream, events)
    crashing = CrashAfterCommit(engine, client, consumer_config(private_stream), Enricher(), name="doomed")
    await crashing.ensure_group()
    with pytest.raises(RuntimeError, match="killed"):
        await crashing.step()
    assert await totals(engine, organization) == (40, 7)
    pending: Any = await client.xpending(private_stream, "analytics")
    assert pending["pending"] == 40

    survivor = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="survivor")
    await asyncio.sleep(0.3)  # past claim_idle_ms
    result = await survivor.step()
    assert len(result.stored) == 0
    assert result.duplicates == 40
    await drained(client, private_stream)
    assert await totals(engine, organization) == (40, 7)


KILLED_CONSUMER = """
import asyncio, sys, time
from pathlib import Path
import redis.asyncio as redis
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.enrich import Enricher
from qrmesh.analytics.ingest import Consumer
from qrmesh.platform.database import create_engine

class Stuck(Consumer):
    async def before_commit(self, stored):
        Path(sys.argv[3]).write_text(str(len(stored)))
        await asyncio.sleep(600)

async def main():
    engine = create_engine(sys.argv[1], schema="analytics")
    client = redis.from_url(sys.argv[2])
    config = AnalyticsConfig(stream=sys.argv[4], group="analytics", batch=100, block_ms=50, claim_idle_ms=200)
    consumer = Stuck(engine, client, config, Enricher(), name="killed")
    await consumer.ensure_group()
    await consumer.step()

asyncio.run(main())
"""


async def test_a_consumer_killed_mid_batch_loses_nothing(
    analytics_server: Server,
    settings: Settings,
    engine: AsyncEngine,
    client: redis.Redis,
    private_stream: str,
    tmp_path: Path,
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    events = [event(organization, code=f"c{i % 3}", visitor=f"v{i}") for i in range(30)]
    await append(client, private_stream, events)
    marker = tmp_path / "inside"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(KILLED_CONSUMER),
        settings.database_url,
        settings.redis_url,
        str(marker),
        private_stream,
        env=os.environ.copy(),
    )
    try:
        for _ in range(600):
            if marker.exists() or process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert marker.read_text() == "30"  # it wrote the batch and sits in its transaction
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    pending: Any = await client.xpending(private_stream, "analytics")
    assert pending["pending"] == 30
    assert await totals(engine, organization) == (0, 0)

    survivor = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="survivor")
    await asyncio.sleep(0.3)
    result = await survivor.step()
    assert len(result.stored) == 30
    await drained(client, private_stream)
    assert await totals(engine, organization) == (30, 30)
    assert await totals(engine, organization, "c0") == (10, 10)


class Poisoned(Consumer):
    """Fails to write any batch holding the event `poison`, as a database error would."""

    poison = ""

    async def write_rows(self, pg: Any, rows: Sequence[Prepared]) -> list[Prepared]:
        if any(row.event_id == self.poison for row in rows):
            raise ValueError("this event breaks the writer")
        return await super().write_rows(pg, rows)


async def test_an_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    events = [event(organization, visitor=f"v{i}") for i in range(5)]
    ids = await append(client, private_stream, events)
    consumer = Poisoned(engine, client, consumer_config(private_stream, max_deliveries=3), Enricher(), name="c")
    consumer.poison = events[2].event_id
    await consumer.ensure_group()

    first = await consumer.step()
    assert len(first.stored) == 4
    assert first.pending == [ids[2]]
    assert await totals(engine, organization) == (4, 4)
    for _ in range(100):
        await asyncio.sleep(0.25)  # past claim_idle_ms, and CLAIM_EVERY is not waited for after a claim
        consumer._claimed_at = -1e18
        result = await consumer.step()
        if result.dead:
            break
    assert [letter.entry_id for letter in result.dead] == [ids[2]]
    assert result.dead[0].deliveries == 3
    assert "breaks the writer" in result.dead[0].reason
    await drained(client, private_stream)
    reason = await scalar(
        engine,
        "SELECT reason FROM analytics.dead_letters WHERE stream = :stream AND stream_id = :id",
        stream=private_stream,
        id=ids[2],
    )
    assert "breaks the writer" in reason
    payload = await scalar(
        engine,
        "SELECT payload FROM analytics.dead_letters WHERE stream = :stream AND stream_id = :id",
        stream=private_stream,
        id=ids[2],
    )
    assert bytes(payload) == events[2].SerializeToString()
    assert await totals(engine, organization) == (4, 4)


async def test_idle_consumers_without_pending_entries_are_deleted(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    consumer = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="current")
    consumer.consumer_idle_ms = 100
    await consumer.ensure_group()
    await client.xgroup_createconsumer(private_stream, "analytics", "gone-empty")
    await append(client, private_stream, [event("org-x")])
    await client.xreadgroup("analytics", "gone-busy", {private_stream: ">"}, count=1)
    await asyncio.sleep(0.2)
    assert await consumer.delete_idle_consumers() == ["gone-empty"]
    names = {c["name"].decode() for c in await client.xinfo_consumers(private_stream, "analytics")}
    assert names == {"gone-busy"}


# -- retention ---------------------------------------------------------------------------------------------------


async def test_retention_drops_old_partitions_and_rows_of_shorter_retentions(
    analytics_server: Server, engine: AsyncEngine, analytics_stream: str, client: redis.Redis
) -> None:
    short, default = f"org-{secrets.token_hex(4)}", f"org-{secrets.token_hex(4)}"
    now = datetime.now(UTC)
    ancient = partitions.Month.of(now).plus(-15)
    # Stored before `short` gets its shorter retention (consumers skip events older than their organization's).
    await append(client, analytics_stream, [event(short, when=now - timedelta(days=40)), event(short)])
    await append(client, analytics_stream, [event(default, when=now - timedelta(days=40)), event(default)])
    await drained(client, analytics_stream)
    stale_letter, fresh_letter = f"{secrets.token_hex(4)}-0", f"{secrets.token_hex(4)}-0"
    async with engine.begin() as connection:
        await partitions.ensure(connection, [ancient])
        await retention.set_organization_retention(connection, short, 30)
        for stream_id, age in ((stale_letter, 31), (fresh_letter, 29)):
            await connection.execute(
                text(
                    "INSERT INTO analytics.dead_letters (stream, stream_id, reason, time, deliveries, payload) "
                    "VALUES ('test-retention', :id, 'test', :time, 1, '')"
                ),
                {"id": stream_id, "time": now - timedelta(days=age)},
            )

    # wait: the service's own upkeep may hold the lock right now; this round runs after it.
    report = await retention.run_once(engine, 365, now=now, wait=True)
    assert report.ran
    assert ancient in report.dropped
    assert report.longest_days == 365
    assert report.deleted_rows >= 1
    async with engine.begin() as connection:
        assert ancient not in await partitions.existing(connection)
        assert set(partitions.months_ahead(now)) <= await partitions.existing(connection)
    kept = "SELECT count(*) FROM analytics.scans WHERE organization_id = :org"
    assert await scalar(engine, kept, org=short) == 1
    assert await scalar(engine, kept, org=default) == 2
    assert (await totals(engine, short))[0] == 2  # rollups stay
    letters = "SELECT stream_id FROM analytics.dead_letters WHERE stream = 'test-retention' ORDER BY 1"
    async with engine.begin() as connection:
        assert [row[0] for row in await connection.execute(text(letters))] == [fresh_letter]
        await connection.execute(text("DELETE FROM analytics.dead_letters WHERE stream = 'test-retention'"))
        await retention.set_organization_retention(connection, short, None)


# -- live feed ---------------------------------------------------------------------------------------------------


async def test_new_scans_of_a_watched_organization_are_published_after_commit(
    analytics_server: Server, analytics_stream: str, client: redis.Redis
) -> None:
    watched, unwatched = f"org-{secrets.token_hex(4)}", f"org-{secrets.token_hex(4)}"
    await client.set(WATCHING_KEY.format(watched), "1", ex=30)
    pubsub: Any = client.pubsub()
    await pubsub.subscribe(LIVE_CHANNEL.format(watched), LIVE_CHANNEL.format(unwatched))
    now = datetime.now(UTC)
    later, earlier = event(watched, when=now), event(watched, when=now - timedelta(seconds=5), bot=True)
    await append(client, analytics_stream, [later, earlier, event(unwatched)])
    await append(client, analytics_stream, [later])  # a replay is not published again
    await drained(client, analytics_stream)
    messages = []
    for _ in range(40):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
        if message is not None:
            messages.append(message)
        elif messages:
            break
    await pubsub.aclose()
    await client.delete(WATCHING_KEY.format(watched))
    assert [m["channel"].decode() for m in messages] == [LIVE_CHANNEL.format(watched)]
    response = analytics_service_pb2.WatchScansResponse.FromString(messages[0]["data"])
    assert [scan.event_id for scan in response.scans] == [earlier.event_id, later.event_id]
    assert response.scans[0].bot
    assert response.scans[1].qr_code == f"organizations/{watched}/qrCodes/code-1"
    assert response.scans[1].device_type == "mobile"
    assert response.scans[1].time.ToDatetime(UTC) == later.time.ToDatetime(UTC)


async def test_a_batch_span_links_to_the_traces_its_events_carry(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str, spans: Any
) -> None:
    traced = event(f"org-{secrets.token_hex(4)}")
    trace_id = secrets.token_hex(16)
    traced.traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    unsampled = event(traced.organization.split("/")[1])
    unsampled.traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
    await append(client, private_stream, [traced, unsampled])
    consumer = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="traced")
    await consumer.ensure_group()
    assert len((await consumer.step()).stored) == 2
    batch = [span for span in spans.get_finished_spans() if span.name == f"process {private_stream}"]
    assert len(batch) == 1
    assert [format(link.context.trace_id, "032x") for link in batch[0].links] == [trace_id]
    assert batch[0].attributes["qrmesh.scans.stored"] == 2


# -- review fixes: retention, poison, live chunks, late uniques, locks, stream trim ---------------------------------


async def test_an_event_older_than_its_organization_s_retention_is_skipped(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    # The upkeep deletes raw rows of an organization with a shorter retention; a replay of such a deleted
    # event would find no conflict and count again, so it is not accepted at all.
    short = f"org-{secrets.token_hex(4)}"
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await retention.set_organization_retention(connection, short, 30)
    try:
        consumer = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="retentions")
        await consumer.ensure_group()
        await append(
            client,
            private_stream,
            [event(short, when=now - timedelta(days=40)), event(short, when=now - timedelta(days=20))],
        )
        result = await consumer.step()
        assert (result.expired, len(result.stored), result.dead) == (1, 1, [])
        assert consumer.expired == 1
        await drained(client, private_stream)
        assert await totals(engine, short) == (1, 0)  # 20 days late: no unique (the visitors are forgotten)
    finally:
        async with engine.begin() as connection:
            await retention.set_organization_retention(connection, short, None)


class BrokenCities(CityDatabase):
    """A city database whose file turned out corrupt: every look-up fails."""

    def __init__(self) -> None:
        self.lookup = self._fail  # type: ignore[assignment]

    def _fail(self, address: str) -> tuple[str, str, str]:
        raise maxminddb.InvalidDatabaseError(f"corrupt search tree at {address}")

    def close(self) -> None:
        pass


async def test_poison_events_are_dead_lettered_not_retried_forever(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    far = event(organization)
    far.time.seconds = 10**12  # past year 9999: no datetime holds it
    negative_nanos = event(organization)
    negative_nanos.time.nanos = -5
    good = event(organization)
    ids = await append(client, private_stream, [far, negative_nanos, good])
    consumer = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="poison-times")
    await consumer.ensure_group()
    result = await consumer.step()
    assert len(result.stored) == 1
    reasons = {letter.entry_id: letter.reason for letter in result.dead}
    assert set(reasons) == set(ids[:2])
    assert "not a valid timestamp" in reasons[ids[0]]
    await drained(client, private_stream)

    # Whatever else fails for one entry while it is prepared (here a corrupt city database) sets that entry
    # aside with the error, payload kept, instead of failing the batch again and again.
    other = f"{private_stream}-cities"
    try:
        broken = Consumer(engine, client, consumer_config(other), Enricher(BrokenCities()), name="broken-cities")
        await broken.ensure_group()
        [entry] = await append(client, other, [event(organization)])
        result = await broken.step()
        assert [letter.entry_id for letter in result.dead] == [entry]
        assert "InvalidDatabaseError" in result.dead[0].reason
        await drained(client, other)
        payload = await scalar(
            engine,
            "SELECT payload FROM analytics.dead_letters WHERE stream = :stream AND stream_id = :id",
            stream=other,
            id=entry,
        )
        assert len(bytes(payload)) > 0
    finally:
        await client.delete(other, f"{other}:dead")
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM analytics.dead_letters WHERE stream IN (:a, :b)"), {"a": private_stream, "b": other}
            )


async def test_the_live_feed_sends_a_big_batch_in_chunks(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    consumer = Consumer(
        engine, client, dataclasses.replace(consumer_config(private_stream), batch=1000), Enricher(), name="chunks"
    )
    await consumer.ensure_group()
    pubsub: Any = client.pubsub()
    await pubsub.subscribe(LIVE_CHANNEL.format(organization))
    try:
        # Unwatched at first: the next batch after the watcher appears is published (no negative look-up kept).
        assert await consumer.watched({organization}) == set()
        await client.set(WATCHING_KEY.format(organization), "1", ex=30)
        assert await consumer.watched({organization}) == {organization}
        events = [event(organization, visitor=f"v{i}") for i in range(LIVE_CHUNK * 2 + 50)]
        await append(client, private_stream, events)
        assert len((await consumer.step()).stored) == len(events)
        sizes: list[int] = []
        for _ in range(100):  # None also stands for the (ignored) subscription confirmation
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            if message is not None:
                sizes.append(len(analytics_service_pb2.WatchScansResponse.FromString(message["data"]).scans))
            if sum(sizes) >= len(events):
                break
        assert sizes == [LIVE_CHUNK, LIVE_CHUNK, 50]
    finally:
        await pubsub.aclose()
        await client.delete(WATCHING_KEY.format(organization))


async def test_an_event_later_than_the_visitor_window_carries_no_unique(
    analytics_server: Server, engine: AsyncEngine, client: redis.Redis, private_stream: str
) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    late = datetime.now(UTC) - timedelta(days=retention.KEEP_VISITOR_DAYS + 2)
    consumer = Consumer(engine, client, consumer_config(private_stream), Enricher(), name="late")
    await consumer.ensure_group()
    await append(client, private_stream, [event(organization, when=late), event(organization, visitor="today")])
    assert len((await consumer.step()).stored) == 2
    # The late day's visitors may already be forgotten: a unique now could be its second.
    assert await totals(engine, organization) == (2, 1)


async def test_partition_ddl_waits_briefly_for_locks_and_gives_up(
    analytics_server: Server, engine: AsyncEngine
) -> None:
    month = partitions.Month(2099, 1)
    async with engine.begin() as connection:
        await connection.execute(text(partitions.drop_statement(month)))
    async with engine.connect() as reader:
        await reader.execute(text("BEGIN"))
        await reader.execute(text("LOCK TABLE analytics.scans IN ACCESS SHARE MODE"))  # a long export's read
        try:
            with pytest.raises(DBAPIError, match="lock"):
                async with engine.begin() as connection:
                    # Bounded so a regression fails instead of hanging the run.
                    await asyncio.wait_for(partitions.ensure(connection, [month], attempts=2, pause=0.05), 60)
        finally:
            await reader.execute(text("ROLLBACK"))
    try:
        async with engine.begin() as connection:
            assert await partitions.ensure(connection, [month], attempts=2, pause=0.05) == [month]
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(partitions.drop_statement(month)))


async def test_retention_deletes_in_batches(analytics_server: Server, engine: AsyncEngine) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        for _ in range(5):
            await connection.execute(
                text(
                    "INSERT INTO analytics.scans (event_id, time, organization_id, qr_code_id, short_code, outcome, "
                    "destination_url, matched_rule, country, region, city, device_type, device_brand, os, browser, "
                    "language, referrer, bot, visitor_id, ip_address, user_agent) VALUES (:id, :time, :org, 'c', "
                    "'s', 1, '', '', '', '', '', '', '', '', '', '', '', false, '', '', '')"
                ),
                {"id": uuid.uuid4(), "time": now - timedelta(days=2), "org": organization},
            )
    deletion = retention_rules.Deletion(now - timedelta(days=1), (organization,), exclude=False)
    async with engine.connect() as connection:
        assert await retention._delete(connection, deletion, batch=2) == 5
    assert (
        await scalar(engine, "SELECT count(*) FROM analytics.scans WHERE organization_id = :org", org=organization) == 0
    )


async def test_upkeep_start_does_not_wait_for_its_first_round(analytics_server: Server, engine: AsyncEngine) -> None:
    upkeep = retention.Upkeep(engine, 365)
    async with engine.connect() as blocker:
        await blocker.execute(text("BEGIN"))
        await blocker.execute(text("LOCK TABLE analytics.organization_retention IN ACCESS EXCLUSIVE MODE"))
        try:
            # The round is stuck behind the lock; start returns anyway (bounded so a regression fails, not hangs).
            await asyncio.wait_for(upkeep.start(), 30)
        finally:
            await blocker.execute(text("ROLLBACK"))
            await upkeep.close()


async def test_the_stream_is_trimmed_below_what_every_group_acknowledged(
    client: redis.Redis, private_stream: str
) -> None:
    ids: list[str] = [(await client.xadd(private_stream, {"n": str(n)})).decode() for n in range(6)]  # type: ignore[union-attr]
    assert await retention.trim_stream(client, private_stream) is None  # no groups: nothing known done
    await client.xgroup_create(private_stream, "fast", id="0")
    await client.xgroup_create(private_stream, "slow", id="0")
    await client.xreadgroup("fast", "f", {private_stream: ">"})  # all 6 delivered ...
    await client.xack(private_stream, "fast", *ids[:5])  # ... the last still pending
    await client.xreadgroup("slow", "s", {private_stream: ">"}, count=3)  # 3 delivered
    await client.xack(private_stream, "slow", *ids[:3])  # and acknowledged: the floor is its last delivered
    assert await retention.trim_stream(client, private_stream) == ids[2]

    # Exact trimming to check the floor (MINID ~ only trims whole macro nodes, none in so short a stream).
    await client.xtrim(private_stream, minid=ids[2], approximate=False)
    left: Any = await client.xrange(private_stream)
    assert [entry_id.decode() for entry_id, _ in left] == ids[2:]
    await client.xreadgroup("slow", "s", {private_stream: ">"})
    await client.xack(private_stream, "slow", *ids[3:])
    assert await retention.trim_stream(client, private_stream) == ids[5]  # fast's pending entry
