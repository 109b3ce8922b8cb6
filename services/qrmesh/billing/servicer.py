"""BillingService and EntitlementService: translate protos to `Billing` calls and back. No rules here."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc

from qrmesh.billing import convert, names
from qrmesh.billing.service import Billing
from qrmesh.billing.v1 import billing_pb2, billing_service_pb2, billing_service_pb2_grpc
from qrmesh.platform.auth import current_principal
from qrmesh.platform.errors import InvalidArgument, PermissionDenied

Context = grpc.aio.ServicerContext[Any, Any]
svc = billing_service_pb2

MAX_WEBHOOK_BYTES = 512 * 1024


def _in_scope(organization: str) -> str:
    """`organization` (an id), which must be the one the guard let the caller into."""
    if current_principal().organization != names.organization_name(organization):
        raise PermissionDenied("the request is not scoped to this organization")
    return organization


def _headers(context: Context) -> dict[str, str]:
    """The call's metadata (the edge passes HTTP headers through as metadata), lower-case names."""
    return {key.lower(): value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """gRPC face of plans, subscriptions and provider events."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def ListPlans(self, request: svc.ListPlansRequest, context: Context) -> svc.ListPlansResponse:
        return svc.ListPlansResponse(plans=[convert.plan_to_proto(plan) for plan in await self.billing.plans()])

    async def GetSubscription(self, request: svc.GetSubscriptionRequest, context: Context) -> billing_pb2.Subscription:
        organization = _in_scope(names.subscription_organization(request.name, field="name"))
        return convert.subscription_to_proto(await self.billing.subscription(organization))

    async def PreviewPlanChange(
        self, request: svc.PreviewPlanChangeRequest, context: Context
    ) -> billing_pb2.PlanChange:
        organization = _in_scope(names.subscription_organization(request.name, field="name"))
        plan = names.plan_id(request.plan, field="plan")
        return convert.change_to_proto(await self.billing.preview(organization, plan, request.at_period_end))

    async def ChangePlan(self, request: svc.ChangePlanRequest, context: Context) -> svc.ChangePlanResponse:
        organization = _in_scope(names.subscription_organization(request.name, field="name"))
        plan = names.plan_id(request.plan, field="plan")
        current, change = await self.billing.change_plan(organization, plan, request.at_period_end, request.request_id)
        answer = svc.ChangePlanResponse(subscription=convert.subscription_to_proto(current))
        if isinstance(change, bytes):
            answer.change.ParseFromString(change)  # a repeated request id: the first change, as it was answered
        else:
            answer.change.CopyFrom(convert.change_to_proto(change))
        return answer

    async def CancelSubscription(
        self, request: svc.CancelSubscriptionRequest, context: Context
    ) -> billing_pb2.Subscription:
        organization = _in_scope(names.subscription_organization(request.name, field="name"))
        return convert.subscription_to_proto(await self.billing.cancel(organization, request.immediately))

    async def HandleProviderEvent(
        self, request: svc.HandleProviderEventRequest, context: Context
    ) -> svc.HandleProviderEventResponse:
        payload = request.body.data
        if len(payload) > MAX_WEBHOOK_BYTES:
            raise InvalidArgument.field("body", f"is larger than {MAX_WEBHOOK_BYTES} bytes", reason="WEBHOOK_TOO_LARGE")
        event, duplicate, ignored = await self.billing.handle_event(request.provider, payload, _headers(context))
        return svc.HandleProviderEventResponse(event_id=event.event_id, duplicate=duplicate, ignored=ignored)


class BillingAdminServicer(billing_service_pb2_grpc.BillingAdminServiceServicer):
    """Operators' plan grants (internal: callers hold the mesh's service secret)."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def GrantPlan(self, request: svc.GrantPlanRequest, context: Context) -> billing_pb2.Subscription:
        organization = names.organization_id(request.organization, field="organization")
        plan = names.plan_id(request.plan, field="plan")
        until = request.period_end_time.ToDatetime(UTC) if request.HasField("period_end_time") else None
        granted = await self.billing.grant(organization, plan, period_end=until, reason=request.reason)
        return convert.subscription_to_proto(granted)


class EntitlementServicer(billing_service_pb2_grpc.EntitlementServiceServicer):
    """What other services ask about an organization's plan."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def GetEntitlements(
        self, request: svc.GetEntitlementsRequest, context: Context
    ) -> billing_pb2.OrganizationEntitlements:
        organization = names.organization_id(request.organization, field="organization")
        return convert.entitlements_to_proto(await self.billing.entitlements(organization))

    async def CheckEntitlement(
        self, request: svc.CheckEntitlementRequest, context: Context
    ) -> svc.CheckEntitlementResponse:
        organization = names.organization_id(request.organization, field="organization")
        outcome, plan = await self.billing.check(
            organization, request.entitlement, usage=request.usage, requested=request.requested or 1
        )
        kind = billing_pb2.Entitlement.Kind.Value(outcome.kind.value) if outcome.kind else 0
        return svc.CheckEntitlementResponse(
            allowed=outcome.allowed,
            kind=kind,  # type: ignore[arg-type]
            limit=outcome.limit or 0,
            unlimited=outcome.kind is not None and outcome.kind.value == "LIMIT" and outcome.limit is None,
            usage=outcome.usage,
            plan=names.plan_name(plan),
        )
