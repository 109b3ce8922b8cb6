"""Plans through the real edge, as the README shows them: the public plan list, the 403 of a feature the plan
lacks and the 429 of a used-up limit as JSON, a plan change over REST that waits for its payment, and Stripe-style
webhooks whose raw body and `Stripe-Signature` header reach the billing service through Envoy's transcoder
unchanged."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.test_identity_flow import sign_up_and_login
from tests.integration.billing_helpers import recorded_event, stripe_header

pytestmark = pytest.mark.e2e


def new_organization(edge: str, label: str) -> tuple[dict[str, str], str]:
    _, headers = sign_up_and_login(edge, label)
    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": label}, headers=headers)
    assert org.status_code == 200, org.text
    return headers, org.json()["name"]


def test_plans_are_listed_without_credentials(edge: str) -> None:
    answer = httpx.get(f"{edge}/v1/plans")
    assert answer.status_code == 200, answer.text
    plans = answer.json()["plans"]
    assert [plan["name"] for plan in plans] == ["plans/free", "plans/pro", "plans/business", "plans/enterprise"]
    free = {entitlement["name"]: entitlement for entitlement in plans[0]["entitlements"]}
    assert free["dynamic_codes"]["limit"] == "10"  # int64 is a string in JSON
    assert free["rules.password"]["enabled"] is False
    assert plans[1]["priceMinorUnits"] == "1900"


def test_limits_answer_403_and_429_json_and_a_plan_change_lifts_them(edge: str) -> None:
    headers, org = new_organization(edge, "limits")
    code = {"kind": "DYNAMIC", "content": {"url": {"url": "https://example.com/x"}}}
    locked = httpx.post(
        f"{edge}/v1/{org}/qrCodes", json={**code, "rules": {"password": "open sesame 42"}}, headers=headers
    )
    assert locked.status_code == 403, locked.text
    assert locked.json()["details"][0]["reason"] == "FEATURE_NOT_IN_PLAN"
    assert locked.json()["details"][0]["metadata"] == {"entitlement": "rules.password", "plan": "free"}
    for _ in range(10):
        assert httpx.post(f"{edge}/v1/{org}/qrCodes", json=code, headers=headers).status_code == 200
    full = httpx.post(f"{edge}/v1/{org}/qrCodes", json=code, headers=headers)
    assert full.status_code == 429, full.text
    assert full.json()["details"][0]["reason"] == "PLAN_LIMIT_REACHED"
    assert full.json()["details"][0]["metadata"] == {
        "entitlement": "dynamic_codes",
        "limit": "10",
        "usage": "10",
        "plan": "free",
    }
    changed = httpx.post(f"{edge}/v1/{org}/subscription:changePlan", json={"plan": "plans/pro"}, headers=headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["change"]["amountDueMinorUnits"] == "1900"
    assert changed.json()["change"]["awaitingPayment"] is True
    assert changed.json()["subscription"]["plan"] == "plans/free"  # nothing granted before it is paid
    assert changed.json()["subscription"]["pendingChange"]["plan"] == "plans/pro"
    assert httpx.post(f"{edge}/v1/{org}/qrCodes", json=code, headers=headers).status_code == 429
    # The provider confirms the payment (its signed webhook through the edge): Pro.
    now = int(time.time())
    paid = recorded_event(
        "invoice.paid",
        event_id=f"evt_edge_paid_{now}_{org[-6:]}",
        created=now,
        customer="cus_edge_paid",
        subscription=f"sub_edge_paid_{org[-12:]}",
        organization=org,
        period_start=now,
        period_end=now + 30 * 86400,
        amount_paid=1900,
        billing_reason="subscription_create",
    )
    url = f"{edge}/v1/billing/providers/stripe/events"
    confirmed = httpx.post(
        url, content=paid, headers={"content-type": "application/json", "stripe-signature": stripe_header(paid)}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert httpx.get(f"{edge}/v1/{org}/subscription", headers=headers).json()["plan"] == "plans/pro"
    assert httpx.post(f"{edge}/v1/{org}/qrCodes", json=code, headers=headers).status_code == 200
    refused = httpx.post(f"{edge}/v1/{org}/subscription:changePlan", json={"plan": "plans/free"}, headers=headers)
    assert refused.status_code == 400, refused.text  # FAILED_PRECONDITION
    assert refused.json()["details"][0]["reason"] == "PLAN_LIMITS_EXCEEDED"
    assert refused.json()["details"][0]["metadata"]["dynamic_codes.usage"] == "11"


def test_a_signed_webhook_passes_the_edge_byte_for_byte(edge: str) -> None:
    _, org = new_organization(edge, "webhook")
    now = int(time.time())
    payload = recorded_event(
        "customer.subscription.created",
        event_id=f"evt_edge_{now}_{org[-6:]}",
        created=now,
        customer="cus_edge",
        subscription=f"sub_edge_{org[-12:]}",
        organization=org,
        plan="business",
        period_start=now,
        period_end=now + 30 * 86400,
    )
    url = f"{edge}/v1/billing/providers/stripe/events"
    sent = {"content-type": "application/json", "stripe-signature": stripe_header(payload)}
    first = httpx.post(url, content=payload, headers=sent)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    again = httpx.post(url, content=payload, headers=sent)
    assert again.json()["duplicate"] is True
    forged = httpx.post(url, content=payload.replace(b"business", b"enterprise"), headers=sent)
    assert forged.status_code == 400, forged.text
    assert forged.json()["details"][0]["reason"] == "WEBHOOK_SIGNATURE_INVALID"
