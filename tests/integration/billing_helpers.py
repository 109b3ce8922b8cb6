"""Plans for tests: put an organization on a plan through the real billing service (an operator's grant, or a
signed provider event as a payment would), and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.api import httpbody_pb2
from google.rpc import error_details_pb2

from qrmesh.billing import convert
from qrmesh.billing.v1 import billing_pb2, billing_service_pb2, billing_service_pb2_grpc
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.interceptors import rich_status
from qrmesh.platform.server import Server
from tests.conftest import SERVICE_SECRET, WEBHOOK_SECRET
from tests.integration.identity_helpers import Account

EVENTS = Path(__file__).resolve().parents[1] / "data" / "stripe"
"""Recorded Stripe event payloads (JSON), with placeholders filled per test."""


def service_metadata(caller: str = "tests") -> tuple[tuple[str, str], ...]:
    """Call metadata proving a qrmesh service (internal RPCs)."""
    return ((SERVICE_TOKEN_HEADER, service_token(SERVICE_SECRET, caller)),)


async def grant(
    billing: Server, organization: str, plan: str, *, until: datetime | None = None, reason: str = "tests"
) -> billing_pb2.Subscription:
    """Put `organizations/{id}` on `plans/{plan}` without payment, as an operator does (GrantPlan)."""
    request = billing_service_pb2.GrantPlanRequest(organization=organization, plan=f"plans/{plan}", reason=reason)
    if until is not None:
        request.period_end_time.CopyFrom(convert.timestamp(until))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing.port}") as channel:
        stub = billing_service_pb2_grpc.BillingAdminServiceStub(channel)
        answer: billing_pb2.Subscription = await stub.GrantPlan(request, metadata=service_metadata())
        return answer


async def subscribe(billing: Server, account: Account, plan: str) -> billing_pb2.Subscription:
    """Put `account`'s organization on `plans/{plan}` (granted: tests of other services only need the plan)."""
    return await grant(billing, account.organization, plan)


def paid_subscription(organization: str, plan: str, *, subscription: str | None = None) -> bytes:
    """A recorded `customer.subscription.created` that the provider sends once the first period is paid:
    `organization` active on `plan`."""
    now = int(time.time())
    subscription = subscription or f"sub_{organization.rsplit('/', 1)[-1]}_{plan}"
    return recorded_event(
        "customer.subscription.created",
        event_id=f"evt_{subscription}_{now}",
        created=now,
        customer=f"cus_{organization.rsplit('/', 1)[-1]}",
        subscription=subscription,
        organization=organization,
        plan=plan,
        period_start=now,
        period_end=now + 30 * 86400,
    )


def subscribe_through_edge(edge: str, organization: str, plan: str) -> None:
    """Put `organization` on a paid plan through the edge as a payment does: the provider's signed webhook."""
    payload = paid_subscription(organization, plan)
    answer = httpx.post(
        f"{edge}/v1/billing/providers/stripe/events",
        content=payload,
        headers={"content-type": "application/json", "stripe-signature": stripe_header(payload)},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json().get("ignored", False) is False, answer.text


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo the server sent with `error`."""
    status = rich_status(error)
    assert status is not None, error.details()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def stripe_header(payload: bytes, *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET) -> str:
    """A `Stripe-Signature` header for `payload`, computed here with the standard library's HMAC."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={signature}"


def recorded_event(name: str, **values: Any) -> bytes:
    """The recorded event `tests/data/stripe/<name>.json` with its `{{placeholders}}` filled, as bytes."""
    text = (EVENTS / f"{name}.json").read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    assert "{{" not in text, f"unfilled placeholder in {name}.json"
    json.loads(text)  # still JSON
    return text.encode()


def webhook_request(payload: bytes) -> billing_service_pb2.HandleProviderEventRequest:
    """A HandleProviderEvent request as the edge makes it from a delivery to the webhook URL."""
    return billing_service_pb2.HandleProviderEventRequest(
        provider="stripe", body=httpbody_pb2.HttpBody(content_type="application/json", data=payload)
    )


Subscription = billing_pb2.Subscription
