"""Plans and their limits over real gRPC against real PostgreSQL and Redis: an organization walks from Free to
Pro (paid through a signed provider webhook) to a refused downgrade, hits each limit, lapses (the real redirect
answers "paused") and renews through signed provider webhooks; nothing paid is granted before it is paid and no
credit comes from a period nobody paid for. Time is driven through the billing service's clock parameter, never by
waiting, and the job is only ever driven for the test's own organizations."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import sqlalchemy as sa

from qrmesh.auth.v1 import policy_pb2
from qrmesh.billing import signals, store
from qrmesh.billing.client import STALE_IF_ERROR, BillingClient, PlanGatedAccess, require_feature
from qrmesh.billing.domain.entitlements import API_ACCESS, RULES_PASSWORD, Status
from qrmesh.billing.server import billing_for
from qrmesh.billing.service import Billing
from qrmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from qrmesh.identity.client import RemoteAccessBackend
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.errors import Aborted, FailedPrecondition, Unavailable
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.v1 import design_pb2, qr_code_service_pb2, stored_qr_code_pb2
from qrmesh.scans.v1 import scan_event_pb2
from tests.conftest import SERVICE_SECRET
from tests.integration.billing_helpers import (
    Subscription,
    error_info,
    grant,
    paid_subscription,
    recorded_event,
    service_metadata,
    stripe_header,
    webhook_request,
)
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, TcpProxy, api_key, api_key_metadata, dynamic, static
from tests.integration.test_redirect import events_for

svc = billing_service_pb2
T = TypeVar("T")


@pytest.fixture(scope="module")
async def identity(identity_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
async def billing(billing_server: Server) -> AsyncIterator[billing_service_pb2_grpc.BillingServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing_server.port}") as channel:
        yield billing_service_pb2_grpc.BillingServiceStub(channel)


@pytest.fixture(scope="module")
def qr(qr_channel: grpc.aio.Channel) -> Clients:
    return Clients.on(qr_channel)


@pytest.fixture
async def owner(identity: grpc.aio.Channel) -> Account:
    """The owner of a new organization (on Free)."""
    return await sign_up(identity, "billing")


@pytest.fixture
def service(billing_server: Server) -> Billing:
    """The billing service's operations, to drive its clock and its job."""
    return billing_for(billing_server.resources)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, within: float = 10.0) -> T:
    """Poll `check` until it answers something (announcements travel through Redis pub/sub)."""
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)


def subscription_name(account: Account) -> str:
    return f"{account.organization}/subscription"


def org_id(account: Account) -> str:
    return account.organization.removeprefix("organizations/")


def password_code(url: str = "https://example.com/secret") -> stored_qr_code_pb2.QrCode:
    code = dynamic(url)
    code.rules.password = "open sesame 42"
    return code


async def view(billing: billing_service_pb2_grpc.BillingServiceAsyncStub, account: Account) -> Any:
    return await billing.GetSubscription(
        svc.GetSubscriptionRequest(name=subscription_name(account)), metadata=account.metadata()
    )


async def change(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    account: Account,
    plan: str,
    *,
    request_id: str = "",
    at_period_end: bool = False,
) -> billing_service_pb2.ChangePlanResponse:
    answer: billing_service_pb2.ChangePlanResponse = await billing.ChangePlan(
        svc.ChangePlanRequest(
            name=subscription_name(account), plan=f"plans/{plan}", request_id=request_id, at_period_end=at_period_end
        ),
        metadata=account.metadata(),
    )
    return answer


async def entitled_plan(billing_server: Server, account: Account) -> str:
    """The plan whose entitlements the organization gets, as other services ask (EntitlementService)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing_server.port}") as channel:
        answer = await billing_service_pb2_grpc.EntitlementServiceStub(channel).GetEntitlements(
            svc.GetEntitlementsRequest(organization=account.organization), metadata=service_metadata()
        )
    return answer.plan


# ---------------------------------------------------------------- provider events


async def send(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub, payload: bytes, header: str | None = None
) -> billing_service_pb2.HandleProviderEventResponse:
    answer: billing_service_pb2.HandleProviderEventResponse = await billing.HandleProviderEvent(
        webhook_request(payload), metadata=(("stripe-signature", stripe_header(payload) if header is None else header),)
    )
    return answer


def event(name: str, account: Account, *, subscription: str, created: int, **values: Any) -> bytes:
    now = int(time.time())
    fields = {
        "event_id": f"evt_{name.replace('.', '_')}_{created}_{subscription[-8:]}",
        "created": created,
        "customer": f"cus_{subscription[-8:]}",
        "subscription": subscription,
        "organization": account.organization,
        "plan": "pro",
        "period_start": now - 86400,
        "period_end": now + 29 * 86400,
        "status": "active",
        "cancel_at_period_end": "false",
        "ended_at": created,
        "amount_paid": 1900,
        "billing_reason": "subscription_cycle",
        **values,
    }
    return recorded_event(name, **fields)


async def pay(
    service: Billing,
    account: Account,
    *,
    subscription: str,
    amount: int,
    at: datetime,
    period: tuple[datetime, datetime],
    reason: str = "subscription_create",
) -> bool:
    """The provider's `invoice.paid` for `amount`, delivered at `at` (the billing clock); whether it was applied."""
    stamp = int(at.timestamp())
    payload = event(
        "invoice.paid",
        account,
        subscription=subscription,
        created=stamp,
        event_id=f"evt_paid_{subscription}_{stamp}_{amount}",
        amount_paid=amount,
        billing_reason=reason,
        period_start=int(period[0].timestamp()),
        period_end=int(period[1].timestamp()),
    )
    header = {"stripe-signature": stripe_header(payload, timestamp=stamp)}
    _, duplicate, ignored = await service.handle_event("stripe", payload, header, now=at)
    assert not duplicate
    return not ignored


# ---------------------------------------------------------------- plans


async def test_plans_are_public_seeded_data(billing: billing_service_pb2_grpc.BillingServiceAsyncStub) -> None:
    plans = (await billing.ListPlans(svc.ListPlansRequest())).plans
    assert [(p.name, p.price_minor_units, p.currency_code) for p in plans] == [
        ("plans/free", 0, "USD"),
        ("plans/pro", 1900, "USD"),
        ("plans/business", 4900, "USD"),
        ("plans/enterprise", 14900, "USD"),
    ]
    grants = {plan.name: {e.name: e for e in plan.entitlements} for plan in plans}
    assert grants["plans/free"]["dynamic_codes"].limit == 10
    assert grants["plans/pro"]["dynamic_codes"].limit == 500
    assert grants["plans/business"]["dynamic_codes"].unlimited
    assert not grants["plans/free"]["rules.password"].enabled
    assert grants["plans/pro"]["api_access"].enabled
    assert grants["plans/business"]["bulk_rows"].limit == 100_000
    assert grants["plans/enterprise"]["sso"].enabled
    assert not grants["plans/business"]["sso"].enabled
    assert all(len(plan.entitlements) == len(plans[0].entitlements) for plan in plans)


# ---------------------------------------------------------------- the walk


async def test_free_to_pro_to_a_refused_downgrade(
    qr: Clients, billing: billing_service_pb2_grpc.BillingServiceAsyncStub, owner: Account
) -> None:
    # Free: ten dynamic codes, no passwords, no full design.
    error = await rpc_error(qr.create(owner, password_code()))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.PERMISSION_DENIED, "FEATURE_NOT_IN_PLAN")
    assert dict(error_info(error).metadata) == {"entitlement": "rules.password", "plan": "free"}
    logo = static(design=design_pb2.Design(frame=design_pb2.Design.Frame(style=design_pb2.Design.Frame.BOX)))
    error = await rpc_error(qr.create(owner, logo))
    assert error_info(error).metadata["entitlement"] == "design.full"
    codes = [await qr.create(owner, dynamic(f"https://example.com/{i}")) for i in range(10)]
    # ...and on update too.
    with_password = stored_qr_code_pb2.QrCode(name=codes[0].name)
    with_password.rules.password = "open sesame 42"
    error = await rpc_error(qr.update(owner, with_password, ["rules.password"]))
    assert error_info(error).reason == "FEATURE_NOT_IN_PLAN"
    error = await rpc_error(qr.create(owner, dynamic("https://example.com/eleventh")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "PLAN_LIMIT_REACHED"
    assert dict(info.metadata) == {"entitlement": "dynamic_codes", "limit": "10", "usage": "10", "plan": "free"}
    assert (await qr.create(owner, static())).name  # static codes are not limited
    free = await view(billing, owner)
    assert (free.plan, free.status, free.lapsed) == ("plans/free", Subscription.ACTIVE, False)
    assert not free.HasField("current_period_end_time")

    # Pro costs a whole month, and nothing changes until it is paid.
    asked = await change(billing, owner, "pro")
    assert [line.amount_minor_units for line in asked.change.lines] == [1900]
    assert (asked.change.amount_due_minor_units, asked.change.currency_code) == (1900, "USD")
    assert asked.change.awaiting_payment
    assert (asked.subscription.plan, asked.subscription.status) == ("plans/free", Subscription.ACTIVE)
    assert (asked.subscription.pending_change.plan, asked.subscription.pending_change.amount_due_minor_units) == (
        "plans/pro",
        1900,
    )
    error = await rpc_error(qr.create(owner, dynamic("https://example.com/eleventh")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The provider confirms the payment: Pro, more codes and passwords at once.
    now = int(time.time())
    paid = event(
        "invoice.paid",
        owner,
        subscription=f"sub_walk_{org_id(owner)}",
        created=now,
        billing_reason="subscription_create",
        period_start=now,
        period_end=now + 30 * 86400,
    )
    assert not (await send(billing, paid)).ignored
    upgraded = await view(billing, owner)
    assert (upgraded.plan, upgraded.status, upgraded.provider) == ("plans/pro", Subscription.ACTIVE, "stripe")
    assert not upgraded.HasField("pending_change")
    assert upgraded.current_period_end_time.ToDatetime(UTC) == datetime.fromtimestamp(now + 30 * 86400, UTC)
    await qr.create(owner, dynamic("https://example.com/eleventh"))
    await qr.create(owner, password_code())
    assert (await qr.update(owner, with_password, ["rules.password"])).rules.password_protected

    # Back to Free does not fit: refused with the list of what is over, previewed or not.
    name = subscription_name(owner)
    for attempt in (
        billing.PreviewPlanChange(
            svc.PreviewPlanChangeRequest(name=name, plan="plans/free"), metadata=owner.metadata()
        ),
        billing.ChangePlan(svc.ChangePlanRequest(name=name, plan="plans/free"), metadata=owner.metadata()),
    ):
        error = await rpc_error(attempt)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(error)
        assert info.reason == "PLAN_LIMITS_EXCEEDED"
        assert dict(info.metadata) == {
            "plan": "free",
            "over": "dynamic_codes",
            "dynamic_codes.limit": "10",
            "dynamic_codes.usage": "12",
        }
        assert "dynamic_codes (12 in use, Free allows 10)" in (error.details() or "")
    # ...but it can wait for the end of the period.
    scheduled = await change(billing, owner, "free", at_period_end=True)
    assert scheduled.subscription.plan == "plans/pro"
    assert scheduled.subscription.scheduled_change.plan == "plans/free"
    assert scheduled.subscription.scheduled_change.effective_time == scheduled.subscription.current_period_end_time
    assert scheduled.change.at_period_end
    assert scheduled.change.amount_due_minor_units == 0
    # Changing to the current plan withdraws it.
    kept = await change(billing, owner, "pro")
    assert not kept.subscription.HasField("scheduled_change")
    assert kept.change.amount_due_minor_units == 0


async def test_two_creates_at_the_limit_cannot_both_pass(qr: Clients, owner: Account) -> None:
    for i in range(9):
        await qr.create(owner, dynamic(f"https://example.com/{i}"))
    outcomes = await asyncio.gather(
        *(qr.create(owner, dynamic(f"https://example.com/race/{i}")) for i in range(6)), return_exceptions=True
    )
    created = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert (len(created), len(refused)) == (1, 5)
    assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    listed = await qr.list(owner, kind=stored_qr_code_pb2.QrCode.DYNAMIC)
    assert listed.total_size == 10


async def test_a_repeated_request_id_charges_once(
    qr_server: Server, billing: billing_service_pb2_grpc.BillingServiceAsyncStub, owner: Account
) -> None:
    first = await change(billing, owner, "business", request_id="upgrade-1")
    again = await change(billing, owner, "business", request_id="upgrade-1")
    assert again.change == first.change
    assert (first.change.amount_due_minor_units, first.change.awaiting_payment) == (4900, True)
    assert (again.subscription.plan, again.subscription.pending_change.plan) == ("plans/free", "plans/business")


# ---------------------------------------------------------------- nothing unpaid is granted


async def test_a_members_upgrade_grants_nothing_until_it_is_paid(
    qr: Clients,
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    billing_server: Server,
    service: Billing,
    owner: Account,
) -> None:
    # An admin asks for Enterprise: it is recorded, and the organization stays on Free.
    asked = await change(billing, owner, "enterprise")
    assert (asked.change.awaiting_payment, asked.change.amount_due_minor_units) == (True, 14900)
    assert (asked.subscription.plan, asked.subscription.credit_balance_minor_units) == ("plans/free", 0)
    assert await entitled_plan(billing_server, owner) == "plans/free"
    error = await rpc_error(qr.create(owner, password_code()))
    assert error_info(error).reason == "FEATURE_NOT_IN_PLAN"
    # Enterprise then Free again leaves no credit: nothing was paid.
    back = await change(billing, owner, "free")
    assert (back.change.amount_due_minor_units, back.change.credit_balance_minor_units) == (0, 0)
    assert (back.subscription.plan, back.subscription.credit_balance_minor_units) == ("plans/free", 0)
    assert not back.subscription.HasField("pending_change")
    # Neither an underpaid invoice nor a renewal of a subscription nobody knows grants it (the provider is asked
    # to deliver them again later, when its subscription may be known).
    await change(billing, owner, "enterprise")
    now = datetime.now(UTC)
    subscription = f"sub_unpaid_{org_id(owner)}"
    month = (now, now + timedelta(days=30))
    for amount, reason in ((14899, "subscription_create"), (14900, "subscription_cycle")):
        with pytest.raises(FailedPrecondition) as caught:
            await pay(service, owner, subscription=subscription, amount=amount, at=now, period=month, reason=reason)
        assert caught.value.reason == "UNKNOWN_PROVIDER_SUBSCRIPTION"
    assert await entitled_plan(billing_server, owner) == "plans/free"
    # Paid in full: Enterprise, for the period the provider billed.
    assert await pay(
        service, owner, subscription=subscription, amount=14900, at=now + timedelta(seconds=2), period=month
    )
    paid = await view(billing, owner)
    assert (paid.plan, paid.status, paid.credit_balance_minor_units) == ("plans/enterprise", Subscription.ACTIVE, 0)
    assert paid.current_period_start_time.ToDatetime(UTC) == month[0].replace(microsecond=0)
    assert await entitled_plan(billing_server, owner) == "plans/enterprise"


async def test_an_incomplete_provider_subscription_grants_nothing(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub, billing_server: Server, owner: Account
) -> None:
    now = int(time.time())
    subscription = f"sub_incomplete_{org_id(owner)}"
    values = {"period_start": now, "period_end": now + 30 * 86400, "plan": "enterprise"}
    incomplete = event(
        "customer.subscription.created.incomplete", owner, subscription=subscription, created=now, **values
    )
    assert (await send(billing, incomplete)).ignored
    still = await view(billing, owner)
    assert (still.plan, still.status, still.provider) == ("plans/free", Subscription.ACTIVE, "")
    assert not still.HasField("current_period_end_time")
    assert await entitled_plan(billing_server, owner) == "plans/free"
    # Once the provider's subscription is live, an `incomplete` update of that very subscription keeps its status.
    active = event("customer.subscription.created", owner, subscription=subscription, created=now + 1, **values)
    assert not (await send(billing, active)).ignored
    update = event(
        "customer.subscription.updated",
        owner,
        subscription=subscription,
        created=now + 2,
        status="incomplete",
        cancel_at_period_end="true",
        **values,
    )
    assert not (await send(billing, update)).ignored
    live = await view(billing, owner)
    assert (live.plan, live.status, live.cancel_at_period_end) == ("plans/enterprise", Subscription.ACTIVE, True)


async def test_no_credit_from_a_period_nobody_paid_for(
    qr_server: Server,
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    billing_server: Server,
    owner: Account,
) -> None:
    # Granted without an end: a downgrade credits nothing, and an upgrade is a new period to pay.
    await grant(billing_server, owner.organization, "business")
    down = await change(billing, owner, "pro")
    assert (down.subscription.plan, down.change.total_minor_units, down.subscription.credit_balance_minor_units) == (
        "plans/pro",
        0,
        0,
    )
    up = await change(billing, owner, "enterprise")
    assert (up.change.awaiting_payment, up.change.amount_due_minor_units) == (True, 14900)
    assert (up.subscription.plan, up.subscription.pending_change.plan) == ("plans/pro", "plans/enterprise")
    assert (await view(billing, owner)).pending_change.amount_due_minor_units == 14900
    # Granted for a period: the unused time of the grant is worth nothing either way.
    await grant(billing_server, owner.organization, "enterprise", until=datetime.now(UTC) + timedelta(days=20))
    down = await change(billing, owner, "pro")
    assert (down.change.total_minor_units, down.subscription.credit_balance_minor_units) == (0, 0)
    assert [line.amount_minor_units for line in down.change.lines] == []
    up = await change(billing, owner, "business")
    assert up.change.awaiting_payment
    assert (await view(billing, owner)).pending_change.plan == "plans/business"
    assert [line.description for line in up.change.lines] == ["Remaining time on Business"]
    assert up.change.amount_due_minor_units == up.change.lines[0].amount_minor_units > 0
    free = await change(billing, owner, "free")
    assert (free.subscription.plan, free.subscription.credit_balance_minor_units) == ("plans/free", 0)


async def test_upgrades_cannot_wait_for_the_period_end(
    qr_server: Server, billing: billing_service_pb2_grpc.BillingServiceAsyncStub, owner: Account
) -> None:
    error = await rpc_error(change(billing, owner, "pro", at_period_end=True))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UPGRADE_AT_PERIOD_END")


# ---------------------------------------------------------------- grants


async def test_operators_grant_plans_with_a_service_token_only(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    billing_server: Server,
    service: Billing,
    owner: Account,
) -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=14)
    granted = await grant(billing_server, owner.organization, "business", until=until, reason="partner account")
    assert (granted.plan, granted.status, granted.scheduled_change.plan) == (
        "plans/business",
        Subscription.ACTIVE,
        "plans/free",
    )
    assert granted.scheduled_change.effective_time.ToDatetime(UTC) == until
    assert await entitled_plan(billing_server, owner) == "plans/business"
    async with service.sessions.begin() as session:
        reasons = await session.scalars(
            sa.select(store.plan_changes.c.reason).where(store.plan_changes.c.organization_id == org_id(owner))
        )
        assert list(reasons) == ["granted: partner account"]
    # At its end the organization is back on Free (not lapsed).
    assert await service.advance(until, organizations=[org_id(owner)]) == [org_id(owner)]
    after = await view(billing, owner)
    assert (after.plan, after.status, after.lapsed) == ("plans/free", Subscription.ACTIVE, False)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing_server.port}") as channel:
        admin = billing_service_pb2_grpc.BillingAdminServiceStub(channel)
        request = svc.GrantPlanRequest(organization=owner.organization, plan="plans/enterprise", reason="me")
        error = await rpc_error(admin.GrantPlan(request, metadata=owner.metadata()))
        assert (error.code(), error_info(error).reason) == (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_ONLY")
        past = svc.GrantPlanRequest(organization=owner.organization, plan="plans/pro", reason="late")
        past.period_end_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
        error = await rpc_error(admin.GrantPlan(past, metadata=service_metadata()))
        assert (error.code(), error_info(error).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "GRANT_ALREADY_ENDED")
        nowhere = svc.GrantPlanRequest(organization=owner.organization, plan="plans/platinum", reason="x")
        error = await rpc_error(admin.GrantPlan(nowhere, metadata=service_metadata()))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await entitled_plan(billing_server, owner) == "plans/free"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qrmesh.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_grants_a_plan(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub, billing_server: Server, owner: Account
) -> None:
    address = {"QRMESH_BILLING_ADDR": f"127.0.0.1:{billing_server.port}"}
    secret = {**address, "QRMESH_SERVICE_SECRET": SERVICE_SECRET}
    code, out, err = await run_cli("billing", "grant", owner.organization, "pro", "--reason", "ticket 42", env=secret)
    assert code == 0, err
    assert out.strip() == f"{subscription_name(owner)}: plans/pro (ACTIVE), no end"
    assert (await view(billing, owner)).plan == "plans/pro"
    code, _, err = await run_cli(
        "billing", "grant", org_id(owner), "business", env={**address, "QRMESH_SERVICE_SECRET": "not the secret"}
    )
    assert (code, "PERMISSION_DENIED" in err) == (1, True)
    code, _, err = await run_cli(
        "billing", "grant", org_id(owner), "business", env={**address, "QRMESH_SERVICE_SECRET": ""}
    )
    assert (code, "QRMESH_SERVICE_SECRET" in err) == (2, True)
    assert (await view(billing, owner)).plan == "plans/pro"


# ---------------------------------------------------------------- members and API keys


async def test_members_and_api_keys_follow_the_plan(
    identity: grpc.aio.Channel,
    qr: Clients,
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    billing_server: Server,
    owner: Account,
) -> None:
    organizations = identity_service_pb2_grpc.OrganizationServiceStub(identity)
    keys = identity_service_pb2_grpc.ApiKeyServiceStub(identity)
    invite = identity_service_pb2.CreateInvitationRequest(
        parent=owner.organization,
        invitation=identity_pb2.Invitation(email="teammate@example.com", role=policy_pb2.EDITOR),
    )
    new_key = identity_service_pb2.CreateApiKeyRequest(
        parent=owner.organization, api_key=identity_pb2.ApiKey(display_name="ci", scopes=["qr:read"])
    )
    error = await rpc_error(organizations.CreateInvitation(invite, metadata=owner.metadata()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error_info(error).metadata) == {
        "entitlement": "team_members",
        "limit": "1",
        "usage": "1",
        "plan": "free",
    }
    error = await rpc_error(keys.CreateApiKey(new_key, metadata=owner.metadata()))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.PERMISSION_DENIED, "FEATURE_NOT_IN_PLAN")

    await grant(billing_server, owner.organization, "business")
    invitation = await organizations.CreateInvitation(invite, metadata=owner.metadata())
    secret = (await keys.CreateApiKey(new_key, metadata=owner.metadata())).secret
    request = qr_code_service_pb2.ListQrCodesRequest(parent=owner.organization)
    assert (await qr.codes.ListQrCodes(request, metadata=api_key_metadata(secret))).total_size == 0

    # Pro has one seat: the pending invitation holds the second.
    error = await rpc_error(change(billing, owner, "pro"))
    assert dict(error_info(error).metadata)["over"] == "team_members"
    await organizations.DeleteInvitation(
        identity_service_pb2.DeleteInvitationRequest(name=invitation.invitation.name), metadata=owner.metadata()
    )
    assert (await change(billing, owner, "pro")).subscription.plan == "plans/pro"  # downgrades are self-service
    assert (await change(billing, owner, "free")).subscription.plan == "plans/free"

    # On Free the key stops working everywhere (once the change reaches the qr process).
    async def refused() -> grpc.aio.AioRpcError | None:
        try:
            await qr.codes.ListQrCodes(request, metadata=api_key_metadata(secret))
        except grpc.aio.AioRpcError as exc:
            return exc
        return None

    error = await eventually(refused, "the API key being refused")
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.PERMISSION_DENIED, "FEATURE_NOT_IN_PLAN")


async def test_api_keys_keep_working_on_the_last_known_plan_while_billing_is_away(
    identity: grpc.aio.Channel, identity_server: Server, billing_server: Server, owner: Account
) -> None:
    await grant(billing_server, owner.organization, "pro")
    secret = await api_key(identity, owner, "qr:read")
    proxy = TcpProxy("127.0.0.1", billing_server.port)
    await proxy.start()
    clock = [1000.0]
    plans = BillingClient(
        f"127.0.0.1:{proxy.listen_port}",
        service="tests",
        service_secret=SERVICE_SECRET,
        client=None,
        clock=lambda: clock[0],
    )
    access = PlanGatedAccess(
        RemoteAccessBackend(
            f"127.0.0.1:{identity_server.port}", service="tests", service_secret=SERVICE_SECRET, client=None
        ),
        plans,
    )
    other = await sign_up(identity, "stale-free")
    try:
        assert (await access.authenticate_api_key(secret)) is not None
        await plans.entitlements(other.organization)  # Free, known too
        await proxy.cut()
        clock[0] += 61  # every cache is gone; billing does not answer
        info = await access.authenticate_api_key(secret)
        assert info is not None
        assert info.organization == owner.organization
        await require_feature(plans, owner.organization, API_ACCESS)
        # A refusal needs a fresh answer: a stale "no" is UNAVAILABLE, never PERMISSION_DENIED.
        with pytest.raises(Unavailable) as caught:
            await require_feature(plans, other.organization, RULES_PASSWORD)
        assert caught.value.reason == "BILLING_UNAVAILABLE"
        # Bounded: after an hour the last known plan is no longer used.
        clock[0] += STALE_IF_ERROR
        with pytest.raises(Unavailable):
            await access.authenticate_api_key(secret)
    finally:
        await proxy.cut()
        await plans.close()
        await access.close()


# ---------------------------------------------------------------- proration, driven by the clock


async def test_mid_period_changes_are_prorated_to_the_cent_and_paid_before_they_apply(
    qr_server: Server, service: Billing, owner: Account
) -> None:
    organization = org_id(owner)
    today = datetime.now(UTC).replace(microsecond=0)
    start = datetime(today.year, today.month, 1, 12, tzinfo=UTC) - timedelta(days=1)  # the last day of a month
    _, first = await service.change_plan(organization, "pro", False, "", now=start)
    assert not isinstance(first, bytes)
    assert (first.awaiting_payment, first.proration.amount_due) == (True, 1900)
    end = first.proration.lines[0].end
    assert end.month != start.month  # a calendar month later, clamped to the shorter month's end
    subscription = f"sub_prorated_{organization}"
    assert await pay(service, owner, subscription=subscription, amount=1900, at=start, period=(start, end))
    pro = await service.subscription(organization)
    assert (pro.state.plan, pro.state.period_start, pro.state.period_end, pro.period_paid) == ("pro", start, end, 1900)

    at = start + timedelta(days=9, hours=7, minutes=13, seconds=5)
    _, up = await service.change_plan(organization, "business", False, "", now=at)
    assert not isinstance(up, bytes)
    period, left = Fraction(int((end - start).total_seconds())), Fraction(int((end - at).total_seconds()))

    def cents(price: int) -> int:
        exact = price * left / period
        return int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)

    assert [line.amount for line in up.proration.lines] == [-cents(1900), cents(4900)]
    assert up.proration.amount_due == cents(4900) - cents(1900)
    assert up.awaiting_payment
    assert (await service.subscription(organization)).state.plan == "pro"  # until the provider says it is paid
    due = up.proration.amount_due
    assert await pay(
        service, owner, subscription=subscription, amount=due, at=at, period=(at, end), reason="subscription_update"
    )
    business = await service.subscription(organization)
    assert (business.state.plan, business.state.period_end, business.period_paid) == ("business", end, 1900 + due)

    _, down = await service.change_plan(organization, "pro", False, "", now=at + timedelta(days=1))
    assert not isinstance(down, bytes)
    assert down.proration.total < 0
    assert down.after.credit == -down.proration.total <= 1900 + due  # never more than was paid
    assert down.proration.amount_due == 0
    assert not down.awaiting_payment
    # The credit pays the way back up: no payment needed, so it takes effect at once.
    _, again = await service.change_plan(organization, "business", False, "", now=at + timedelta(days=1))
    assert not isinstance(again, bytes)
    assert (again.awaiting_payment, again.proration.amount_due, again.after.state.plan) == (False, 0, "business")


# ---------------------------------------------------------------- downgrades: checked whenever they apply now


async def test_a_downgrade_that_cannot_wait_is_checked(
    qr: Clients, billing: billing_service_pb2_grpc.BillingServiceAsyncStub, billing_server: Server, owner: Account
) -> None:
    await grant(billing_server, owner.organization, "pro")
    for i in range(11):
        await qr.create(owner, dynamic(f"https://example.com/over/{i}"))
    # Past due on a period that already ended: at_period_end has no period end to wait for.
    now = int(time.time())
    past_due = event(
        "customer.subscription.updated",
        owner,
        subscription=f"sub_overdue_{org_id(owner)}",
        created=now,
        status="past_due",
        period_start=now - 31 * 86400,
        period_end=now - 86400,
    )
    assert not (await send(billing, past_due)).ignored
    error = await rpc_error(change(billing, owner, "free", at_period_end=True))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PLAN_LIMITS_EXCEEDED")
    assert (await view(billing, owner)).plan == "plans/pro"


async def test_a_plan_change_racing_another_change_is_aborted(
    qr_server: Server, billing_server: Server, service: Billing, owner: Account
) -> None:
    organization = org_id(owner)
    await grant(billing_server, owner.organization, "business")

    async def waiting_for_the_lock() -> bool | None:
        async with service.sessions.begin() as session:
            waiting = await session.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'"
                )
            )
        return True if waiting else None

    async with service.sessions.begin() as session:
        # Another change holds the organization's lock while the plan change checks usage against the version
        # it read; it commits a newer version before the plan change gets the lock.
        await store.lock_organization(organization, session=session)
        changing = asyncio.create_task(service.change_plan(organization, "pro", False, ""))
        await eventually(waiting_for_the_lock, "the plan change waiting for the lock")
        await session.execute(
            sa.update(store.subscriptions)
            .where(store.subscriptions.c.organization_id == organization)
            .values(version=store.subscriptions.c.version + 1)
        )
    with pytest.raises(Aborted) as caught:
        await changing
    assert caught.value.reason == "SUBSCRIPTION_CHANGED"
    assert (await service.subscription(organization)).state.plan == "business"
    # Asked again, it goes through.
    _, changed = await service.change_plan(organization, "pro", False, "")
    assert not isinstance(changed, bytes)
    assert changed.after.state.plan == "pro"


# ---------------------------------------------------------------- provider events


async def test_webhooks_are_verified_replays_refused_and_duplicates_applied_once(
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub, owner: Account
) -> None:
    subscription = f"sub_{org_id(owner)}"
    now = int(time.time())
    created = event("customer.subscription.created", owner, subscription=subscription, created=now)
    first = await send(billing, created)
    assert (first.duplicate, first.ignored) == (False, False)
    current = await view(billing, owner)
    assert (current.plan, current.status, current.provider) == ("plans/pro", Subscription.ACTIVE, "stripe")
    again = await send(billing, created)
    assert (again.event_id, again.duplicate) == (first.event_id, True)
    assert (await view(billing, owner)).update_time == current.update_time

    failed = event("invoice.payment_failed", owner, subscription=subscription, created=now + 1)
    for header, why in (
        (stripe_header(failed, secret="whsec_someone_else"), "WEBHOOK_SIGNATURE_INVALID"),
        (stripe_header(failed + b"\n"), "WEBHOOK_SIGNATURE_INVALID"),
        (stripe_header(failed, timestamp=now - 301), "WEBHOOK_TIMESTAMP_OUT_OF_WINDOW"),
        ("", "WEBHOOK_SIGNATURE_MISSING"),
    ):
        error = await rpc_error(send(billing, failed, header))
        assert (error.code(), error_info(error).reason) == (grpc.StatusCode.INVALID_ARGUMENT, why)
    assert (await view(billing, owner)).status == Subscription.ACTIVE  # nothing unsigned got through

    # An event older than the last applied one changes nothing (deliveries come in any order).
    stale = event(
        "customer.subscription.updated", owner, subscription=subscription, created=now - 60, status="past_due"
    )
    assert (await send(billing, stale)).ignored
    # An invoice of a subscription not known yet is refused so the provider sends it again later.
    orphan = event("invoice.paid", owner, subscription="sub_not_known_yet", created=now)
    error = await rpc_error(send(billing, orphan))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNKNOWN_PROVIDER_SUBSCRIPTION",
    )


async def test_a_lapsed_subscription_pauses_its_codes_until_it_renews(
    qr: Clients,
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    service: Billing,
    redirect_server: Server,
    owner: Account,
) -> None:
    subscription = f"sub_{org_id(owner)}"
    now = int(time.time())
    await send(billing, event("customer.subscription.created", owner, subscription=subscription, created=now))
    code = await qr.create(owner, password_code("https://example.com/paid-for"))
    plain = await qr.create(owner, dynamic("https://example.com/open"))
    base = f"http://127.0.0.1:{redirect_server.resources.ports['http']}"
    mine = [org_id(owner)]
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get(f"/r/{plain.short_code}")).status_code == 302

        # A payment fails: past due, still working during the grace period.
        await send(billing, event("invoice.payment_failed", owner, subscription=subscription, created=now + 1))
        current = await view(billing, owner)
        assert (current.status, current.lapsed) == (Subscription.PAST_DUE, False)
        assert current.grace_end_time.ToDatetime(UTC) == datetime.fromtimestamp(now + 1, UTC) + timedelta(days=7)
        assert await service.run_job(datetime.now(UTC) + timedelta(days=6), organizations=mine)
        assert (await http.get(f"/r/{plain.short_code}")).status_code == 302

        # Past the grace period the job suspends it: every dynamic code answers the paused page.
        assert await service.run_job(datetime.now(UTC) + timedelta(days=8), organizations=mine)
        current = await view(billing, owner)
        assert (current.status, current.lapsed) == (Subscription.SUSPENDED, True)

        async def paused(short_code: str) -> httpx.Response | None:
            answer = await http.get(f"/r/{short_code}")
            return answer if answer.status_code == 403 else None

        answer = await eventually(lambda: paused(plain.short_code), "the paused page")
        assert "paused" in answer.text.lower()
        assert (await http.get(f"/r/{code.short_code}")).status_code == 403  # before its password is asked
        events = await events_for(redirect_server.resources.settings.redis_url, plain.short_code, 3)
        assert events[-1].outcome == scan_event_pb2.ScanEvent.PAUSED
        assert events[-1].matched_rule == "subscription_lapsed"
        # Lapsed, the organization has Free's entitlements.
        error = await rpc_error(qr.create(owner, password_code()))
        assert error_info(error).reason == "FEATURE_NOT_IN_PLAN"

        # The provider collects the renewal: active again, the codes redirect again.
        await send(billing, event("invoice.paid", owner, subscription=subscription, created=now + 2))
        current = await view(billing, owner)
        assert (current.status, current.lapsed) == (Subscription.ACTIVE, False)

        async def redirected() -> httpx.Response | None:
            answer = await http.get(f"/r/{plain.short_code}")
            return answer if answer.status_code == 302 else None

        assert (await eventually(redirected, "the redirect again")).headers["location"] == "https://example.com/open"
    client = redirect_server.resources.redis
    assert client is not None
    assert owner.organization not in await signals.read_suspended(client)


async def test_late_announcements_and_stale_rewrites_never_undo_a_newer_change(billing_server: Server) -> None:
    client = billing_server.resources.redis
    assert client is not None
    organization = f"organizations/test-{secrets.token_hex(6)}"
    pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(signals.SUSPENSIONS_CHANNEL)
    await pubsub.get_message(timeout=1.0)  # the subscription's reply: from here on nothing published is missed
    try:
        # Version 3 (renewed) is announced before version 2 (the lapse it replaced) reaches Redis.
        assert await signals.announce_change(client, organization, lapsed=False, version=3)
        assert not await signals.announce_change(client, organization, lapsed=True, version=2)
        assert (await signals.read_lapses(client))[organization] == (3, False)
        assert organization not in await signals.read_suspended(client)

        async def snapshot(version: int, lapsed: bool) -> dict[str, tuple[int, bool]]:
            return {organization: (version, lapsed)}

        # The job's rewrite from a database read before version 3 leaves it alone; a newer one applies.
        assert await signals.reconcile_suspended(client, lambda: snapshot(2, True)) == 0
        assert organization not in await signals.read_suspended(client)
        assert await signals.reconcile_suspended(client, lambda: snapshot(4, True)) == 1
        assert organization in await signals.read_suspended(client)
        ours: list[str] = []
        reloaded = False
        deadline = time.monotonic() + 10
        while not reloaded and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=1.0)  # None also for the (ignored) subscription reply
            if message is None:
                continue
            text = message["data"].decode()
            if organization in text:
                ours.append(text)
            reloaded = text == signals.RELOAD and bool(ours)
        assert ours == [f"-{organization}@3"]  # never "+...@2"
        assert reloaded
    finally:
        await pubsub.aclose()
        await client.hdel(signals.LAPSES_KEY, organization)
        await client.delete(signals.entitlements_key(organization))


async def test_cancel_lapses_at_period_end_and_subscribing_again_renews_once_paid(
    qr_server: Server,
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub,
    service: Billing,
    owner: Account,
) -> None:
    name = subscription_name(owner)
    error = await rpc_error(
        billing.CancelSubscription(svc.CancelSubscriptionRequest(name=name), metadata=owner.metadata())
    )
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_TO_CANCEL")
    assert not (await send(billing, paid_subscription(owner.organization, "pro"))).ignored
    canceled = await billing.CancelSubscription(svc.CancelSubscriptionRequest(name=name), metadata=owner.metadata())
    assert (canceled.status, canceled.cancel_at_period_end, canceled.lapsed) == (Subscription.ACTIVE, True, False)
    end = canceled.current_period_end_time.ToDatetime(UTC)
    assert await service.advance(end, organizations=[org_id(owner)]) == [org_id(owner)]
    current = await view(billing, owner)
    assert (current.status, current.lapsed) == (Subscription.CANCELED, True)
    # Subscribing again is a new period to pay: still lapsed until the payment is confirmed.
    renewal = await change(billing, owner, "pro")
    assert (renewal.change.awaiting_payment, renewal.change.amount_due_minor_units) == (True, 1900)
    assert (renewal.subscription.status, renewal.subscription.lapsed) == (Subscription.CANCELED, True)
    now = datetime.now(UTC)
    month = (now, now + timedelta(days=30))
    assert await pay(service, owner, subscription=f"sub_again_{org_id(owner)}", amount=1900, at=now, period=month)
    renewed = await view(billing, owner)
    assert (renewed.plan, renewed.status, renewed.lapsed) == ("plans/pro", Subscription.ACTIVE, False)


# ---------------------------------------------------------------- the job


async def test_only_one_replica_runs_the_job(service: Billing, owner: Account) -> None:
    organization = org_id(owner)
    await service.grant(organization, "pro", period_end=datetime.now(UTC) + timedelta(days=1), reason="job lock")
    later = datetime.now(UTC) + timedelta(days=2)
    async with service.sessions.begin() as session:
        assert await store.try_lock_job(session=session)  # another replica's round
        assert not await service.run_job(later, organizations=[organization])
        assert (await service.subscription(organization)).state.plan == "pro"
    assert await service.run_job(later, organizations=[organization])
    assert (await service.subscription(organization)).state.plan == "free"


async def test_subscriptions_in_grace_do_not_hold_up_the_job(service: Billing) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    stamp = int(now.timestamp())
    # Ids that sort before the due one: a query on period_end ordered by id returned them first, every round.
    in_grace = [f"aaaaaaaaaaaaaa{suffix}" for suffix in ("a2", "a3", "a4")]
    due = "zzzzzzzzzzzzzzz7"
    everyone = [*in_grace, due]
    try:
        for organization in in_grace:
            # Past due on a period that ended yesterday: nothing to do until its grace is over, in 7 days.
            payload = recorded_event(
                "customer.subscription.updated",
                event_id=f"evt_grace_{organization}_{stamp}",
                created=stamp,
                customer=f"cus_{organization}",
                subscription=f"sub_grace_{organization}_{stamp}",
                organization=f"organizations/{organization}",
                plan="pro",
                period_start=stamp - 31 * 86400,
                period_end=stamp - 86400,
                status="past_due",
                cancel_at_period_end="false",
            )
            header = {"stripe-signature": stripe_header(payload, timestamp=stamp)}
            await service.handle_event("stripe", payload, header, now=now)
        await service.grant(due, "pro", period_end=now + timedelta(seconds=1), reason="due")
        async with service.sessions.begin() as session:
            found = await store.due_organizations(
                now + timedelta(seconds=1), session=session, limit=1, organizations=everyone
            )
        assert found == [due]
        assert await service.advance(now + timedelta(seconds=1), limit=1, organizations=everyone) == [due]
        async with service.sessions.begin() as session:
            grace = now + timedelta(days=7)
            assert (
                await store.due_organizations(
                    grace - timedelta(seconds=1), session=session, limit=9, organizations=everyone
                )
                == []
            )
            assert (
                sorted(await store.due_organizations(grace, session=session, limit=9, organizations=everyone))
                == in_grace
            )
        assert sorted(await service.advance(now + timedelta(days=7), organizations=everyone)) == in_grace
        for organization in in_grace:
            assert (await service.subscription(organization)).state.status is Status.SUSPENDED
    finally:
        async with service.sessions.begin() as session:
            for table in (store.subscriptions, store.plan_changes):
                await session.execute(sa.delete(table).where(table.c.organization_id.in_(everyone)))
        client = service.redis
        await client.hdel(signals.LAPSES_KEY, *(f"organizations/{organization}" for organization in everyone))


async def test_without_billing_plan_checks_fail_closed(settings: Settings, owner: Account) -> None:
    alone = dataclasses.replace(settings, extra={})
    server, port = await qr_server_module.create_server(alone)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            error = await rpc_error(Clients.on(channel).create(owner, dynamic()))
    finally:
        await server.stop(0)
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.UNAVAILABLE, "BILLING_NOT_CONFIGURED")
