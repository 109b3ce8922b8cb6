"""SQL of the webhooks schema. Every function takes the session keyword-only; nothing here decides.

Column lists and SET clauses are built from constants and code-chosen column names only; values are always
bound parameters.
"""

# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A row of `webhooks`."""

    id: str
    organization_id: str
    display_name: str
    url: str
    event_types: list[str]
    qr_codes: list[str]
    enabled: bool
    state: str
    contact_email: str
    secret: str
    last_error: str
    create_time: datetime
    update_time: datetime
    secret_key_id: str = ""
    """Which key sealed `secret` ('' when stored as issued)."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A row of `attempts`."""

    delivery_id: str
    attempt_number: int
    time: datetime
    status_code: int
    latency_ms: int
    response_excerpt: str
    error: str
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A row of `deliveries`, with its attempts when asked for."""

    id: str
    webhook_id: str
    organization_id: str
    event_id: str
    event_type: str
    payload: str
    traceparent: str
    tracestate: str
    state: str
    attempt_count: int
    round_start: int
    next_attempt_at: datetime | None
    create_time: datetime
    update_time: datetime
    attempts: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery with what the sender needs of its webhook."""

    delivery: DeliveryRecord
    url: str
    secret: str
    lease_id: str = ""
    """The claim's token: the attempt's result changes the delivery only while the lease is still this one."""


_WEBHOOK_COLUMNS = (
    "id, organization_id, display_name, url, event_types, qr_codes, enabled, state, contact_email, secret, "
    "last_error, create_time, update_time, secret_key_id"
)
_DELIVERY_COLUMNS = (
    "id::text AS id, webhook_id, organization_id, event_id, event_type, payload, traceparent, tracestate, state, "
    "attempt_count, round_start, next_attempt_at, create_time, update_time"
)


def _webhook(row: Any) -> WebhookRecord:
    return WebhookRecord(**{k: row[k] for k in WebhookRecord.__slots__})


def _delivery(row: Any) -> DeliveryRecord:
    return DeliveryRecord(**{k: row[k] for k in DeliveryRecord.__slots__ if k != "attempts"})


async def insert_webhook(record: WebhookRecord, *, session: AsyncSession) -> None:
    """Store a new webhook."""
    await session.execute(
        text(
            f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES (:id, :organization_id, :display_name, :url, "
            ":event_types, :qr_codes, :enabled, :state, :contact_email, :secret, :last_error, :create_time, "
            ":update_time, :secret_key_id)"
        ),
        {k: getattr(record, k) for k in WebhookRecord.__slots__},
    )


async def get_webhook(
    organization_id: str, webhook_id: str, *, session: AsyncSession, lock: bool = False
) -> WebhookRecord | None:
    """One webhook of the organization, or None."""
    row = (
        (
            await session.execute(
                text(
                    f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE organization_id = :o AND id = :w"
                    + (" FOR UPDATE" if lock else "")
                ),
                {"o": organization_id, "w": webhook_id},
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _webhook(row)


async def list_webhooks(
    organization_id: str, *, session: AsyncSession, limit: int, after: tuple[datetime, str] | None
) -> list[WebhookRecord]:
    """The organization's webhooks, newest first, after a (create_time, id) cursor."""
    params: dict[str, Any] = {"o": organization_id, "limit": limit}
    where = ""
    if after is not None:
        where = " AND (create_time, id) < (:t, :i)"
        params.update(t=after[0], i=after[1])
    rows = (
        await session.execute(
            text(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE organization_id = :o{where} "
                "ORDER BY create_time DESC, id DESC LIMIT :limit"
            ),
            params,
        )
    ).mappings()
    return [_webhook(row) for row in rows]


async def enabled_webhooks(organization_id: str, *, session: AsyncSession) -> list[WebhookRecord]:
    """The organization's webhooks that take deliveries."""
    rows = (
        await session.execute(
            text(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE organization_id = :o AND enabled "
                "AND state <> 'DISABLED'"
            ),
            {"o": organization_id},
        )
    ).mappings()
    return [_webhook(row) for row in rows]


async def update_webhook(webhook_id: str, values: Mapping[str, Any], *, session: AsyncSession) -> None:
    """Set columns of a webhook."""
    if not values:
        return
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    await session.execute(text(f"UPDATE webhooks SET {assignments} WHERE id = :_id"), {**values, "_id": webhook_id})


async def delete_webhook(organization_id: str, webhook_id: str, *, session: AsyncSession) -> bool:
    """Delete a webhook (its deliveries and attempts go with it); False if there was none."""
    result = await session.execute(
        text("DELETE FROM webhooks WHERE organization_id = :o AND id = :w RETURNING id"),
        {"o": organization_id, "w": webhook_id},
    )
    return result.first() is not None


async def find_request(organization_id: str, request_id: str, since: datetime, *, session: AsyncSession) -> str | None:
    """The webhook an earlier create with this request id made (within the window), if any."""
    row = (
        await session.execute(
            text(
                "SELECT webhook_id FROM create_requests WHERE organization_id = :o AND request_id = :r "
                "AND create_time >= :since"
            ),
            {"o": organization_id, "r": request_id, "since": since},
        )
    ).first()
    return None if row is None else str(row[0])


async def remember_request(
    organization_id: str, request_id: str, webhook_id: str, now: datetime, stale: datetime, *, session: AsyncSession
) -> None:
    """Keep a create's request id (replacing a stale one)."""
    await session.execute(
        text("DELETE FROM create_requests WHERE organization_id = :o AND create_time < :stale"),
        {"o": organization_id, "stale": stale},
    )
    await session.execute(
        text(
            "INSERT INTO create_requests (organization_id, request_id, webhook_id, create_time) "
            "VALUES (:o, :r, :w, :t) ON CONFLICT (organization_id, request_id) DO UPDATE "
            "SET webhook_id = excluded.webhook_id, create_time = excluded.create_time"
        ),
        {"o": organization_id, "r": request_id, "w": webhook_id, "t": now},
    )


async def insert_deliveries(rows: Sequence[Mapping[str, Any]], *, session: AsyncSession) -> int:
    """Queue deliveries; a (webhook, event id) already queued is left alone, and so is a row of a webhook
    deleted meanwhile (a replica's cache may still name it). How many were new."""
    if not rows:
        return 0
    result = await session.execute(
        text(
            "INSERT INTO deliveries (id, webhook_id, organization_id, event_id, event_type, payload, traceparent, "
            "tracestate, state, next_attempt_at, create_time, update_time) SELECT CAST(:id AS uuid), "
            "CAST(:webhook_id AS text), CAST(:organization_id AS text), CAST(:event_id AS text), "
            "CAST(:event_type AS text), CAST(:payload AS text), CAST(:traceparent AS text), "
            "CAST(:tracestate AS text), 'PENDING', CAST(:now AS timestamptz), CAST(:now AS timestamptz), "
            "CAST(:now AS timestamptz) WHERE EXISTS "
            "(SELECT 1 FROM webhooks WHERE id = CAST(:webhook_id AS text) FOR KEY SHARE) "
            "ON CONFLICT (webhook_id, event_id) DO NOTHING"
        ),
        list(rows),
    )
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


async def claim_scans(webhook_id: str, scan_ids: Sequence[str], now: datetime, *, session: AsyncSession) -> set[str]:
    """Mark scans as handed to a webhook; those not marked before (none if the webhook was deleted meanwhile)."""
    if not scan_ids:
        return set()
    rows = await session.execute(
        text(
            "INSERT INTO delivered_scans (webhook_id, scan_id, create_time) "
            "SELECT CAST(:w AS text), s, CAST(:now AS timestamptz) FROM unnest(CAST(:ids AS text[])) AS s "
            "WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = CAST(:w AS text) FOR KEY SHARE) "
            "ON CONFLICT DO NOTHING RETURNING scan_id"
        ),
        {"w": webhook_id, "ids": list(scan_ids), "now": now},
    )
    return {str(row[0]) for row in rows}


async def forget_scans(before: datetime, *, session: AsyncSession) -> None:
    """Drop scan marks older than `before` (the stream redelivers far sooner)."""
    await session.execute(text("DELETE FROM delivered_scans WHERE create_time < :before"), {"before": before})


async def claim_due(
    now: datetime, lease_until: datetime, limit: int, *, key_id: str, lease_id: str, session: AsyncSession
) -> list[DueDelivery]:
    """Lease up to `limit` due deliveries of webhooks that take them and whose secret was sealed with no key or
    with the key `key_id` names (SKIP LOCKED: replicas share the queue). Each row is leased under `lease_id`."""
    rows = (
        await session.execute(
            text(
                "WITH due AS (SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id "
                "WHERE d.state = 'PENDING' AND d.next_attempt_at <= :now "
                "AND (d.lease_until IS NULL OR d.lease_until < :now) AND w.enabled AND w.state <> 'DISABLED' "
                "AND w.secret_key_id IN ('', :key_id) "
                "ORDER BY d.next_attempt_at LIMIT :limit FOR UPDATE OF d SKIP LOCKED) "
                "UPDATE deliveries d SET lease_until = :lease, lease_id = CAST(:lease_id AS uuid) FROM due, webhooks w "
                "WHERE d.id = due.id AND w.id = d.webhook_id "
                "RETURNING d.id::text AS id, d.webhook_id, d.organization_id, d.event_id, d.event_type, d.payload, "
                "d.traceparent, d.tracestate, d.state, d.attempt_count, d.round_start, d.next_attempt_at, "
                "d.create_time, d.update_time, w.url AS url, w.secret AS secret"
            ),
            {"now": now, "lease": lease_until, "limit": limit, "key_id": key_id, "lease_id": lease_id},
        )
    ).mappings()
    return [DueDelivery(_delivery(row), row["url"], row["secret"], lease_id) for row in rows]


async def release_lease(delivery_ids: Sequence[str], lease_id: str, *, session: AsyncSession) -> None:
    """Give back leases this claim took but cannot use."""
    await session.execute(
        text(
            "UPDATE deliveries SET lease_until = NULL, lease_id = NULL "
            "WHERE id = ANY(CAST(:ids AS uuid[])) AND lease_id = CAST(:lease_id AS uuid)"
        ),
        {"ids": list(delivery_ids), "lease_id": lease_id},
    )


async def holds_lease(delivery_id: str, lease_id: str, *, session: AsyncSession) -> bool:
    """Whether the delivery is still leased under `lease_id` (its row should be locked by the caller)."""
    row = (
        await session.execute(
            text("SELECT lease_id::text FROM deliveries WHERE id = CAST(:d AS uuid)"),
            {"d": delivery_id},
        )
    ).first()
    return row is not None and bool(lease_id) and row[0] == lease_id


async def last_attempt_number(delivery_id: str, *, session: AsyncSession) -> int:
    """The highest attempt number logged for a delivery (0 for none)."""
    row = (
        await session.execute(
            text("SELECT coalesce(max(attempt_number), 0) FROM attempts WHERE delivery_id = CAST(:d AS uuid)"),
            {"d": delivery_id},
        )
    ).first()
    return int(row[0]) if row is not None else 0


async def lock_delivery(delivery_id: str, *, session: AsyncSession) -> DeliveryRecord | None:
    """A delivery, locked for update."""
    row = (
        (
            await session.execute(
                text(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = CAST(:d AS uuid) FOR UPDATE"),
                {"d": delivery_id},
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _delivery(row)


async def insert_attempt(attempt: AttemptRecord, *, session: AsyncSession) -> None:
    """Log one attempt."""
    await session.execute(
        text(
            "INSERT INTO attempts (delivery_id, attempt_number, time, status_code, latency_ms, response_excerpt, "
            "error, next_attempt_at) VALUES (CAST(:delivery_id AS uuid), :attempt_number, :time, :status_code, "
            ":latency_ms, :response_excerpt, :error, :next_attempt_at) ON CONFLICT DO NOTHING"
        ),
        {k: getattr(attempt, k) for k in AttemptRecord.__slots__},
    )


async def update_delivery(delivery_id: str, values: Mapping[str, Any], *, session: AsyncSession) -> None:
    """Set columns of a delivery."""
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    await session.execute(
        text(f"UPDATE deliveries SET {assignments} WHERE id = CAST(:_id AS uuid)"), {**values, "_id": delivery_id}
    )


async def get_delivery(webhook_id: str, delivery_id: str, *, session: AsyncSession) -> DeliveryRecord | None:
    """One delivery of a webhook with its attempts, or None."""
    row = (
        (
            await session.execute(
                text(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = :w AND id = CAST(:d AS uuid)"),
                {"w": webhook_id, "d": delivery_id},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return (await _with_attempts([_delivery(row)], session=session))[0]


async def list_deliveries(
    webhook_id: str, *, session: AsyncSession, limit: int, after: tuple[datetime, str] | None
) -> list[DeliveryRecord]:
    """A webhook's deliveries with their attempts, newest first, after a (create_time, id) cursor."""
    params: dict[str, Any] = {"w": webhook_id, "limit": limit}
    where = ""
    if after is not None:
        where = " AND (create_time, id) < (:t, CAST(:i AS uuid))"
        params.update(t=after[0], i=after[1])
    rows = (
        await session.execute(
            text(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = :w{where} "
                "ORDER BY create_time DESC, id DESC LIMIT :limit"
            ),
            params,
        )
    ).mappings()
    return await _with_attempts([_delivery(row) for row in rows], session=session)


async def _with_attempts(deliveries: list[DeliveryRecord], *, session: AsyncSession) -> list[DeliveryRecord]:
    if not deliveries:
        return []
    rows = (
        await session.execute(
            text(
                "SELECT delivery_id::text AS delivery_id, attempt_number, time, status_code, latency_ms, "
                "response_excerpt, error, next_attempt_at FROM attempts "
                "WHERE delivery_id = ANY(CAST(:ids AS uuid[])) ORDER BY attempt_number"
            ),
            {"ids": [d.id for d in deliveries]},
        )
    ).mappings()
    found: dict[str, list[AttemptRecord]] = {}
    for row in rows:
        found.setdefault(row["delivery_id"], []).append(AttemptRecord(**{k: row[k] for k in AttemptRecord.__slots__}))
    return [
        DeliveryRecord(
            **{k: getattr(d, k) for k in DeliveryRecord.__slots__ if k != "attempts"},
            attempts=tuple(found.get(d.id, ())),
        )
        for d in deliveries
    ]
