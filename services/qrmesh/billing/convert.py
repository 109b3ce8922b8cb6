"""Billing's domain objects as protos and back (shared by the servicers, the ledger and the client)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from qrmesh.billing import names, store
from qrmesh.billing.domain.entitlements import EntitlementSet, Grant, Kind, Status
from qrmesh.billing.domain.lifecycle import Change, Current
from qrmesh.billing.v1 import billing_pb2

Proto = billing_pb2.Entitlement
SubscriptionProto = billing_pb2.Subscription


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def grant_to_proto(grant: Grant) -> billing_pb2.Entitlement:
    """The API's view of one entitlement."""
    if grant.kind is Kind.FEATURE:
        return Proto(name=grant.name, kind=Proto.FEATURE, enabled=grant.enabled, description=grant.description)
    return Proto(
        name=grant.name,
        kind=Proto.LIMIT,
        enabled=True,
        limit=grant.limit or 0,
        unlimited=grant.limit is None,
        description=grant.description,
    )


def grant_from_proto(entitlement: billing_pb2.Entitlement) -> Grant:
    """An entitlement as the domain checks it (an unknown kind grants nothing)."""
    if entitlement.kind == Proto.FEATURE:
        return Grant.feature(entitlement.name, entitlement.enabled, entitlement.description)
    if entitlement.kind == Proto.LIMIT:
        return Grant.quantity(
            entitlement.name, None if entitlement.unlimited else entitlement.limit, entitlement.description
        )
    return Grant.feature(entitlement.name, False, entitlement.description)


def plan_to_proto(plan: store.PlanRecord) -> billing_pb2.Plan:
    """The API's view of a plan."""
    return billing_pb2.Plan(
        name=names.plan_name(plan.id),
        display_name=plan.display_name,
        description=plan.description,
        price_minor_units=plan.price_minor,
        currency_code=plan.currency,
        rank=plan.rank,
        entitlements=[grant_to_proto(grant) for grant in plan.grants],
    )


def status_to_proto(status: Status) -> SubscriptionProto.Status.ValueType:
    return SubscriptionProto.Status.Value(status.value)


def entitlements_to_proto(entitlements: EntitlementSet) -> billing_pb2.OrganizationEntitlements:
    """What GetEntitlements answers (and the client caches)."""
    return billing_pb2.OrganizationEntitlements(
        organization=entitlements.organization,
        plan=names.plan_name(entitlements.plan),
        status=status_to_proto(entitlements.status),
        lapsed=entitlements.lapsed,
        entitlements=[grant_to_proto(grant) for grant in entitlements.grants.values()],
        version=entitlements.version,
    )


def entitlements_from_proto(answer: billing_pb2.OrganizationEntitlements) -> EntitlementSet:
    """A cached GetEntitlements answer as the domain checks it."""
    status = SubscriptionProto.Status.Name(answer.status) if answer.status else Status.ACTIVE.value
    return EntitlementSet.of(
        answer.organization,
        answer.plan.removeprefix("plans/"),
        [grant_from_proto(entitlement) for entitlement in answer.entitlements],
        status=Status(status),
        lapsed=answer.lapsed,
        version=answer.version,
    )


def subscription_to_proto(current: Current) -> billing_pb2.Subscription:
    """The API's view of a subscription (Free when the organization never subscribed)."""
    state = current.state
    proto = SubscriptionProto(
        name=names.subscription_name(current.organization_id),
        plan=names.plan_name(state.plan),
        status=status_to_proto(state.status),
        cancel_at_period_end=state.cancel_at_period_end,
        lapsed=state.lapsed,
        credit_balance_minor_units=current.credit,
        currency_code=current.currency,
        provider=current.provider,
    )
    for field, moment in (
        ("current_period_start_time", state.period_start),
        ("current_period_end_time", state.period_end),
        ("grace_end_time", state.grace_until if state.status is Status.PAST_DUE else None),
        ("trial_end_time", state.trial_end if state.status is Status.TRIALING else None),
        ("update_time", current.updated_at),
    ):
        if moment is not None:
            getattr(proto, field).CopyFrom(timestamp(moment))
    if state.scheduled_plan is not None:
        proto.scheduled_change.plan = names.plan_name(state.scheduled_plan)
        if state.period_end is not None:
            proto.scheduled_change.effective_time.CopyFrom(timestamp(state.period_end))
    pending = current.pending
    if pending is not None and pending.applies_to(state):
        proto.pending_change.plan = names.plan_name(pending.plan)
        proto.pending_change.amount_due_minor_units = pending.amount_due
        proto.pending_change.credit_applied_minor_units = pending.credit_applied
        proto.pending_change.create_time.CopyFrom(timestamp(pending.requested_at))
    return proto


def change_to_proto(change: Change) -> billing_pb2.PlanChange:
    """The API's view of a plan change and its proration."""
    proration = change.proration
    return billing_pb2.PlanChange(
        from_plan=names.plan_name(change.from_plan),
        to_plan=names.plan_name(change.to_plan),
        effective_time=timestamp(change.effective),
        at_period_end=change.at_period_end,
        lines=[
            billing_pb2.PlanChange.Line(
                description=line.description,
                amount_minor_units=line.amount,
                start_time=timestamp(line.start),
                end_time=timestamp(line.end),
            )
            for line in proration.lines
        ],
        total_minor_units=proration.total,
        credit_applied_minor_units=proration.credit_applied,
        amount_due_minor_units=proration.amount_due,
        credit_balance_minor_units=proration.balance,
        currency_code=change.after.currency,
        awaiting_payment=change.awaiting_payment,
    )
