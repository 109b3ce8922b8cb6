"""PostgreSQL access for the billing schema: every query the service runs, nothing else.

Each function takes the caller's `session` (keyword-only) and never commits. Changes of
one organization's subscription run under `lock_organization`, so plan changes, provider
events and the job never interleave for the same organization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from qrmesh.billing.domain.entitlements import Grant, Kind, Status

SCHEMA = "billing"
metadata = sa.MetaData(schema=SCHEMA)
_TS = sa.DateTime(timezone=True)

entitlement_definitions = sa.Table(
    "entitlement_definitions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("price_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
)

plan_entitlements = sa.Table(
    "plan_entitlements",
    metadata,
    sa.Column("plan_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("organization_id", sa.Text, primary_key=True),
    sa.Column("plan_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("period_start", _TS),
    sa.Column("period_end", _TS),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False),
    sa.Column("scheduled_plan_id", sa.Text),
    sa.Column("trial_end", _TS),
    sa.Column("past_due_since", _TS),
    sa.Column("grace_until", _TS),
    sa.Column("ended_at", _TS),
    sa.Column("credit_minor", sa.BigInteger, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("provider_customer_id", sa.Text),
    sa.Column("provider_subscription_id", sa.Text),
    sa.Column("provider_event_at", _TS),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("pending_plan_id", sa.Text),
    sa.Column("pending_amount_minor", sa.BigInteger),
    sa.Column("pending_credit_minor", sa.BigInteger),
    sa.Column("pending_at", _TS),
    sa.Column("pending_period_end", _TS),
    sa.Column("period_paid_minor", sa.BigInteger, nullable=False),
    sa.Column("next_due_at", _TS),
)

plan_changes = sa.Table(
    "plan_changes",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("from_plan", sa.Text, nullable=False),
    sa.Column("to_plan", sa.Text, nullable=False),
    sa.Column("at_period_end", sa.Boolean, nullable=False),
    sa.Column("amount_due_minor", sa.BigInteger, nullable=False),
    sa.Column("change", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("received_at", _TS, nullable=False),
)


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan with its entitlements."""

    id: str
    display_name: str
    description: str
    price_minor: int
    currency: str
    rank: int
    grants: tuple[Grant, ...]

    @property
    def paid(self) -> bool:
        return self.price_minor > 0


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A row of `subscriptions`."""

    organization_id: str
    plan_id: str
    status: Status
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    scheduled_plan_id: str | None
    trial_end: datetime | None
    past_due_since: datetime | None
    grace_until: datetime | None
    ended_at: datetime | None
    credit_minor: int
    provider: str
    provider_customer_id: str | None
    provider_subscription_id: str | None
    provider_event_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    pending_plan_id: str | None
    pending_amount_minor: int | None
    pending_credit_minor: int | None
    pending_at: datetime | None
    pending_period_end: datetime | None
    period_paid_minor: int
    next_due_at: datetime | None


def _subscription(row: Any) -> SubscriptionRecord:
    values = dict(row._mapping)
    values["status"] = Status(values["status"])
    return SubscriptionRecord(**values)


def _grant(name: str, kind: str, value: int | None, description: str) -> Grant:
    if kind == Kind.FEATURE.value:
        return Grant.feature(name, bool(value), description)
    return Grant.quantity(name, value, description)


async def lock_organization(organization_id: str, *, session: AsyncSession) -> None:
    """Hold a transaction-scoped lock on the organization's subscription (released at commit or rollback)."""
    key = sa.func.hashtextextended(f"billing:subscription:{organization_id}", 0)
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


async def try_lock_job(*, session: AsyncSession) -> bool:
    """Whether this transaction got the job's lock (one replica runs the job at a time; held until the
    transaction ends)."""
    key = sa.func.hashtextextended("billing:job", 0)
    return bool(await session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(key))))


# ---------------------------------------------------------------- plans


async def list_plans(*, session: AsyncSession) -> list[PlanRecord]:
    """Every plan with its entitlements, by rank."""
    rows = (await session.execute(sa.select(plans).order_by(plans.c.rank))).all()
    statement = sa.select(
        plan_entitlements.c.plan_id,
        plan_entitlements.c.name,
        plan_entitlements.c.value,
        entitlement_definitions.c.kind,
        entitlement_definitions.c.description,
    ).join(entitlement_definitions, entitlement_definitions.c.name == plan_entitlements.c.name)
    grants: dict[str, list[Grant]] = {}
    for entry in (await session.execute(statement.order_by(plan_entitlements.c.name))).all():
        grants.setdefault(entry.plan_id, []).append(_grant(entry.name, entry.kind, entry.value, entry.description))
    return [
        PlanRecord(
            id=row.id,
            display_name=row.display_name,
            description=row.description,
            price_minor=row.price_minor,
            currency=row.currency,
            rank=row.rank,
            grants=tuple(grants.get(row.id, ())),
        )
        for row in rows
    ]


# ---------------------------------------------------------------- subscriptions


async def get_subscription(
    organization_id: str, *, session: AsyncSession, for_update: bool = False
) -> SubscriptionRecord | None:
    """The organization's subscription row, if it ever subscribed."""
    statement = sa.select(subscriptions).where(subscriptions.c.organization_id == organization_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).first()
    return _subscription(row) if row is not None else None


async def find_by_provider_subscription(
    provider: str, subscription_id: str, *, session: AsyncSession
) -> SubscriptionRecord | None:
    """The subscription a provider knows by `subscription_id`."""
    statement = sa.select(subscriptions).where(
        subscriptions.c.provider == provider, subscriptions.c.provider_subscription_id == subscription_id
    )
    row = (await session.execute(statement)).first()
    return _subscription(row) if row is not None else None


async def put_subscription(
    organization_id: str, *, session: AsyncSession, values: dict[str, Any], now: datetime
) -> SubscriptionRecord:
    """Insert or update the organization's subscription with `values`; its version grows by one."""
    columns = {**values, "updated_at": now}
    if isinstance(columns.get("status"), Status):
        columns["status"] = columns["status"].value
    insert = pg.insert(subscriptions).values(
        organization_id=organization_id,
        created_at=now,
        version=1,
        **{"cancel_at_period_end": False, "credit_minor": 0, "provider": "", "period_paid_minor": 0, **columns},
    )
    statement = insert.on_conflict_do_update(
        index_elements=[subscriptions.c.organization_id],
        set_={**columns, "version": subscriptions.c.version + 1},
    ).returning(*subscriptions.c)
    return _subscription((await session.execute(statement)).one())


async def due_organizations(
    now: datetime, *, session: AsyncSession, limit: int, organizations: Sequence[str] | None = None
) -> list[str]:
    """Organizations with a time-driven move due at `now` (`next_due_at`, written with every change), the
    longest overdue first; only among `organizations` when given."""
    statement = sa.select(subscriptions.c.organization_id).where(
        subscriptions.c.next_due_at.is_not(None), subscriptions.c.next_due_at <= now
    )
    if organizations is not None:
        statement = statement.where(subscriptions.c.organization_id.in_(list(organizations)))
    statement = statement.order_by(subscriptions.c.next_due_at, subscriptions.c.organization_id).limit(limit)
    return list((await session.execute(statement)).scalars())


async def set_next_due(organization_id: str, next_due: datetime | None, *, session: AsyncSession) -> None:
    """Overwrite when the job next looks at the organization (its version is untouched: nothing changed)."""
    await session.execute(
        sa.update(subscriptions).where(subscriptions.c.organization_id == organization_id).values(next_due_at=next_due)
    )


async def organizations_by_lapse(*, session: AsyncSession) -> dict[str, tuple[int, bool]]:
    """Every organization with a subscription: its id -> (version, whether it lapsed)."""
    rows = await session.execute(
        sa.select(subscriptions.c.organization_id, subscriptions.c.version, subscriptions.c.status)
    )
    return {organization_id: (int(version), Status(status).lapsed) for organization_id, version, status in rows}


# ---------------------------------------------------------------- the plan change ledger


async def find_change(organization_id: str, request_id: str, *, session: AsyncSession) -> bytes | None:
    """The serialized PlanChange an earlier ChangePlan with this request id made, if any."""
    statement = sa.select(plan_changes.c.change).where(
        plan_changes.c.organization_id == organization_id, plan_changes.c.request_id == request_id
    )
    found = (await session.execute(statement)).scalar_one_or_none()
    return bytes(found) if found is not None else None


async def record_change(
    *,
    session: AsyncSession,
    organization_id: str,
    request_id: str,
    from_plan: str,
    to_plan: str,
    at_period_end: bool,
    amount_due: int,
    change: bytes,
    now: datetime,
    reason: str = "",
) -> None:
    """Remember a plan change and what it charged (or, for a grant, why it was made)."""
    await session.execute(
        sa.insert(plan_changes).values(
            organization_id=organization_id,
            request_id=request_id,
            from_plan=from_plan,
            to_plan=to_plan,
            at_period_end=at_period_end,
            amount_due_minor=amount_due,
            change=change,
            created_at=now,
            reason=reason,
        )
    )


async def prune_changes(*, session: AsyncSession, before: datetime) -> None:
    """Forget request ids older than `before` (the ledger keeps the changes)."""
    await session.execute(
        sa.update(plan_changes)
        .where(plan_changes.c.request_id != "", plan_changes.c.created_at < before)
        .values(request_id="")
    )


# ---------------------------------------------------------------- provider events


async def record_event(
    provider: str, event_id: str, *, session: AsyncSession, type_: str, outcome: str, now: datetime
) -> bool:
    """Remember that an event was applied; False if it had been (a duplicate delivery: apply nothing)."""
    statement = (
        pg.insert(provider_events)
        .values(provider=provider, event_id=event_id, type=type_, outcome=outcome, received_at=now)
        .on_conflict_do_nothing()
        .returning(provider_events.c.event_id)
    )
    return (await session.execute(statement)).first() is not None


async def count_events(provider: str, event_ids: Sequence[str], *, session: AsyncSession) -> int:
    """How many of these events were recorded."""
    statement = sa.select(sa.func.count()).where(
        provider_events.c.provider == provider, provider_events.c.event_id.in_(list(event_ids))
    )
    return int(await session.scalar(statement) or 0)
