"""Scan totals from the Redis stream of scan events, against real Redis and PostgreSQL.

Each test uses a stream of its own, so a qr service of another test session
sharing the same Redis cannot take its entries.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qrmesh.platform.database import create_engine
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr.scan_totals import ScanTotals
from qrmesh.scans.v1 import scan_event_pb2
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, QrCode, dynamic

Event = scan_event_pb2.ScanEvent


@pytest.fixture(scope="module")
async def account(identity_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        return await sign_up(channel, "scans")


@pytest.fixture(scope="module")
def qr(qr_channel: grpc.aio.Channel) -> Clients:
    return Clients.on(qr_channel)


@pytest.fixture(scope="module")
async def engine(qr_server: Server, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, schema="qr")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def stream(settings: Settings) -> AsyncIterator[tuple[redis.Redis, str]]:
    client = redis.from_url(settings.redis_url)
    name = f"test-scans-{secrets.token_hex(6)}"
    yield client, name
    await client.delete(name)
    await client.aclose()


def event(code: QrCode, *, event_id: str | None = None, **fields: object) -> bytes:
    """A serialized ScanEvent for `code` (REDIRECTED by a person unless `fields` say otherwise)."""
    message = Event(
        event_id=event_id or str(uuid.uuid4()),
        short_code=code.short_code,
        qr_code=code.name,
        organization=code.name.split("/qrCodes/")[0],
        outcome=Event.REDIRECTED,
    )
    for key, value in fields.items():
        setattr(message, key, value)
    return message.SerializeToString()


async def scan_count(qr: Clients, account: Account, code: QrCode) -> int:
    return (await qr.get(account, code.name)).scan_count


async def test_each_redirected_scan_counts_once(
    qr: Clients, account: Account, sessions: async_sessionmaker[AsyncSession], stream: tuple[redis.Redis, str]
) -> None:
    client, name = stream
    first, second = await qr.create(account, dynamic()), await qr.create(account, dynamic())
    repeated = str(uuid.uuid4())
    for payload in (
        event(first, event_id=repeated),
        event(first, event_id=repeated),  # the redirect retried an append: counted once
        event(first),
        event(second),
        event(first, bot=True),
        event(first, outcome=Event.PAUSED),
        event(first, outcome=Event.PASSWORD_REQUIRED),
        Event(event_id=str(uuid.uuid4()), short_code="nope", outcome=Event.UNKNOWN_CODE).SerializeToString(),
        b"\xff not a scan event",
    ):
        await client.xadd(name, {"event": payload})
    await client.xadd(name, {"other": b"field"})

    totals = ScanTotals(sessions, client, stream=name, group="qr-scan-totals", consumer="test")
    await totals.ensure_group()
    await totals.ensure_group()  # creating it twice is fine
    assert await totals.step() == 3
    assert (await scan_count(qr, account, first), await scan_count(qr, account, second)) == (2, 1)
    pending = await client.xpending(name, "qr-scan-totals")
    assert pending["pending"] == 0

    # The same event delivered again (a consumer died after the commit, before the ack) adds nothing.
    await client.xadd(name, {"event": event(first, event_id=repeated)})
    assert await totals.step() == 0
    assert await scan_count(qr, account, first) == 2

    listed = await qr.list(account, order_by="scan_count desc", page_size=2)
    assert [code.name for code in listed.qr_codes] == [first.name, second.name]


async def test_entries_of_a_dead_consumer_are_claimed(
    qr: Clients, account: Account, sessions: async_sessionmaker[AsyncSession], stream: tuple[redis.Redis, str]
) -> None:
    client, name = stream
    code = await qr.create(account, dynamic())
    totals = ScanTotals(sessions, client, stream=name, consumer="survivor", claim_idle_ms=50)
    await totals.ensure_group()
    for _ in range(3):
        await client.xadd(name, {"event": event(code)})
    # Another consumer reads the entries and dies before acknowledging them.
    taken: Any = await client.xreadgroup(totals.group, "dead", {name: ">"}, count=10)
    assert len(taken[0][1]) == 3
    await asyncio.sleep(0.1)
    assert await totals.step() == 3
    assert await scan_count(qr, account, code) == 3
    assert (await client.xpending(name, totals.group))["pending"] == 0


async def test_the_background_consumer_counts_and_stops(
    qr: Clients,
    account: Account,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    stream: tuple[redis.Redis, str],
) -> None:
    client, name = stream
    code = await qr.create(account, dynamic())
    stale = f"old-{uuid.uuid4()}"
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO qr.counted_scans VALUES (:id, now() - interval '8 days')"), {"id": stale}
        )
    totals = ScanTotals(sessions, client, stream=name, consumer="background", block_ms=100)
    await totals.start()
    try:
        await client.xadd(name, {"event": event(code)})
        await client.xadd(name, {"event": event(code)})
        async with asyncio.timeout(10):
            while True:
                if await scan_count(qr, account, code) >= 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        await totals.close()
    assert await scan_count(qr, account, code) == 2
    async with engine.connect() as connection:
        left = await connection.scalar(
            text("SELECT count(*) FROM qr.counted_scans WHERE event_id = :id"), {"id": stale}
        )
    assert left == 0
