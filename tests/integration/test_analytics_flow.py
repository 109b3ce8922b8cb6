"""Scans through the real redirect, ingested by the real analytics service, then every query over gRPC
with exact numbers; the live feed (WatchScans) over gRPC; exports as CSV and XLSX."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import re
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics import server as analytics_server_module
from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.platform.database import create_engine
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2
from tests.integration.analytics_helpers import event, store
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, dynamic

svc = analytics_service_pb2
D = analytics_pb2.Dimension
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
SAMSUNG = (
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1"
)
PREVIEW = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"


@pytest.fixture(scope="module")
async def analytics(analytics_server: Server) -> AsyncIterator[analytics_service_pb2_grpc.AnalyticsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_server.port}") as channel:
        yield analytics_service_pb2_grpc.AnalyticsServiceStub(channel)


@pytest.fixture(scope="module")
async def owner(identity_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        return await sign_up(channel, "scanned")


@pytest.fixture(scope="module")
async def http(analytics_redirect: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{analytics_redirect.resources.ports['http']}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def scan(http: httpx.AsyncClient, short_code: str, agent: str, address: str, language: str) -> None:
    """One scan as a phone behind the edge would make it (the edge names the client's address)."""
    answer = await http.get(
        f"/r/{short_code}",
        headers={"user-agent": agent, "x-qrmesh-client-ip": address, "accept-language": language},
    )
    assert answer.status_code in (301, 302, 307, 308), answer.text


def stamp(moment: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(moment)
    return out


async def recorded(client: redis.Redis, stream: str, organization: str, count: int) -> list[scan_event_pb2.ScanEvent]:
    """The organization's events in the private stream, once there are `count` of them."""
    for _ in range(200):
        entries: Any = await client.xrange(stream)
        found = [
            e
            for _, fields in entries
            if (e := scan_event_pb2.ScanEvent.FromString(fields[b"event"])).organization == organization
        ]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {count} scans reached the stream")


async def ingested(analytics: Any, owner: Account, scans: int, bots: int) -> svc.ScanSummary:
    """The summary once ingestion has caught up with `scans` scans and `bots` bot scans."""
    request = svc.GetScanSummaryRequest(parent=owner.organization)
    for _ in range(300):
        summary: svc.ScanSummary = await analytics.GetScanSummary(request, metadata=owner.metadata())
        if (summary.scans, summary.bot_scans) == (scans, bots):
            return summary
        await asyncio.sleep(0.05)
    raise AssertionError(f"ingestion did not catch up: {summary}")


async def test_scripted_scans_give_exact_numbers_in_every_query(
    analytics: Any,
    owner: Account,
    http: httpx.AsyncClient,
    qr_channel: grpc.aio.Channel,
    client: redis.Redis,
    analytics_stream: str,
) -> None:
    qr = Clients.on(qr_channel)
    poster = await qr.create(owner, dynamic("https://example.com/poster", display_name="Poster", tags=["print"]))
    flyer = await qr.create(owner, dynamic("https://example.com/flyer", display_name="Flyer"))
    await scan(http, poster.short_code, IPHONE, "81.224.1.1", "sv-SE,sv;q=0.9")  # SE, visitor 1
    await scan(http, poster.short_code, IPHONE, "81.224.1.1", "sv-SE,sv;q=0.9")  # visitor 1 again
    await scan(http, poster.short_code, SAMSUNG, "84.128.0.5", "de-DE,de;q=0.9")  # DE, visitor 2
    await scan(http, poster.short_code, WINDOWS, "8.8.8.8", "en-US,en;q=0.9")  # US, visitor 3
    await scan(http, flyer.short_code, IPAD, "81.2.69.142", "en-GB,en;q=0.9")  # GB, visitor 4
    await scan(http, poster.short_code, PREVIEW, "8.8.8.8", "")  # a link preview
    await scan(http, flyer.short_code, WINDOWS, "8.8.8.8", "en-US,en;q=0.9")  # visitor 3 on the other code
    events = await recorded(client, analytics_stream, owner.organization, 7)
    times = sorted(e.time.ToDatetime(UTC) for e in events if not e.bot)

    summary = await ingested(analytics, owner, scans=6, bots=1)
    # Organization-wide, a visitor counts once a day: visitor 3 scanned both codes.
    assert summary.unique_visitors == 4
    assert summary.first_scan_time.ToDatetime(UTC) == times[0]
    assert summary.last_scan_time.ToDatetime(UTC) == times[-1]
    both = svc.GetScanSummaryRequest(parent=owner.organization, qr_codes=[poster.name, flyer.name])
    per_code = await analytics.GetScanSummary(both, metadata=owner.metadata())
    # Per code, once per code: poster 1, 2, 3; flyer 4, 3.
    assert (per_code.scans, per_code.unique_visitors, per_code.bot_scans) == (6, 5, 1)
    tagged = await analytics.GetScanSummary(
        svc.GetScanSummaryRequest(parent=owner.organization, tag="PRINT", include_bots=True), metadata=owner.metadata()
    )
    assert (tagged.scans, tagged.unique_visitors, tagged.bot_scans) == (5, 4, 1)

    window: dict[str, Any] = {
        "start_time": stamp(times[0] - timedelta(hours=2)),
        "end_time": stamp(times[-1] + timedelta(hours=2)),
    }
    hours = await analytics.GetScanTimeSeries(
        svc.GetScanTimeSeriesRequest(parent=owner.organization, granularity=analytics_pb2.HOUR, **window),
        metadata=owner.metadata(),
    )
    by_hour = Counter(moment.replace(minute=0, second=0, microsecond=0) for moment in times)
    assert {b.start_time.ToDatetime(UTC): b.scans for b in hours.buckets if b.scans} == dict(by_hour)
    assert len(hours.buckets) == len({b.start_time.ToDatetime(UTC) for b in hours.buckets}) >= 4
    assert sum(b.unique_visitors for b in hours.buckets) == 4

    async def breakdown(dimension: Any, **fields: Any) -> list[tuple[str, int, int]]:
        request = svc.GetScanBreakdownRequest(parent=owner.organization, dimension=dimension, **window, **fields)
        answer = await analytics.GetScanBreakdown(request, metadata=owner.metadata())
        assert answer.total_scans == sum(e.scans for e in answer.entries) + answer.other_scans
        return [(e.value, e.scans, e.unique_visitors) for e in answer.entries]

    assert await breakdown(D.COUNTRY) == [("SE", 2, 1), ("US", 2, 1), ("DE", 1, 1), ("GB", 1, 1)]
    assert await breakdown(D.DEVICE_TYPE) == [("mobile", 3, 2), ("desktop", 2, 1), ("tablet", 1, 1)]
    # The preview's agent makes it a visitor of its own (the visitor hash covers address and agent).
    assert await breakdown(D.DEVICE_TYPE, include_bots=True) == [
        ("mobile", 3, 2),
        ("desktop", 2, 1),
        ("bot", 1, 1),
        ("tablet", 1, 1),
    ]
    assert await breakdown(D.OS) == [("iOS", 3, 2), ("Windows", 2, 1), ("Android", 1, 1)]
    assert await breakdown(D.BROWSER) == [("Mobile Safari", 3, 2), ("Chrome", 2, 1), ("Samsung Internet", 1, 1)]
    assert await breakdown(D.DEVICE_BRAND) == [("Apple", 3, 2), ("", 2, 1), ("Samsung", 1, 1)]
    assert await breakdown(D.LANGUAGE) == [("en", 3, 2), ("sv", 2, 1), ("de", 1, 1)]
    assert await breakdown(D.REFERRER) == [("", 6, 4)]
    assert await breakdown(D.MATCHED_RULE) == [("", 6, 4)]
    assert await breakdown(D.DESTINATION) == [
        ("https://example.com/poster", 4, 3),
        ("https://example.com/flyer", 2, 1),
    ]
    # By code, each code's own unique visitors (visitor 3 is new to the flyer), organization-wide or not.
    assert await breakdown(D.QR_CODE) == [(poster.name, 4, 3), (flyer.name, 2, 2)]
    assert await breakdown(D.QR_CODE, qr_codes=[poster.name, flyer.name]) == [(poster.name, 4, 3), (flyer.name, 2, 2)]
    top = await analytics.GetScanBreakdown(
        svc.GetScanBreakdownRequest(parent=owner.organization, dimension=D.COUNTRY, limit=1, **window),
        metadata=owner.metadata(),
    )
    assert ([(e.value, e.scans, round(e.share, 4)) for e in top.entries], top.other_scans) == ([("SE", 2, 0.3333)], 4)

    peak = await analytics.GetPeakTimes(
        svc.GetPeakTimesRequest(parent=owner.organization, time_zone="America/New_York", **window),
        metadata=owner.metadata(),
    )
    cells: Counter[tuple[int, int]] = Counter()
    for moment in times:
        local = moment.astimezone(ZoneInfo("America/New_York"))
        cells[(local.isoweekday(), local.hour)] += 1
    assert {(c.day_of_week, c.hour): c.scans for c in peak.cells if c.scans} == dict(cells)
    assert peak.time_zone == "America/New_York"

    compared = await analytics.CompareScans(
        svc.CompareScansRequest(
            parent=owner.organization, qr_codes=[flyer.name], tags=["print"], granularity=analytics_pb2.DAY, **window
        ),
        metadata=owner.metadata(),
    )
    assert [(s.key, s.display_name, s.total_scans) for s in compared.series] == [
        (flyer.name, "Flyer", 2),
        ("tags/print", "print", 4),
    ]
    assert all(len(s.scans) == len(compared.bucket_start_times) for s in compared.series)

    csv_rows = await export_csv(analytics, owner, **window)
    assert csv_rows[0][:5] == ["time", "event_id", "qr_code", "short_code", "outcome"]
    assert len(csv_rows) == 1 + 6
    assert Counter(row[2] for row in csv_rows[1:]) == {poster.name: 4, flyer.name: 2}
    assert Counter(row[7] for row in csv_rows[1:]) == {"SE": 2, "US": 2, "DE": 1, "GB": 1}
    assert [row[0] for row in csv_rows[1:]] == sorted(row[0] for row in csv_rows[1:])
    assert {row[4] for row in csv_rows[1:]} == {"REDIRECTED"}
    with_bots = await export_csv(analytics, owner, include_bots=True, **window)
    assert [row[16] for row in with_bots[1:]].count("true") == 1
    countries = await export_csv(analytics, owner, dimension=D.COUNTRY, **window)
    assert countries == [
        ["country", "scans", "unique_visitors", "share"],
        ["SE", "2", "1", "0.333333"],
        ["US", "2", "1", "0.333333"],
        ["DE", "1", "1", "0.166667"],
        ["GB", "1", "1", "0.166667"],
    ]


async def export_csv(analytics: Any, owner: Account, **fields: Any) -> list[list[str]]:
    chunks = analytics.ExportScans(
        svc.ExportScansRequest(parent=owner.organization, **fields), metadata=owner.metadata()
    )
    data = b""
    async for chunk in chunks:
        assert chunk.content_type == "text/csv; charset=utf-8"
        data += chunk.data
    initial = await chunks.initial_metadata()
    assert dict(initial)["content-disposition"].startswith('attachment; filename="')
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


# ---------------------------------------------------------------- exports


async def test_exports_neutralize_formulas_and_write_xlsx(
    analytics: Any, owner: Account, analytics_server: Server, settings: Settings, client: redis.Redis
) -> None:
    engine: AsyncEngine = create_engine(settings.database_url, schema="analytics")
    organization = owner.organization.removeprefix("organizations/")
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    try:
        await store(
            engine,
            client,
            [
                event(organization, "evil", at, matched_rule='=HYPERLINK("http://x","y")', agent="@SUM(1+1)"),
                event(
                    organization, "evil", at + timedelta(seconds=1), matched_rule="-2+3", referer="https://a.example/"
                ),
                event(organization, "evil", at + timedelta(seconds=2), matched_rule="+cmd|' /C calc'!A0"),
            ],
        )
    finally:
        await engine.dispose()
    window: dict[str, Any] = {
        "start_time": stamp(at),
        "end_time": stamp(at + timedelta(minutes=1)),
        "time_zone": "Asia/Kolkata",
    }
    rows = await export_csv(analytics, owner, **window)
    assert [row[6] for row in rows[1:]] == ['\'=HYPERLINK("http://x","y")', "'-2+3", "'+cmd|' /C calc'!A0"]
    assert rows[1][19] == "'@SUM(1+1)"
    assert rows[1][0] == at.astimezone(ZoneInfo("Asia/Kolkata")).isoformat(timespec="milliseconds")
    assert rows[1][0].endswith("+05:30")
    rules = await export_csv(analytics, owner, dimension=D.MATCHED_RULE, **window)
    assert sorted(row[0] for row in rules[1:]) == ["'+cmd|' /C calc'!A0", "'-2+3", '\'=HYPERLINK("http://x","y")']

    chunks = analytics.ExportScans(
        svc.ExportScansRequest(parent=owner.organization, format=svc.ExportScansRequest.XLSX, **window),
        metadata=owner.metadata(),
    )
    data = b""
    async for chunk in chunks:
        assert chunk.content_type == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        data += chunk.data
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        sheet = book.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet  # no formulas: every text is a string cell
    assert sheet.count("<row ") == 4
    assert "=HYPERLINK(&quot;http://x&quot;,&quot;y&quot;)" in sheet or '=HYPERLINK("http://x","y")' in sheet
    assert re.search(r"<t[^>]*>time</t>", sheet)


# ---------------------------------------------------------------- the live feed


async def test_watch_scans_receives_scans_made_after_subscribing(
    analytics: Any,
    owner: Account,
    http: httpx.AsyncClient,
    qr_channel: grpc.aio.Channel,
    client: redis.Redis,
) -> None:
    qr = Clients.on(qr_channel)
    live = await qr.create(owner, dynamic("https://example.com/live", display_name="Live"))
    quiet = await qr.create(owner, dynamic("https://example.com/quiet", display_name="Quiet"))
    channel_name = f"qrmesh:analytics:live:{owner.organization.removeprefix('organizations/')}"
    feed = analytics.WatchScans(
        svc.WatchScansRequest(parent=owner.organization, qr_code=live.name), metadata=owner.metadata()
    )
    first = await feed.read()
    assert list(first.scans) == []  # the feed is live
    assert dict(await client.pubsub_numsub(channel_name))[channel_name.encode()] == 1
    received: list[analytics_pb2.Scan] = []
    # The consumer learns of a new watcher within a second: scan until one arrives.
    for _ in range(20):
        await scan(http, quiet.short_code, IPHONE, "81.224.1.9", "sv")  # another code: filtered out
        await scan(http, live.short_code, PREVIEW, "81.224.1.9", "")  # a bot: filtered out
        await scan(http, live.short_code, IPHONE, "81.224.1.9", "sv")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                while not received:
                    message = cast(svc.WatchScansResponse, await feed.read())
                    received.extend(message.scans)
        if received:
            break
    assert received, "no scan arrived on the live feed"
    assert {s.qr_code for s in received} == {live.name}
    assert not any(s.bot for s in received)
    assert received[0].country == "SE"
    assert received[0].short_code == live.short_code
    feed.cancel()
    # The server lets go of the subscription when the client leaves.
    for _ in range(100):
        if dict(await client.pubsub_numsub(channel_name))[channel_name.encode()] == 0:
            break
        await asyncio.sleep(0.05)
    assert dict(await client.pubsub_numsub(channel_name))[channel_name.encode()] == 0


async def test_watch_scans_ends_cleanly_when_the_server_stops(analytics_settings: Settings, owner: Account) -> None:
    extra = {**analytics_settings.extra, "CONSUMERS": "0"}
    server, port = await analytics_server_module.create_server(dataclasses.replace(analytics_settings, extra=extra))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
            feed = stub.WatchScans(svc.WatchScansRequest(parent=owner.organization), metadata=owner.metadata())
            assert list(cast(svc.WatchScansResponse, await feed.read()).scans) == []
            stopping = asyncio.create_task(server.stop(30))
            # The stream ends with OK as shutdown begins (not cut off after the 30 s grace period).
            assert await feed.read() == grpc.aio.EOF
            assert await feed.code() == grpc.StatusCode.OK
            await stopping
    finally:
        await server.stop(0)
