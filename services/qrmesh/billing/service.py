"""The billing service's operations: plans, subscriptions, plan changes, payments, grants and the job.

Each change of an organization's subscription runs in one transaction under the
organization's lock; after the commit the change is announced through Redis
(`signals.announce_change`, carrying the subscription's version so late
announcements cannot undo newer ones): cached entitlements are forgotten and
the redirect learns whether the organization's codes are paused. Times come in
as `now` so tests drive the clock instead of waiting.

Nothing paid is granted before it is paid: an upgrade (or subscribing again
after a lapse) that costs something is only recorded as the subscription's
pending change, and takes effect when the payment provider confirms the
payment (`invoice.paid`, or the provider's subscription becoming active on the
plan). Credit for unused time is bounded by what was actually paid for the
period. Operators put an organization on a plan without payment with `grant`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from qrmesh.billing import convert, names, signals, store
from qrmesh.billing.config import BillingConfig
from qrmesh.billing.domain import lifecycle
from qrmesh.billing.domain.entitlements import FREE_PLAN, Check, EntitlementSet, Overage, Status, over_limits
from qrmesh.billing.domain.lifecycle import Change, Current, Pending
from qrmesh.billing.domain.proration import Proration, new_period, no_charge, prorate
from qrmesh.billing.domain.providers import InvoiceOutcome, PaymentProvider, ProviderEvent, StripeProvider
from qrmesh.billing.usage import UsageClient
from qrmesh.platform.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("qrmesh.billing.service")

REQUEST_ID_TTL = timedelta(days=1)
PLAN_LIMITS_EXCEEDED = "PLAN_LIMITS_EXCEEDED"
JOB_BATCH = 500
"""Subscriptions the job advances per round (the longest overdue first)."""


def utcnow() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def _state(record: store.SubscriptionRecord, plans: Mapping[str, store.PlanRecord]) -> lifecycle.State:
    scheduled = record.scheduled_plan_id
    return lifecycle.State(
        plan=record.plan_id,
        status=record.status,
        paid=plans[record.plan_id].paid if record.plan_id in plans else True,
        period_start=record.period_start,
        period_end=record.period_end,
        cancel_at_period_end=record.cancel_at_period_end,
        scheduled_plan=scheduled,
        scheduled_plan_paid=bool(scheduled and scheduled in plans and plans[scheduled].paid),
        trial_end=record.trial_end,
        past_due_since=record.past_due_since,
        grace_until=record.grace_until,
        ended_at=record.ended_at,
    )


def _pending(record: store.SubscriptionRecord) -> Pending | None:
    if record.pending_plan_id is None or record.pending_at is None:
        return None
    return Pending(
        plan=record.pending_plan_id,
        amount_due=record.pending_amount_minor or 0,
        credit_applied=record.pending_credit_minor or 0,
        requested_at=record.pending_at,
        period_end=record.pending_period_end,
    )


def _values(current: Current) -> dict[str, Any]:
    """Every column a subscription's change writes: the state, the money, the pending change (dropped once it
    no longer applies) and when the job next looks at it."""
    state = current.state
    pending = current.pending if current.pending is not None and current.pending.applies_to(state) else None
    return {
        "plan_id": state.plan,
        "status": state.status,
        "period_start": state.period_start,
        "period_end": state.period_end,
        "cancel_at_period_end": state.cancel_at_period_end,
        "scheduled_plan_id": state.scheduled_plan,
        "trial_end": state.trial_end,
        "past_due_since": state.past_due_since,
        "grace_until": state.grace_until,
        "ended_at": state.ended_at,
        "credit_minor": current.credit,
        "period_paid_minor": max(current.period_paid, 0) if state.paid and not state.lapsed else 0,
        "pending_plan_id": pending.plan if pending else None,
        "pending_amount_minor": pending.amount_due if pending else None,
        "pending_credit_minor": pending.credit_applied if pending else None,
        "pending_at": pending.requested_at if pending else None,
        "pending_period_end": pending.period_end if pending else None,
        "next_due_at": lifecycle.next_due(state),
    }


class Billing:
    """Every billing operation, over one database engine and one Redis client."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        config: BillingConfig,
        *,
        usage: UsageClient,
        providers: Mapping[str, PaymentProvider] | None = None,
    ) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.redis = client
        self.config = config
        self.usage = usage
        self.providers: dict[str, PaymentProvider] = dict(
            providers
            if providers is not None
            else {"stripe": StripeProvider(config.stripe_webhook_secrets, tolerance=config.webhook_tolerance)}
        )
        self._plans: dict[str, store.PlanRecord] = {}

    # ------------------------------------------------------------ plans

    async def load_plans(self) -> list[store.PlanRecord]:
        """Read the plans (they are data) and keep them in memory."""
        async with self.sessions.begin() as session:
            plans = await store.list_plans(session=session)
        self._plans = {plan.id: plan for plan in plans}
        return plans

    async def plans(self) -> list[store.PlanRecord]:
        """Every plan, cheapest first."""
        if not self._plans:
            await self.load_plans()
        return sorted(self._plans.values(), key=lambda plan: plan.rank)

    async def plan(self, plan_id: str) -> store.PlanRecord:
        """One plan; NOT_FOUND when no plan has this id."""
        if plan_id not in self._plans:
            await self.load_plans()
        found = self._plans.get(plan_id)
        if found is None:
            raise NotFound(f"plans/{plan_id} does not exist", reason="PLAN_NOT_FOUND", metadata={"plan": plan_id})
        return found

    # ------------------------------------------------------------ reading

    def _current(self, organization_id: str, record: store.SubscriptionRecord | None) -> Current:
        if record is None:
            currency = self._plans[FREE_PLAN].currency if FREE_PLAN in self._plans else "USD"
            return Current(organization_id, lifecycle.free(), currency=currency)
        plan = self._plans.get(record.plan_id)
        return Current(
            organization_id=organization_id,
            state=_state(record, self._plans),
            credit=record.credit_minor,
            currency=plan.currency if plan else "USD",
            provider=record.provider,
            version=record.version,
            updated_at=record.updated_at,
            pending=_pending(record),
            period_paid=record.period_paid_minor,
        )

    async def subscription(self, organization_id: str) -> Current:
        """The organization's subscription (Free when it never subscribed)."""
        await self.plans()
        async with self.sessions.begin() as session:
            record = await store.get_subscription(organization_id, session=session)
        return self._current(organization_id, record)

    async def entitlements(self, organization_id: str) -> EntitlementSet:
        """What the organization may do now: its plan's entitlements, Free's while lapsed."""
        current = await self.subscription(organization_id)
        state = current.state
        plan = await self.plan(FREE_PLAN if state.lapsed else state.plan)
        return EntitlementSet.of(
            names.organization_name(organization_id),
            plan.id,
            plan.grants,
            status=state.status,
            lapsed=state.lapsed,
            version=current.version,
            plan_display_name=plan.display_name,
        )

    async def check(self, organization_id: str, entitlement: str, *, usage: int, requested: int) -> tuple[Check, str]:
        """Whether `requested` more of `entitlement` fits on top of `usage`; and the plan that decided."""
        entitlements = await self.entitlements(organization_id)
        return entitlements.check(entitlement, usage=usage, requested=requested), entitlements.plan

    # ------------------------------------------------------------ plan changes

    async def _overages(self, organization_id: str, target: store.PlanRecord) -> list[Overage]:
        usage = await self.usage.usage(names.organization_name(organization_id))
        return over_limits(target.grants, usage)

    def _refuse(self, target: store.PlanRecord, over: list[Overage]) -> FailedPrecondition:
        listed = ", ".join(
            f"{item.name} ({item.usage} in use, {target.display_name} allows {item.limit})" for item in over
        )
        metadata = {"plan": target.id, "over": ",".join(item.name for item in over)}
        for item in over:
            metadata[f"{item.name}.limit"] = str(item.limit)
            metadata[f"{item.name}.usage"] = str(item.usage)
        return FailedPrecondition(
            f"the organization does not fit in {target.display_name}: {listed}. Remove some first, or change "
            "at the end of the period (at_period_end)",
            reason=PLAN_LIMITS_EXCEEDED,
            metadata=metadata,
        )

    async def _plan_change(
        self, current: Current, target: store.PlanRecord, at_period_end: bool, now: datetime, *, check_usage: bool
    ) -> Change:
        """The change from `current` to `target` at `now` (nothing stored)."""
        state = current.state
        source = await self.plan(state.plan)
        if source.currency != target.currency:
            raise FailedPrecondition("plans in different currencies cannot be exchanged", reason="CURRENCY_MISMATCH")

        def done(
            after: lifecycle.State, proration: Proration, effective: datetime, *, paid: int, scheduled: bool = False
        ) -> Change:
            # Any pending change is withdrawn: this one replaces it.
            updated = dataclasses.replace(
                current, state=after, credit=proration.balance, pending=None, period_paid=max(paid, 0)
            )
            return Change(current, updated, source.id, target.id, proration, effective, scheduled)

        def awaiting(proration: Proration, period_end: datetime | None) -> Change:
            # Nothing is granted yet: the plan, the period and the credit stay as they are until it is paid.
            pending = Pending(target.id, proration.amount_due, proration.credit_applied, now, period_end)
            updated = dataclasses.replace(current, pending=pending)
            return Change(current, updated, source.id, target.id, proration, now, False, awaiting_payment=True)

        # The same plan: withdraw a scheduled change, a pending change or a cancellation.
        if target.id == state.plan and not state.lapsed:
            after = dataclasses.replace(
                state, cancel_at_period_end=False, scheduled_plan=None, scheduled_plan_paid=False
            )
            return done(after, no_charge(current.credit), now, paid=current.period_paid)
        starts_period = state.lapsed or not state.paid  # from Free, or subscribing again after a lapse
        downgrade = not starts_period and target.rank < source.rank
        if at_period_end and target.paid and not downgrade:
            raise InvalidArgument.field(
                "at_period_end",
                "only a downgrade can wait for the end of the period; an upgrade takes effect once it is paid",
                reason="UPGRADE_AT_PERIOD_END",
            )
        scheduled = at_period_end and not starts_period and state.period_end is not None and state.period_end > now
        if scheduled:
            assert state.period_end is not None  # noqa: S101 - `scheduled` says so
            after = dataclasses.replace(
                state, scheduled_plan=target.id, scheduled_plan_paid=target.paid, cancel_at_period_end=False
            )
            return done(after, no_charge(current.credit), state.period_end, paid=current.period_paid, scheduled=True)
        # Whatever takes effect now must fit what the organization has.
        if check_usage:
            over = await self._overages(current.organization_id, target)
            if over:
                raise self._refuse(target, over)
        if starts_period:
            if not target.paid:
                return done(lifecycle.free(), no_charge(current.credit), now, paid=0)
            proration, end = new_period(
                name=target.display_name, price=target.price_minor, at=now, balance=current.credit
            )
            if proration.amount_due:
                return awaiting(proration, None)
            return done(lifecycle.renewed(target.id, now, end), proration, now, paid=proration.total)
        if state.status is Status.PAST_DUE and not downgrade:
            raise FailedPrecondition(
                "the last payment failed: settle it before upgrading", reason="SUBSCRIPTION_PAST_DUE"
            )
        if not downgrade and state.status is Status.ACTIVE and state.period_end is None:
            # Upgrading from a plan granted without an end: the new plan is paid for from now on.
            proration, end = new_period(
                name=target.display_name, price=target.price_minor, at=now, balance=current.credit
            )
            if proration.amount_due:
                return awaiting(proration, None)
            return done(lifecycle.renewed(target.id, now, end), proration, now, paid=proration.total)
        if state.status is Status.ACTIVE and state.period_start is not None and state.period_end is not None:
            proration = prorate(
                old_name=source.display_name,
                old_price=source.price_minor,
                new_name=target.display_name,
                new_price=target.price_minor,
                period_start=state.period_start,
                period_end=state.period_end,
                at=max(now, state.period_start),
                balance=current.credit,
                paid=current.period_paid,
            )
        else:
            proration = no_charge(current.credit)  # a trial, or a period not paid (past due)
        if not downgrade and proration.amount_due:
            return awaiting(proration, state.period_end)
        paid = current.period_paid + proration.total
        if not target.paid:
            return done(dataclasses.replace(lifecycle.free(), past_due_since=None), proration, now, paid=0)
        after = dataclasses.replace(
            state, plan=target.id, paid=True, scheduled_plan=None, scheduled_plan_paid=False, cancel_at_period_end=False
        )
        return done(after, proration, now, paid=paid)

    async def preview(
        self, organization_id: str, plan_id: str, at_period_end: bool, now: datetime | None = None
    ) -> Change:
        """What changing to `plan_id` would do now, without doing it."""
        now = now or utcnow()
        target = await self.plan(plan_id)
        current = await self.subscription(organization_id)
        return await self._plan_change(current, target, at_period_end, now, check_usage=True)

    async def change_plan(
        self, organization_id: str, plan_id: str, at_period_end: bool, request_id: str, now: datetime | None = None
    ) -> tuple[Current, Change | bytes]:
        """Change the plan (or record the change until it is paid); a repeated request id answers the first
        change (as its stored PlanChange bytes)."""
        now = now or utcnow()
        target = await self.plan(plan_id)
        if request_id:
            async with self.sessions.begin() as session:
                earlier = await store.find_change(organization_id, request_id, session=session)
                if earlier is not None:  # a retry: answered as the first time, nothing checked or charged again
                    record = await store.get_subscription(organization_id, session=session)
                    return self._current(organization_id, record), earlier
        # Usage is asked of other services before taking the lock, so no lock waits on the network; the change
        # is then made only on the very subscription that was checked.
        before = await self.subscription(organization_id)
        await self._plan_change(before, target, at_period_end, now, check_usage=True)
        async with self.sessions.begin() as session:
            await store.lock_organization(organization_id, session=session)
            if request_id:
                earlier = await store.find_change(organization_id, request_id, session=session)
                if earlier is not None:
                    record = await store.get_subscription(organization_id, session=session)
                    return self._current(organization_id, record), earlier
            record = await store.get_subscription(organization_id, session=session, for_update=True)
            current = self._current(organization_id, record)
            if current.version != before.version:
                raise Aborted(
                    "the subscription changed while the plan change was being checked; try again",
                    reason="SUBSCRIPTION_CHANGED",
                )
            change = await self._plan_change(current, target, at_period_end, now, check_usage=False)
            saved = await store.put_subscription(
                organization_id, session=session, values=_values(change.after), now=now
            )
            await store.record_change(
                session=session,
                organization_id=organization_id,
                request_id=request_id,
                from_plan=change.from_plan,
                to_plan=change.to_plan,
                at_period_end=change.at_period_end,
                amount_due=change.proration.amount_due,
                change=convert.change_to_proto(change).SerializeToString(deterministic=True),
                now=now,
            )
        after = self._current(organization_id, saved)
        await self._announce(saved)
        return after, change

    async def cancel(self, organization_id: str, immediately: bool, now: datetime | None = None) -> Current:
        """Cancel the paid subscription at the end of its period, or now (a pending change is withdrawn)."""
        now = now or utcnow()
        await self.plans()
        async with self.sessions.begin() as session:
            await store.lock_organization(organization_id, session=session)
            record = await store.get_subscription(organization_id, session=session, for_update=True)
            current = self._current(organization_id, record)
            try:
                state = lifecycle.on_cancel(current.state, now, immediately=immediately)
            except lifecycle.TransitionError as error:
                raise FailedPrecondition(str(error), reason="NOTHING_TO_CANCEL") from None
            after = dataclasses.replace(current, state=state, pending=None)
            saved = await store.put_subscription(organization_id, session=session, values=_values(after), now=now)
        await self._announce(saved)
        return self._current(organization_id, saved)

    async def grant(
        self,
        organization_id: str,
        plan_id: str,
        *,
        period_end: datetime | None,
        reason: str,
        now: datetime | None = None,
    ) -> Current:
        """Put the organization on `plan_id` without payment (operators): at once, without a usage check, until
        `period_end` (then Free) or with no end. The grant earns no credit; its reason goes to the ledger."""
        now = now or utcnow()
        target = await self.plan(plan_id)
        if period_end is not None and period_end <= now:
            raise InvalidArgument.field("period_end_time", "must be in the future", reason="GRANT_ALREADY_ENDED")
        if not reason.strip():
            raise InvalidArgument.field("reason", "must say why the plan is granted", reason="GRANT_REASON_MISSING")
        async with self.sessions.begin() as session:
            await store.lock_organization(organization_id, session=session)
            record = await store.get_subscription(organization_id, session=session, for_update=True)
            current = self._current(organization_id, record)
            state = lifecycle.granted(target.id, target.paid, now, period_end)
            after = dataclasses.replace(current, state=state, pending=None, period_paid=0)
            change = Change(current, after, current.state.plan, target.id, no_charge(current.credit), now, False)
            saved = await store.put_subscription(organization_id, session=session, values=_values(after), now=now)
            await store.record_change(
                session=session,
                organization_id=organization_id,
                request_id="",
                from_plan=change.from_plan,
                to_plan=change.to_plan,
                at_period_end=False,
                amount_due=0,
                change=convert.change_to_proto(change).SerializeToString(deterministic=True),
                now=now,
                reason=f"granted: {reason.strip()}",
            )
        log.info(
            "plan granted",
            extra={"organization": organization_id, "plan": target.id, "until": period_end, "reason": reason},
        )
        await self._announce(saved)
        return self._current(organization_id, saved)

    # ------------------------------------------------------------ provider events

    async def handle_event(
        self, provider_name: str, payload: bytes, headers: Mapping[str, str], now: datetime | None = None
    ) -> tuple[ProviderEvent, bool, bool]:
        """Verify and apply one webhook delivery: (event, duplicate, ignored)."""
        now = now or utcnow()
        provider = self.providers.get(provider_name)
        if provider is None:
            raise InvalidArgument.field(
                "provider", f"unknown payment provider {provider_name!r}", reason="UNKNOWN_PROVIDER"
            )
        event = provider.parse(payload, headers, now.timestamp())
        await self.plans()
        organization_id = await self._event_organization(event)
        if organization_id is None:
            async with self.sessions.begin() as session:
                fresh = await store.record_event(
                    event.provider, event.event_id, session=session, type_=event.type, outcome="ignored", now=now
                )
            return event, not fresh, True
        async with self.sessions.begin() as session:
            await store.lock_organization(organization_id, session=session)
            if not await store.record_event(
                event.provider, event.event_id, session=session, type_=event.type, outcome="received", now=now
            ):
                return event, True, False
            record = await store.get_subscription(organization_id, session=session, for_update=True)
            values = self._apply(event, record, organization_id)
            if values is None:
                return event, False, True
            saved = await store.put_subscription(organization_id, session=session, values=values, now=now)
        await self._announce(saved)
        return event, False, False

    async def _event_organization(self, event: ProviderEvent) -> str | None:
        """The organization an event is about; None when it names none we can know (acknowledged, ignored)."""
        if event.subscription is not None:
            snapshot = event.subscription
            if snapshot.organization:
                return self._named_organization(snapshot.organization, event)
            async with self.sessions.begin() as session:
                found = await store.find_by_provider_subscription(
                    event.provider, snapshot.subscription_id, session=session
                )
            return found.organization_id if found is not None else None
        if event.invoice is not None:
            async with self.sessions.begin() as session:
                found = await store.find_by_provider_subscription(
                    event.provider, event.invoice.subscription_id, session=session
                )
            if found is not None:
                return found.organization_id
            # A new subscription's first invoice can name its organization (the payment of a pending change);
            # whether it can be applied is decided under the organization's lock.
            named = self._named_organization(event.invoice.organization, event) if event.invoice.organization else None
            if named is None:
                raise self._unknown_subscription()
            return named
        return None

    @staticmethod
    def _named_organization(name: str, event: ProviderEvent) -> str | None:
        try:
            return names.organization_id(name, field="metadata.qrmesh_organization")
        except InvalidArgument:
            log.warning("provider event names no valid organization", extra={"event": event.event_id})
            return None

    @staticmethod
    def _unknown_subscription() -> FailedPrecondition:
        # Perhaps its subscription's event has not arrived yet: refuse, so the provider delivers it again.
        return FailedPrecondition("the invoice's subscription is not known yet", reason="UNKNOWN_PROVIDER_SUBSCRIPTION")

    def _apply(
        self, event: ProviderEvent, record: store.SubscriptionRecord | None, organization_id: str
    ) -> dict[str, Any] | None:
        """The columns an event sets, or None when it changes nothing (stale, incomplete, or a plan we do not
        sell)."""
        if record is not None and record.provider_event_at is not None and event.created < record.provider_event_at:
            return None  # older than what was applied: events may arrive out of order
        current = self._current(organization_id, record)
        if event.invoice is not None:
            return self._apply_invoice(event, event.invoice, record, current)
        snapshot = event.subscription
        if snapshot is None:
            return None
        state = current.state
        pending = current.pending
        period_paid = current.period_paid
        if snapshot.deleted:
            state = lifecycle.on_deleted(state, snapshot.ended_at or event.created)
            pending = None
        else:
            plan = self._plans.get(snapshot.plan)
            if plan is None:
                log.warning("provider subscription is on a plan qrmesh does not sell", extra={"plan": snapshot.plan})
                return None
            status = snapshot.status
            if status is None:
                # A status that grants nothing here (Stripe's `incomplete`: its first payment has not gone
                # through). Only the organization's own live subscription at this provider keeps its status.
                live_here = (
                    record is not None
                    and state.status in lifecycle.LIVE
                    and record.provider == event.provider
                    and record.provider_subscription_id == snapshot.subscription_id
                )
                if not live_here:
                    return None
                status = state.status
            past_due_since, grace_until = state.past_due_since, state.grace_until
            if status is Status.PAST_DUE and state.status is not Status.PAST_DUE:
                past_due_since, grace_until = event.created, event.created + self.config.grace
            elif status is not Status.PAST_DUE:
                past_due_since = grace_until = None
            if status is Status.TRIALING:
                period_paid = 0
            elif status is Status.ACTIVE and (plan.id != state.plan or snapshot.period_start != state.period_start):
                # The provider only makes a subscription active once its period is paid.
                period_paid = plan.price_minor
            if pending is not None and pending.plan == plan.id and status in (Status.ACTIVE, Status.TRIALING):
                pending = None  # the provider confirms it
            state = dataclasses.replace(
                state,
                plan=plan.id,
                paid=plan.paid,
                status=status,
                period_start=snapshot.period_start,
                period_end=snapshot.period_end,
                cancel_at_period_end=snapshot.cancel_at_period_end,
                scheduled_plan=None,
                scheduled_plan_paid=False,
                trial_end=snapshot.trial_end if status is Status.TRIALING else None,
                past_due_since=past_due_since,
                grace_until=grace_until,
                ended_at=snapshot.ended_at if status is Status.CANCELED else None,
            )
        after = dataclasses.replace(current, state=state, pending=pending, period_paid=period_paid)
        return {
            **_values(after),
            "provider": event.provider,
            "provider_customer_id": snapshot.customer_id or None,
            "provider_subscription_id": snapshot.subscription_id or None,
            "provider_event_at": event.created,
        }

    def _apply_invoice(
        self,
        event: ProviderEvent,
        invoice: InvoiceOutcome,
        record: store.SubscriptionRecord | None,
        current: Current,
    ) -> dict[str, Any] | None:
        """An invoice paid (a pending change's payment, or a renewal) or failed."""
        state = current.state
        known = record is not None and record.provider_subscription_id == invoice.subscription_id
        pending = current.pending
        pays_pending = (
            invoice.paid
            and pending is not None
            and not invoice.renewal
            and invoice.currency in ("", current.currency)
            and invoice.amount_paid >= pending.amount_due
        )
        if pays_pending:
            assert pending is not None  # noqa: S101 - `pays_pending` says so
            if not pending.applies_to(state):
                log.warning(
                    "a pending plan change was paid after it stopped applying; it is withdrawn",
                    extra={"organization": current.organization_id, "plan": pending.plan, "event": event.event_id},
                )
                after = dataclasses.replace(current, pending=None)
            else:
                period = (
                    (invoice.period_start, invoice.period_end)
                    if invoice.period_start is not None and invoice.period_end is not None
                    else None
                )
                confirmed = lifecycle.confirm(state, pending, at=event.created, period=period)
                paid_before = 0 if pending.period_end is None else current.period_paid
                after = dataclasses.replace(
                    current,
                    state=confirmed,
                    credit=max(current.credit - pending.credit_applied, 0),
                    pending=None,
                    period_paid=paid_before + pending.amount_due + pending.credit_applied,
                )
                log.info(
                    "pending plan change paid",
                    extra={"organization": current.organization_id, "plan": pending.plan, "event": event.event_id},
                )
            values = {**_values(after), "provider": event.provider, "provider_event_at": event.created}
            if invoice.subscription_id and not known:
                values["provider_subscription_id"] = invoice.subscription_id
            return values
        if not known:
            # Named only by its metadata, and not the payment of a pending change: wait for the subscription.
            raise self._unknown_subscription()
        if pending is not None and not invoice.renewal:
            return None  # not (enough for) the pending change, and not a renewal: the plan is untouched
        if invoice.paid:
            if invoice.period_start is None or invoice.period_end is None:
                return None
            same_period = (invoice.period_start, invoice.period_end) == (state.period_start, state.period_end)
            renewed = lifecycle.on_payment_succeeded(state, invoice.period_start, invoice.period_end)
            paid = current.period_paid + invoice.amount_paid if same_period else invoice.amount_paid
            after = dataclasses.replace(current, state=renewed, period_paid=paid)
        else:
            after = dataclasses.replace(
                current, state=lifecycle.on_payment_failed(state, event.created, self.config.grace)
            )
        return {**_values(after), "provider_event_at": event.created}

    # ------------------------------------------------------------ the job

    async def advance(
        self, now: datetime | None = None, *, limit: int = JOB_BATCH, organizations: Sequence[str] | None = None
    ) -> list[str]:
        """Apply every time-driven move due at `now` (ends, scheduled changes, unpaid periods, grace), the longest
        overdue first, only among `organizations` when given; the ids of the organizations that changed."""
        now = now or utcnow()
        await self.plans()
        async with self.sessions.begin() as session:
            due = await store.due_organizations(now, session=session, limit=limit, organizations=organizations)
        changed: list[str] = []
        for organization_id in due:
            async with self.sessions.begin() as session:
                await store.lock_organization(organization_id, session=session)
                record = await store.get_subscription(organization_id, session=session, for_update=True)
                if record is None:
                    continue
                current = self._current(organization_id, record)
                following = lifecycle.advance(current.state, now, self.config.grace)
                if following == current.state:
                    # Due (or stored as due by an older rule) with nothing to do: look again when it is due.
                    upcoming = lifecycle.next_due(following)
                    await store.set_next_due(
                        organization_id, upcoming if upcoming is not None and upcoming > now else None, session=session
                    )
                    continue
                after = dataclasses.replace(current, state=following)
                saved = await store.put_subscription(organization_id, session=session, values=_values(after), now=now)
            changed.append(organization_id)
            log.info(
                "subscription advanced",
                extra={"organization": organization_id, "status": saved.status.value, "plan": saved.plan_id},
            )
            await self._announce(saved)
        return changed

    async def reconcile_suspended(self) -> int:
        """Bring the lapses in Redis in line with the database (heals lost announcements and Redis restarts);
        how many entries were out of date."""

        async def load() -> dict[str, tuple[int, bool]]:
            async with self.sessions.begin() as session:
                found = await store.organizations_by_lapse(session=session)
            return {names.organization_name(organization): entry for organization, entry in found.items()}

        return await signals.reconcile_suspended(self.redis, load)

    async def run_job(self, now: datetime | None = None, *, organizations: Sequence[str] | None = None) -> bool:
        """One round of the background job, unless another replica is running one (then False). `organizations`
        limits the time-driven moves to those (tests share one database)."""
        now = now or utcnow()
        async with self.sessions.begin() as guard:
            # Held until this transaction ends: the whole round.
            if not await store.try_lock_job(session=guard):
                log.debug("another replica is running the billing job")
                return False
            await self.load_plans()
            await self.advance(now, organizations=organizations)
            async with self.sessions.begin() as session:
                await store.prune_changes(session=session, before=now - REQUEST_ID_TTL)
            try:
                await self.reconcile_suspended()
            except (RedisError, OSError) as exc:
                log.warning("could not rewrite the lapsed organizations", extra={"error": repr(exc)})
        return True

    async def _announce(self, saved: store.SubscriptionRecord) -> None:
        try:
            await signals.announce_change(
                self.redis,
                names.organization_name(saved.organization_id),
                lapsed=saved.status.lapsed,
                version=saved.version,
            )
        except (RedisError, OSError) as exc:
            # Caches expire within a minute and the job rewrites the lapses.
            log.warning("could not announce a subscription change", extra={"error": repr(exc)})
