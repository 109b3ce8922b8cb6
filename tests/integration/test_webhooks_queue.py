"""The delivery queue under replicas: a process leases only deliveries whose secret its key opens, only the claim
that still holds a lease changes the delivery, and a webhook deleted while a replica still caches it is skipped.

Each test drives its own `Webhooks` (no dispatcher) with a key of its own, so the session's webhooks service
(another key) never takes these deliveries."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from qrmesh.platform.ids import uuid7
from qrmesh.platform.server import Server
from qrmesh.webhooks import store
from qrmesh.webhooks.config import WebhooksConfig
from qrmesh.webhooks.domain.sealing import key_id, seal
from qrmesh.webhooks.domain.signing import new_secret
from qrmesh.webhooks.sender import AttemptResult
from qrmesh.webhooks.server import webhooks_for
from qrmesh.webhooks.service import QueuedEvent, Webhooks
from qrmesh.webhooks.store import DueDelivery, WebhookRecord


def replica(webhooks_server: Server, key: bytes) -> Webhooks:
    """Another replica of the service (no dispatcher, no consumers) on the same database, with `key`."""
    resources = webhooks_server.resources
    assert resources.engine is not None
    assert resources.redis is not None
    base = webhooks_for(resources)
    config = WebhooksConfig(secret_key=key, cache_seconds=300)
    return Webhooks(resources.engine, resources.redis, config, plans=base.plans, mail_stream=base.mail_stream)


def new_key() -> bytes:
    return secrets.token_bytes(32)


async def add_webhook(webhooks: Webhooks, organization: str) -> WebhookRecord:
    """A webhook sealed with the replica's key, stored as the API would."""
    now = datetime.now(UTC)
    webhook_id = secrets.token_hex(8)
    record = WebhookRecord(
        id=webhook_id,
        organization_id=organization,
        display_name="",
        url="http://127.0.0.1:9/hook",
        event_types=["*"],
        qr_codes=[],
        enabled=True,
        state="ACTIVE",
        contact_email="",
        secret=seal(webhooks.config.secret_key, new_secret(), webhook_id),
        last_error="",
        create_time=now,
        update_time=now,
        secret_key_id=key_id(webhooks.config.secret_key),
    )
    async with webhooks.sessions.begin() as session:
        await store.insert_webhook(record, session=session)
    return record


async def queue(webhooks: Webhooks, record: WebhookRecord) -> str:
    """One due delivery for `record`; its id."""
    row = Webhooks._row(record, uuid7(), "webhook.test", "{}", datetime.now(UTC), "", "")
    async with webhooks.sessions.begin() as session:
        assert await store.insert_deliveries([row], session=session) == 1
    return str(row["id"])


async def claim_only(webhooks: Webhooks, delivery_id: str) -> list[DueDelivery]:
    """What `webhooks.claim` leased of `delivery_id`; leases it took on other rows are given back."""
    claimed = await webhooks.claim(100)
    others = [d for d in claimed if d.delivery.id != delivery_id]
    async with webhooks.sessions.begin() as session:
        for other in others:
            await store.release_lease([other.delivery.id], other.lease_id, session=session)
    return [d for d in claimed if d.delivery.id == delivery_id]


@pytest.fixture
async def organization(webhooks_server: Server) -> AsyncIterator[str]:
    found = f"queue-{secrets.token_hex(6)}"
    yield found
    engine = webhooks_server.resources.engine
    assert engine is not None
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM webhooks.webhooks WHERE organization_id = :o"), {"o": found})


async def test_only_a_replica_whose_key_opens_the_secret_leases_the_delivery(
    webhooks_server: Server, organization: str
) -> None:
    owner = replica(webhooks_server, new_key())
    stranger = replica(webhooks_server, new_key())
    record = await add_webhook(owner, organization)
    delivery_id = await queue(owner, record)

    assert await claim_only(stranger, delivery_id) == []  # not leased: the owner's replicas can take it at once
    [due] = await claim_only(owner, delivery_id)
    assert due.lease_id
    assert due.secret.startswith("whsec_")


async def test_only_the_claim_holding_the_lease_records_on_the_delivery(
    webhooks_server: Server, organization: str
) -> None:
    webhooks = replica(webhooks_server, new_key())
    record = await add_webhook(webhooks, organization)
    delivery_id = await queue(webhooks, record)
    [stale] = await claim_only(webhooks, delivery_id)
    await webhooks.redeliver(organization, record.id, delivery_id)  # while the first attempt is in flight
    [current] = await claim_only(webhooks, delivery_id)
    assert current.lease_id != stale.lease_id

    await webhooks.record(stale, AttemptResult(500, 0.01, "nope", "HTTP 500"))
    async with webhooks.sessions.begin() as session:
        after_stale = await store.get_delivery(record.id, delivery_id, session=session)
    assert after_stale is not None
    assert after_stale.state == "PENDING"
    assert after_stale.attempt_count == 0  # the delivery is left to the current claim
    assert [a.status_code for a in after_stale.attempts] == [500]  # the attempt is still logged

    done = await webhooks.record(current, AttemptResult(200, 0.01, "ok", ""))
    assert done.state == "SUCCEEDED"
    async with webhooks.sessions.begin() as session:
        final = await store.get_delivery(record.id, delivery_id, session=session)
    assert final is not None
    assert final.state == "SUCCEEDED"
    assert [(a.attempt_number, a.status_code) for a in final.attempts] == [(1, 500), (2, 200)]

    again = await webhooks.record(current, AttemptResult(500, 0.01, "nope", "HTTP 500"))  # its lease is spent
    assert again.state == "SUCCEEDED"


async def test_a_webhook_deleted_while_cached_is_skipped(webhooks_server: Server, organization: str) -> None:
    webhooks = replica(webhooks_server, new_key())
    kept = await add_webhook(webhooks, organization)
    gone = await add_webhook(webhooks, organization)
    assert {w.id for w in await webhooks.subscriptions(organization)} == {kept.id, gone.id}  # cached now
    async with webhooks.sessions.begin() as session:
        assert await store.delete_webhook(organization, gone.id, session=session)

    event = QueuedEvent(uuid7(), "qr_code.created", organization, "", datetime.now(UTC), {"name": "x"})
    await webhooks.queue_events([event])  # the vanished webhook's row fails nothing
    scan = ("scan-1", f"organizations/{organization}/qrCodes/abc", {"id": "scan-1"})
    assert await webhooks.queue_scans(organization, [scan]) == 1
    async with webhooks.sessions.begin() as session:
        assert len(await store.list_deliveries(kept.id, session=session, limit=10, after=None)) == 2
        assert await store.list_deliveries(gone.id, session=session, limit=10, after=None) == []
