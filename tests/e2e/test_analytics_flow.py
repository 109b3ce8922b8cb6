"""Issue 6's promise through Envoy: scan a code a few times with different user agents, then curl-like
HTTP shows the summary, a time series, a device breakdown and the CSV export, and a gRPC client
through the edge (and a REST client of the transcoded stream) sees the scans arrive live."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import httpx
import pytest

from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc
from tests.e2e.test_identity_flow import sign_up_and_login

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
SAMSUNG = (
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36"
)


@pytest.fixture(scope="module")
def owner(edge: str) -> tuple[dict[str, str], str]:
    _, headers = sign_up_and_login(edge, "watcher")
    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": "Watched Inc"}, headers=headers)
    assert org.status_code == 200, org.text
    return headers, org.json()["name"]


def create_code(edge: str, owner: tuple[dict[str, str], str]) -> dict[str, Any]:
    headers, org = owner
    body = {"displayName": "Poster", "kind": "DYNAMIC", "content": {"url": {"url": "https://example.com/live"}}}
    answer = httpx.post(f"{edge}/v1/{org}/qrCodes", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


def scan(edge: str, short_code: str, agent: str, address: str) -> None:
    answer = httpx.get(f"{edge}/r/{short_code}", headers={"user-agent": agent, "x-forwarded-for": address})
    assert answer.status_code == 302, answer.text


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_scans_show_up_in_every_view_through_the_edge(edge: str, owner: tuple[dict[str, str], str]) -> None:
    headers, org = owner
    code = create_code(edge, owner)
    short_code = code["shortCode"]
    started = datetime.now(UTC) - timedelta(minutes=1)
    async with grpc.aio.insecure_channel(edge.removeprefix("http://")) as channel:
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        feed = stub.WatchScans(
            analytics_service_pb2.WatchScansRequest(parent=org, qr_code=code["name"]),
            metadata=(("authorization", headers["authorization"]),),
        )
        assert list(cast(analytics_service_pb2.WatchScansResponse, await feed.read()).scans) == []  # live from here on
        for agent, address in (
            (IPHONE, "81.2.69.142"),
            (WINDOWS, "8.8.8.8"),
            (IPHONE, "81.2.69.142"),
            (SAMSUNG, "84.128.0.5"),
        ):
            await asyncio.to_thread(scan, edge, short_code, agent, address)
        # By event id: another mesh sharing this Redis (a concurrent test session) may publish them too.
        live: dict[str, analytics_pb2.Scan] = {}
        async with asyncio.timeout(20):
            while len(live) < 4:
                for one in cast(analytics_service_pb2.WatchScansResponse, await feed.read()).scans:
                    live[one.event_id] = one
        feed.cancel()
    scans = sorted(live.values(), key=lambda one: one.time.ToDatetime())
    assert [one.device_type for one in scans] == ["mobile", "desktop", "mobile", "mobile"]
    assert [one.country for one in scans] == ["GB", "US", "GB", "DE"]
    assert {one.qr_code for one in scans} == {code["name"]}

    async with httpx.AsyncClient(timeout=30) as http:
        summary: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = await http.get(f"{edge}/v1/{org}/analytics:summary", headers=headers)
            assert answer.status_code == 200, answer.text
            summary = answer.json()
            if summary["scans"] == "4":
                break
            await asyncio.sleep(0.1)
        assert (summary["scans"], summary["uniqueVisitors"], summary["botScans"]) == ("4", "3", "0")
        assert summary["firstScanTime"] <= summary["lastScanTime"]

        window: dict[str, Any] = {"startTime": iso(started), "endTime": iso(datetime.now(UTC) + timedelta(minutes=1))}
        series = await http.get(
            f"{edge}/v1/{org}/analytics:timeSeries",
            params={**window, "granularity": "HOUR", "timeZone": "Europe/Stockholm"},
            headers=headers,
        )
        assert series.status_code == 200, series.text
        body = series.json()
        assert body["timeZone"] == "Europe/Stockholm"
        assert body["granularity"] == "HOUR"
        assert sum(int(bucket["scans"]) for bucket in body["buckets"]) == 4

        devices = await http.get(
            f"{edge}/v1/{org}/analytics:breakdown", params={**window, "dimension": "DEVICE_TYPE"}, headers=headers
        )
        assert devices.status_code == 200, devices.text
        assert [(e["value"], e["scans"], e["uniqueVisitors"]) for e in devices.json()["entries"]] == [
            ("mobile", "3", "2"),
            ("desktop", "1", "1"),
        ]
        assert devices.json()["totalScans"] == "4"

        export = await http.get(
            f"{edge}/v1/{org}/analytics:export", params={**window, "format": "CSV"}, headers=headers
        )
        assert export.status_code == 200, export.text
        assert export.headers["content-type"] == "text/csv; charset=utf-8"
        assert export.headers["content-disposition"].startswith("attachment; filename=")
        rows = list(csv.reader(io.StringIO(export.text)))
        assert rows[0][:3] == ["time", "event_id", "qr_code"]
        assert [row[7] for row in rows[1:]] == ["GB", "US", "GB", "DE"]

        other = await http.get(f"{edge}/v1/organizations/someone-else/analytics:summary", headers=headers)
        assert other.status_code == 403


async def test_the_live_feed_streams_through_the_rest_transcoder(edge: str, owner: tuple[dict[str, str], str]) -> None:
    headers, org = owner
    code = create_code(edge, owner)
    messages: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "GET", f"{edge}/v1/{org}/analytics:watch", params={"qrCode": code["name"]}, headers=headers
        ) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "application/json"
        # The transcoder streams one JSON array, an element per message as it comes.
        reader = JsonArrayReader(stream.aiter_text())
        assert await reader.next() == {"scans": []}  # the feed is live
        await asyncio.to_thread(scan, edge, code["shortCode"], IPHONE, "81.2.69.142")
        async with asyncio.timeout(20):
            while not messages:
                message = await reader.next()
                if message["scans"]:
                    messages.append(message)
    received = messages[0]["scans"]
    assert received[0]["qrCode"] == code["name"]
    assert received[0]["country"] == "GB"
    assert received[0]["deviceType"] == "mobile"


class JsonArrayReader:
    """The elements of a JSON array that arrives in pieces."""

    def __init__(self, chunks: AsyncIterator[str]) -> None:
        self.chunks = chunks
        self.buffer = ""
        self.decoder = json.JSONDecoder()

    async def next(self) -> dict[str, Any]:
        while True:
            text = self.buffer.lstrip("[,\n\r\t ")
            if text:
                try:
                    value, end = self.decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass
                else:
                    self.buffer = text[end:]
                    assert isinstance(value, dict)
                    return value
            self.buffer += await anext(self.chunks)
