"""Analytics queries over real gRPC, PostgreSQL and the qr service, on scans stored through the
ingestion code at chosen instants: time zones and DST (days of 23 and 25 hours, a :30 zone), range
edges off the hour (read from the raw scans), unique visitors, bots, breakdowns, peak times,
comparisons, scopes (codes, folders, tags) and their checks."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.platform.database import create_engine
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from tests.integration.analytics_helpers import WINDOWS, event, store
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, dynamic, reason, violations

svc = analytics_service_pb2
D = analytics_pb2.Dimension
STOCKHOLM = ZoneInfo("Europe/Stockholm")
KOLKATA = ZoneInfo("Asia/Kolkata")


@pytest.fixture(scope="module")
async def engine(analytics_server: Server, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, schema="analytics")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def analytics(analytics_server: Server) -> AsyncIterator[analytics_service_pb2_grpc.AnalyticsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_server.port}") as channel:
        yield analytics_service_pb2_grpc.AnalyticsServiceStub(channel)


@pytest.fixture
async def account(identity_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        return await sign_up(channel, "analyst")


def org_id(account: Account) -> str:
    return account.organization.removeprefix("organizations/")


def stamp(moment: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(moment.astimezone(UTC))
    return out


def local(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    """An instant given as a local wall time."""
    return datetime(*parts, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[arg-type,misc]


def last_change(zone: ZoneInfo, hours: int, before: date) -> date:
    """The most recent local date before `before` with `hours` hours (23: clocks forward, 25: back)."""
    day = before
    while True:
        day -= timedelta(days=1)
        following = day + timedelta(days=1)
        length = local(zone, following.year, following.month, following.day) - local(zone, day.year, day.month, day.day)
        if length == timedelta(hours=hours):
            return day


def series(answer: svc.ScanTimeSeries, zone: ZoneInfo) -> list[tuple[str, int, int]]:
    return [
        (b.start_time.ToDatetime(UTC).astimezone(zone).isoformat(), b.scans, b.unique_visitors) for b in answer.buckets
    ]


def scans_by_bucket(answer: svc.ScanTimeSeries, zone: ZoneInfo) -> list[tuple[str, int]]:
    """(local start, scans) of each bucket. Scans stored months after the fact carry no unique visitor
    (ingestion no longer knows who came that day), so the DST tests look at scans."""
    return [(start, scans) for start, scans, _ in series(answer, zone)]


async def call(method: Any, request: Any, account: Account) -> Any:
    return await method(request, metadata=account.metadata())


# ---------------------------------------------------------------- time zones and DST


async def test_day_of_23_hours_in_stockholm(
    analytics: Any, account: Account, engine: AsyncEngine, client: redis.Redis
) -> None:
    org = org_id(account)
    day = last_change(STOCKHOLM, 23, datetime.now(UTC).date() - timedelta(days=2))
    y, m, d = day.year, day.month, day.day
    before, after = day - timedelta(days=1), day + timedelta(days=1)
    moments = [
        local(STOCKHOLM, before.year, before.month, before.day, 23, 59, 59),  # the day before
        local(STOCKHOLM, y, m, d, 0, 30),  # 23:30 UTC the day before
        local(STOCKHOLM, y, m, d, 3, 0),  # the first hour after the gap
        local(STOCKHOLM, y, m, d, 23, 59, 59),
        local(STOCKHOLM, after.year, after.month, after.day, 0, 0),
    ]
    await store(engine, client, [event(org, "c1", moment) for moment in moments])
    request = svc.GetScanTimeSeriesRequest(
        parent=account.organization,
        start_time=stamp(local(STOCKHOLM, before.year, before.month, before.day)),
        end_time=stamp(local(STOCKHOLM, after.year, after.month, after.day) + timedelta(days=1)),
        time_zone="Europe/Stockholm",
        granularity=analytics_pb2.DAY,
    )
    answer = await call(analytics.GetScanTimeSeries, request, account)
    starts = [b.start_time.ToDatetime(UTC) for b in answer.buckets]
    assert [later - earlier for earlier, later in itertools.pairwise(starts)] == [
        timedelta(hours=24),
        timedelta(hours=23),
    ]
    assert scans_by_bucket(answer, STOCKHOLM) == [
        (f"{before.isoformat()}T00:00:00+01:00", 1),
        (f"{day.isoformat()}T00:00:00+01:00", 3),
        (f"{after.isoformat()}T00:00:00+02:00", 1),
    ]
    assert answer.time_zone == "Europe/Stockholm"
    # Hours: 02:00 does not exist that night; the bucket of 01:00 lasts one hour.
    hours = await call(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(
            parent=account.organization,
            start_time=stamp(local(STOCKHOLM, y, m, d)),
            end_time=stamp(local(STOCKHOLM, y, m, d, 5)),
            time_zone="Europe/Stockholm",
            granularity=analytics_pb2.HOUR,
        ),
        account,
    )
    assert [(start[11:], scans) for start, scans in scans_by_bucket(hours, STOCKHOLM)] == [
        ("00:00:00+01:00", 1),
        ("01:00:00+01:00", 0),
        ("03:00:00+02:00", 1),
        ("04:00:00+02:00", 0),
    ]


async def test_day_of_25_hours_and_the_repeated_hour(
    analytics: Any, account: Account, engine: AsyncEngine, client: redis.Redis
) -> None:
    org = org_id(account)
    day = last_change(STOCKHOLM, 25, datetime.now(UTC).date() - timedelta(days=2))
    y, m, d = day.year, day.month, day.day
    first_two_thirty = local(STOCKHOLM, y, m, d, 2, 30, fold=0)  # summer time, 00:30 UTC
    second_two_thirty = local(STOCKHOLM, y, m, d, 2, 30, fold=1)  # winter time, 01:30 UTC
    assert second_two_thirty - first_two_thirty == timedelta(hours=1)
    await store(
        engine,
        client,
        [
            event(org, "c1", first_two_thirty, visitor="same"),
            event(org, "c1", second_two_thirty, visitor="same"),
            event(org, "c1", local(STOCKHOLM, y, m, d, 23, 30)),
        ],
    )
    days = await call(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(
            parent=account.organization,
            start_time=stamp(local(STOCKHOLM, y, m, d)),
            end_time=stamp(local(STOCKHOLM, y, m, d) + timedelta(hours=25)),
            time_zone="Europe/Stockholm",
        ),
        account,
    )
    # One bucket of 25 hours: the range ends exactly where the next day begins.
    assert scans_by_bucket(days, STOCKHOLM) == [(f"{day.isoformat()}T00:00:00+02:00", 3)]
    hours = await call(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(
            parent=account.organization,
            start_time=stamp(local(STOCKHOLM, y, m, d, 1)),
            end_time=stamp(local(STOCKHOLM, y, m, d, 4)),
            time_zone="Europe/Stockholm",
            granularity=analytics_pb2.HOUR,
        ),
        account,
    )
    # 02:00 happens twice: two buckets, each with its own scan.
    assert [(start[11:], scans) for start, scans in scans_by_bucket(hours, STOCKHOLM)] == [
        ("01:00:00+02:00", 0),
        ("02:00:00+02:00", 1),
        ("02:00:00+01:00", 1),
        ("03:00:00+01:00", 0),
    ]


async def test_a_half_hour_zone_splits_utc_hours_exactly(
    analytics: Any, account: Account, engine: AsyncEngine, client: redis.Redis
) -> None:
    org = org_id(account)
    today = datetime.now(UTC).date() - timedelta(days=1)  # recent: ingestion still knows the day's visitors
    y, m, d = today.year, today.month, today.day
    midnight = local(KOLKATA, y, m, d)  # 18:30 UTC the day before
    assert midnight.minute == 30
    await store(
        engine,
        client,
        [
            event(org, "c1", midnight - timedelta(minutes=40), visitor="early"),  # same UTC hour, day before
            event(org, "c1", midnight - timedelta(microseconds=1)),
            event(org, "c1", midnight, visitor="early"),  # seen earlier this UTC day: not unique again
            event(org, "c1", midnight + timedelta(minutes=29)),
            event(org, "c1", midnight + timedelta(hours=5)),
            event(org, "c1", midnight + timedelta(days=1) - timedelta(minutes=1), bot=True),
        ],
    )
    request = svc.GetScanTimeSeriesRequest(
        parent=account.organization,
        start_time=stamp(midnight - timedelta(days=1)),
        end_time=stamp(midnight + timedelta(days=1)),
        time_zone="Asia/Kolkata",
    )
    answer = await call(analytics.GetScanTimeSeries, request, account)
    before = (today - timedelta(days=1)).isoformat()
    assert series(answer, KOLKATA) == [(f"{before}T00:00:00+05:30", 2, 2), (f"{today}T00:00:00+05:30", 3, 2)]
    request.include_bots = True
    with_bots = await call(analytics.GetScanTimeSeries, request, account)
    assert [b.scans for b in with_bots.buckets] == [2, 4]
    peak = await call(
        analytics.GetPeakTimes,
        svc.GetPeakTimesRequest(
            parent=account.organization,
            start_time=request.start_time,
            end_time=request.end_time,
            time_zone="Asia/Kolkata",
        ),
        account,
    )
    cells = {(c.day_of_week, c.hour): c.scans for c in peak.cells if c.scans}
    weekday = today.isoweekday()
    previous = (today - timedelta(days=1)).isoweekday()
    assert cells == {(previous, 23): 2, (weekday, 0): 2, (weekday, 5): 1}


async def test_range_edges_off_the_hour_and_unique_visitors(
    analytics: Any, account: Account, engine: AsyncEngine, client: redis.Redis
) -> None:
    org = org_id(account)
    base = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    at = base.replace
    await store(
        engine,
        client,
        [
            event(org, "c1", at(hour=8), visitor="w"),  # before the range, same UTC day
            event(org, "c1", at(hour=9, minute=14), visitor="x"),  # just before the range
            event(org, "c1", at(hour=9, minute=15), visitor="w"),  # in: not unique (seen at 08:00)
            event(org, "c1", at(hour=9, minute=20), visitor="u"),  # in: unique
            event(org, "c1", at(hour=9, minute=21), visitor="u"),  # in: repeat
            event(org, "c2", at(hour=12), visitor="u"),  # in, another code: unique for that code
            event(org, "c1", at(hour=17, minute=44), visitor="v", bot=True),  # in: a bot
            event(org, "c1", at(hour=17, minute=44, second=59), visitor="v"),  # in, not unique (the bot was first)
            event(org, "c1", at(hour=17, minute=45), visitor="y"),  # just after the range
        ],
    )
    start, end = at(hour=9, minute=15), at(hour=17, minute=45)
    summary = await call(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(parent=account.organization, start_time=stamp(start), end_time=stamp(end)),
        account,
    )
    # Organization-wide a visitor is unique once per UTC day (u); per code, once per code (c1: u, c2: u).
    assert (summary.scans, summary.unique_visitors, summary.bot_scans) == (5, 1, 1)
    assert summary.first_scan_time.ToDatetime(UTC) == at(hour=9, minute=15)
    assert summary.last_scan_time.ToDatetime(UTC) == at(hour=17, minute=44, second=59)
    both = [f"{account.organization}/qrCodes/c1", f"{account.organization}/qrCodes/c2"]
    codes = await call(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(
            parent=account.organization, qr_codes=both, start_time=stamp(start), end_time=stamp(end)
        ),
        account,
    )
    assert (codes.scans, codes.unique_visitors, codes.bot_scans) == (5, 2, 1)
    with_bots = await call(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(
            parent=account.organization, start_time=stamp(start), end_time=stamp(end), include_bots=True
        ),
        account,
    )
    assert (with_bots.scans, with_bots.unique_visitors, with_bots.bot_scans) == (6, 2, 1)
    assert with_bots.last_scan_time.ToDatetime(UTC) == at(hour=17, minute=44, second=59)
    # The same range as one time-series bucket and as hours agrees with the summary.
    hours = await call(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(
            parent=account.organization, start_time=stamp(start), end_time=stamp(end), granularity=analytics_pb2.HOUR
        ),
        account,
    )
    assert sum(b.scans for b in hours.buckets) == 5
    assert hours.buckets[0].start_time.ToDatetime(UTC) == at(hour=9)
    assert [(b.scans, b.unique_visitors) for b in hours.buckets if b.scans] == [(3, 1), (1, 0), (1, 0)]
    # Most of a UTC day (22 hours) is read as the day minus its first two hours.
    most = await call(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(
            parent=account.organization, start_time=stamp(at(hour=2)), end_time=stamp(base + timedelta(days=1))
        ),
        account,
    )
    assert (most.scans, most.unique_visitors, most.bot_scans) == (8, 4, 1)
    countries = await call(
        analytics.GetScanBreakdown,
        svc.GetScanBreakdownRequest(
            parent=account.organization,
            dimension=D.COUNTRY,
            start_time=stamp(at(hour=2)),
            end_time=stamp(base + timedelta(days=1)),
        ),
        account,
    )
    assert [(e.value, e.scans, e.unique_visitors) for e in countries.entries] == [("SE", 8, 4)]
    empty = await call(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(
            parent=account.organization, start_time=stamp(at(hour=20)), end_time=stamp(at(hour=21))
        ),
        account,
    )
    assert (empty.scans, empty.HasField("first_scan_time"), empty.HasField("last_scan_time")) == (0, False, False)


# ---------------------------------------------------------------- breakdowns, peak times, comparisons, scopes


async def test_breakdown_peak_and_compare_over_codes_folders_and_tags(
    analytics: Any, account: Account, engine: AsyncEngine, client: redis.Redis, qr_channel: grpc.aio.Channel
) -> None:
    qr = Clients.on(qr_channel)
    spring = await qr.create(account, dynamic(display_name="Spring poster", folder="campaigns/2026", tags=["Spring"]))
    autumn = await qr.create(account, dynamic(display_name="Autumn flyer", folder="campaigns", tags=["autumn"]))
    other = await qr.create(account, dynamic(display_name="Menu"))
    org = org_id(account)
    ids = {code.name: code.name.rsplit("/", 1)[1] for code in (spring, autumn, other)}
    day = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    scans = [
        *(event(org, ids[spring.name], day.replace(hour=10), country="SE") for _ in range(4)),
        *(event(org, ids[spring.name], day.replace(hour=11), country="DE") for _ in range(2)),
        event(org, ids[autumn.name], day.replace(hour=10, minute=30), country="US", agent=WINDOWS),
        event(org, ids[autumn.name], day.replace(hour=23), country="", agent=WINDOWS),
        event(org, ids[other.name], day.replace(hour=10), country="FR"),
        event(org, ids[other.name], day.replace(hour=10), country="SE", bot=True),
    ]
    await store(engine, client, scans)
    window: dict[str, Any] = {"start_time": stamp(day), "end_time": stamp(day + timedelta(days=1))}

    async def breakdown(dimension: Any, limit: int = 0, **scope: Any) -> svc.ScanBreakdown:
        request = svc.GetScanBreakdownRequest(
            parent=account.organization, dimension=dimension, limit=limit, **window, **scope
        )
        answer: svc.ScanBreakdown = await call(analytics.GetScanBreakdown, request, account)
        return answer

    countries = await breakdown(D.COUNTRY)
    assert [(e.value, e.scans, e.unique_visitors) for e in countries.entries] == [
        ("SE", 4, 4),
        ("DE", 2, 2),
        ("", 1, 1),
        ("FR", 1, 1),
        ("US", 1, 1),
    ]
    assert (countries.other_scans, countries.total_scans) == (0, 9)
    assert [round(e.share, 4) for e in countries.entries] == [0.4444, 0.2222, 0.1111, 0.1111, 0.1111]
    top_two = await breakdown(D.COUNTRY, limit=2)
    assert [(e.value, e.scans) for e in top_two.entries] == [("SE", 4), ("DE", 2)]
    assert (top_two.other_scans, top_two.total_scans) == (3, 9)
    devices = await breakdown(D.DEVICE_TYPE)
    assert [(e.value, e.scans) for e in devices.entries] == [("mobile", 7), ("desktop", 2)]
    by_code = await breakdown(D.QR_CODE)
    assert [(e.value, e.scans) for e in by_code.entries] == [(spring.name, 6), (autumn.name, 2), (other.name, 1)]
    # A folder holds its subfolders; a tag is matched without case; named codes; each reads per-code rows.
    in_folder = await breakdown(D.QR_CODE, folder="campaigns")
    assert [(e.value, e.scans) for e in in_folder.entries] == [(spring.name, 6), (autumn.name, 2)]
    tagged = await breakdown(D.COUNTRY, tag="SPRING")
    assert [(e.value, e.scans) for e in tagged.entries] == [("SE", 4), ("DE", 2)]
    named = await breakdown(D.DEVICE_TYPE, qr_codes=[autumn.name, other.name])
    assert [(e.value, e.scans) for e in named.entries] == [("desktop", 2), ("mobile", 1)]
    nothing = await breakdown(D.COUNTRY, folder="no/such/folder")
    assert (list(nothing.entries), nothing.total_scans) == ([], 0)

    peak = await call(
        analytics.GetPeakTimes,
        svc.GetPeakTimesRequest(parent=account.organization, time_zone="Europe/Stockholm", **window),
        account,
    )
    assert len(peak.cells) == 168
    assert (peak.cells[0].day_of_week, peak.cells[0].hour, peak.cells[-1].day_of_week, peak.cells[-1].hour) == (
        1,
        0,
        7,
        23,
    )
    offset = int(day.astimezone(STOCKHOLM).utcoffset().total_seconds() // 3600)  # type: ignore[union-attr]
    weekday = day.isoweekday()
    expected = {(weekday, 10 + offset): 6, (weekday, 11 + offset): 2, (weekday % 7 + 1, 23 + offset - 24): 1}
    assert {(c.day_of_week, c.hour): c.scans for c in peak.cells if c.scans} == expected

    comparison = await call(
        analytics.CompareScans,
        svc.CompareScansRequest(
            parent=account.organization,
            qr_codes=[other.name, spring.name],
            tags=["autumn", "Spring"],
            granularity=analytics_pb2.HOUR,
            start_time=stamp(day.replace(hour=10)),
            end_time=stamp(day.replace(hour=12)),
        ),
        account,
    )
    assert [t.ToDatetime(UTC) for t in comparison.bucket_start_times] == [day.replace(hour=10), day.replace(hour=11)]
    assert [(s.key, s.display_name, s.total_scans, list(s.scans)) for s in comparison.series] == [
        (other.name, "Menu", 1, [1, 0]),
        (spring.name, "Spring poster", 6, [4, 2]),
        ("tags/autumn", "autumn", 1, [1, 0]),
        ("tags/Spring", "Spring", 6, [4, 2]),
    ]


async def test_bad_requests_are_refused_with_reasons(analytics: Any, account: Account, identity_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        stranger = await sign_up(channel, "stranger")
    now = datetime.now(UTC)

    async def refused(method: Any, request: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(method, request, account)
        return caught.value

    # Another organization's code under one's own parent: refused before anything is read.
    error = await refused(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(parent=account.organization, qr_codes=[f"{stranger.organization}/qrCodes/abc"]),
    )
    assert (error.code(), reason(error), violations(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "QR_CODE_NOT_IN_PARENT",
        ["qrCodes[0]"],
    )
    error = await _watch_refused(analytics, account, f"{stranger.organization}/qrCodes/abc")
    assert reason(error) == "QR_CODE_NOT_IN_PARENT"
    error = await refused(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(parent=account.organization, time_zone="Mars/Olympus_Mons"),
    )
    assert (error.code(), reason(error), violations(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIME_ZONE",
        ["timeZone"],
    )
    assert "Mars/Olympus_Mons" in (error.details() or "")
    error = await refused(
        analytics.GetScanSummary,
        svc.GetScanSummaryRequest(parent=account.organization, start_time=stamp(now), end_time=stamp(now)),
    )
    assert (reason(error), violations(error)) == ("INVALID_TIME_RANGE", ["endTime"])
    error = await refused(
        analytics.GetScanTimeSeries,
        svc.GetScanTimeSeriesRequest(
            parent=account.organization,
            start_time=stamp(now - timedelta(days=420)),
            end_time=stamp(now),
            granularity=analytics_pb2.HOUR,
        ),
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_BUCKETS")
    error = await refused(analytics.CompareScans, svc.CompareScansRequest(parent=account.organization))
    assert reason(error) == "NOTHING_TO_COMPARE"
    error = await refused(analytics.GetScanBreakdown, svc.GetScanBreakdownRequest(parent=account.organization))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The default range is the last 30 days, and a fresh organization has no scans in it.
    days = await call(analytics.GetScanTimeSeries, svc.GetScanTimeSeriesRequest(parent=account.organization), account)
    assert len(days.buckets) == 31
    assert all(b.scans == 0 for b in days.buckets)
    assert days.buckets[0].start_time.ToDatetime(UTC) == datetime.combine(
        (now - timedelta(days=30)).date(), datetime.min.time(), UTC
    )


async def _watch_refused(analytics: Any, account: Account, code: str) -> grpc.aio.AioRpcError:
    call_ = analytics.WatchScans(
        svc.WatchScansRequest(parent=account.organization, qr_code=code), metadata=account.metadata()
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call_:
            pass
    return caught.value
