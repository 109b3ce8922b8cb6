"""qr's domain events: every create, update and delete of a stored code reaches the events stream once its
transaction commits, carrying the code as the API shows it; what could not be appended is appended later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from qrmesh.events.v1 import event_pb2
from qrmesh.platform.database import create_engine
from qrmesh.platform.events import EVENT_FIELD, event_data, new_event
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr import events
from tests.integration.billing_helpers import subscribe
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, dynamic, static


@pytest.fixture(scope="module")
async def owner(identity_server: Server, billing_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as identity:
        account = await sign_up(identity, "qr-events")
    await subscribe(billing_server, account, "pro")
    return account


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    connection = redis.from_url(settings.redis_url)
    yield connection
    await connection.aclose()


async def events_of(client: redis.Redis, stream: str, organization: str, count: int) -> list[event_pb2.Event]:
    """The first `count` events of `organization` on `stream` (waiting up to 10 s for them)."""
    found: list[event_pb2.Event] = []
    for _ in range(200):
        found = []
        for _, fields in await client.xrange(stream) or []:
            payload = (fields or {})[EVENT_FIELD.encode()]
            assert isinstance(payload, bytes)
            event = event_pb2.Event.FromString(payload)
            if event.organization == organization:
                found.append(event)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return found


async def test_create_update_delete_become_events(
    qr_channel: grpc.aio.Channel, owner: Account, settings: Settings, client: redis.Redis
) -> None:
    qr = Clients.on(qr_channel)
    code = await qr.create(owner, dynamic("https://example.com/spring", display_name="Spring"))
    await qr.create(owner, static("no short link"))
    code.display_name = "Spring sale"
    changed = await qr.update(owner, code, ["display_name"])
    await qr.delete(owner, code.name)

    seen = await events_of(client, settings.events_stream, owner.organization, 4)
    assert [e.type for e in seen] == ["qr_code.created", "qr_code.created", "qr_code.updated", "qr_code.deleted"]
    assert len({e.id for e in seen}) == 4
    first, _, update, delete = seen
    assert [first.subject, update.subject, delete.subject] == [code.name] * 3
    created = event_data(first)
    assert created["displayName"] == "Spring"
    assert created["shortUrl"] == code.short_url
    assert created["content"]["url"]["url"] == "https://example.com/spring"
    assert event_data(update)["displayName"] == "Spring sale"
    assert event_data(update)["etag"] == changed.etag
    assert first.time.seconds > 0


async def test_a_refused_change_is_no_event(
    qr_channel: grpc.aio.Channel, owner: Account, settings: Settings, client: redis.Redis
) -> None:
    qr = Clients.on(qr_channel)
    code = await qr.create(owner, static("stays"))
    code.display_name = "x" * 1000
    with pytest.raises(grpc.aio.AioRpcError):
        await qr.update(owner, code, ["display_name"])
    seen = await events_of(client, settings.events_stream, owner.organization, 1)
    assert [e.subject for e in seen if e.subject == code.name] == [code.name]  # only its creation
    assert [e.type for e in seen if e.subject == code.name] == ["qr_code.created"]


async def test_events_left_in_the_outbox_are_appended_later(settings: Settings, client: redis.Redis) -> None:
    """A process that committed but died before appending: a relay (this one, or the running server's sweep,
    whichever locks the row first) appends the event, once."""
    engine = create_engine(settings.database_url, schema="qr")
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        left = new_event("qr_code.created", "organizations/left-behind", "organizations/left-behind/qrCodes/x", {})
        async with sessions.begin() as session:
            await events.record(session, [left])
        relay = events.EventRelay(sessions, client, settings.events_stream)
        await relay.relay_pending()
        await relay.relay_pending()  # nothing is left to append twice
        seen = await events_of(client, settings.events_stream, left.organization, 1)
        assert [e.id for e in seen if e.id == left.id] == [left.id]
    finally:
        await engine.dispose()
