"""Helpers for tests of analytics queries: scan events stored through the ingestion code, and stubs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.enrich import Enricher
from qrmesh.analytics.ingest import Consumer
from qrmesh.scans.v1 import scan_event_pb2

Event = scan_event_pb2.ScanEvent
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
)


def event(
    organization: str,
    code: str,
    when: datetime,
    *,
    visitor: str = "",
    agent: str = IPHONE,
    country: str = "SE",
    bot: bool = False,
    outcome: int = Event.REDIRECTED,
    matched_rule: str = "",
    referer: str = "",
    language: str = "sv-SE,sv;q=0.9",
) -> Event:
    """A scan event of `organizations/{organization}/qrCodes/{code}` at `when` (a new visitor unless named)."""
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return Event(
        event_id=str(uuid.uuid4()),
        time=stamp,
        short_code=f"s{code[:10]}",
        qr_code=f"organizations/{organization}/qrCodes/{code}",
        organization=f"organizations/{organization}",
        outcome=outcome,  # type: ignore[arg-type]
        destination_url="https://example.com/landing",
        matched_rule=matched_rule,
        user_agent=agent,
        accept_language=language,
        referer=referer,
        country=country,
        ip_address="81.224.0.0",
        visitor_id=visitor or uuid.uuid4().hex,
        bot=bot,
        method="GET",
    )


async def store(engine: AsyncEngine, client: redis.Redis, events: Sequence[Event]) -> None:
    """Store events exactly as the ingestion consumer does (raw rows, visitors, rollups), in time order
    and one batch each, as a redirect would have sent them."""
    consumer = Consumer(engine, client, AnalyticsConfig(stream="unused"), Enricher(), name="test-writer")
    enricher = Enricher()
    for scan in sorted(events, key=lambda e: (e.time.seconds, e.time.nanos)):
        rows = [row for row in [enricher.prepare("0-1", scan)] if row is not None]
        await consumer.ensure_partitions(rows)
        await consumer.write(rows, [])
