"""Payment providers: the interface, and the Stripe-style one.

A provider turns a webhook delivery (raw body and headers) into a
`ProviderEvent` after verifying its signature; the billing service applies the
event to the subscription it names. Nothing here talks to the network.

Stripe's scheme: the `Stripe-Signature` header is `t=<unix time>,v1=<hex>[,v1=<hex>...]`
where each v1 is HMAC-SHA256 of `"{t}.{body}"` keyed by the endpoint's secret
(several while a secret is rolled). The body is compared byte for byte, in
constant time, and a timestamp outside the tolerance (300 s by default) is
refused, so a captured delivery cannot be replayed later; within the window,
the event id makes a replay a no-op.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from qrmesh.billing.domain.entitlements import Status
from qrmesh.platform.errors import InvalidArgument

STRIPE = "stripe"
SIGNATURE_HEADER = "stripe-signature"
DEFAULT_TOLERANCE = 300
ORGANIZATION_KEY = "qrmesh_organization"
"""Metadata key on the provider's subscription naming the organization (`organizations/{id}`)."""
PLAN_KEY = "qrmesh_plan"
"""Metadata key on the provider's subscription (or price) naming the plan id; else the price's lookup key."""

_STATUSES = {
    "trialing": Status.TRIALING,
    "active": Status.ACTIVE,
    "past_due": Status.PAST_DUE,
    "unpaid": Status.SUSPENDED,
    "paused": Status.SUSPENDED,
    "canceled": Status.CANCELED,
    "incomplete_expired": Status.CANCELED,
}
_MAX_SIGNATURES = 8


class SignatureError(InvalidArgument):
    """A webhook delivery whose signature does not prove it came from the provider."""


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    """The provider's view of a subscription (customer.subscription.created / updated / deleted)."""

    subscription_id: str
    customer_id: str
    organization: str
    """`organizations/{id}` from the subscription's metadata; "" when absent."""
    plan: str
    """Plan id from metadata or the price's lookup key; "" when absent."""
    status: Status | None
    """None for a provider status that changes nothing here (incomplete)."""
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    ended_at: datetime | None
    deleted: bool


@dataclass(frozen=True, slots=True)
class InvoiceOutcome:
    """An invoice's outcome (invoice.paid / invoice.payment_failed)."""

    subscription_id: str
    paid: bool
    period_start: datetime | None
    period_end: datetime | None
    amount_paid: int = 0
    """What was collected, in minor units of `currency`."""
    currency: str = ""
    """ISO 4217 code, upper case ("USD")."""
    reason: str = ""
    """Why it was billed (Stripe's billing_reason): "subscription_cycle" for a renewal,
    "subscription_create" for a new subscription's first period, "subscription_update" for a plan change."""
    organization: str = ""
    """`organizations/{id}` from the subscription's metadata copied onto the invoice; "" when absent."""

    @property
    def renewal(self) -> bool:
        """A period's regular renewal (not the payment of a plan change or a first period)."""
        return self.reason == "subscription_cycle"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One verified event: what it is, when the provider created it, and what it says."""

    provider: str
    event_id: str
    type: str
    created: datetime
    subscription: SubscriptionSnapshot | None = None
    invoice: InvoiceOutcome | None = None

    @property
    def handled(self) -> bool:
        """Whether the event carries something the billing service applies."""
        return self.subscription is not None or self.invoice is not None


class PaymentProvider(Protocol):
    """A payment provider's webhook side."""

    name: str

    def parse(self, payload: bytes, headers: Mapping[str, str], now: float) -> ProviderEvent:
        """The event in a delivery, after verifying its signature; SignatureError or InvalidArgument if bad."""
        ...


def stripe_signature(secret: str, timestamp: int, payload: bytes) -> str:
    """The v1 signature Stripe sends for `payload` at `timestamp` (hex HMAC-SHA256 of "{t}.{payload}")."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256).hexdigest()


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures) of a `Stripe-Signature` header; SignatureError if malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                raise _signature_error("the Stripe-Signature timestamp is not a number", "WEBHOOK_SIGNATURE_MALFORMED")
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures or len(signatures) > _MAX_SIGNATURES:
        raise _signature_error(
            "the Stripe-Signature header needs t=<timestamp> and v1=<signature>", "WEBHOOK_SIGNATURE_MALFORMED"
        )
    return timestamp, signatures


def verify_stripe_signature(
    payload: bytes, header: str, secrets: Sequence[str], *, now: float, tolerance: int = DEFAULT_TOLERANCE
) -> int:
    """Check a delivery against every endpoint secret (constant-time compare); its timestamp if genuine."""
    if not header:
        raise _signature_error("the Stripe-Signature header is missing", "WEBHOOK_SIGNATURE_MISSING")
    timestamp, signatures = parse_signature_header(header)
    if abs(now - timestamp) > tolerance:
        raise _signature_error(
            f"the delivery was signed {int(now - timestamp)} s ago, outside the {tolerance} s window",
            "WEBHOOK_TIMESTAMP_OUT_OF_WINDOW",
        )
    matched = False
    for secret in secrets:
        expected = stripe_signature(secret, timestamp, payload)
        for signature in signatures:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected.encode(), signature.encode())
    if not matched:
        raise _signature_error("the Stripe-Signature does not match the body", "WEBHOOK_SIGNATURE_INVALID")
    return timestamp


def _signature_error(message: str, reason: str) -> SignatureError:
    return SignatureError(message, reason=reason)


class StripeProvider:
    """Stripe-style webhooks: signature verification and the subscription and invoice events."""

    name = STRIPE

    def __init__(self, secrets: Sequence[str], *, tolerance: int = DEFAULT_TOLERANCE) -> None:
        self.secrets = tuple(secret for secret in secrets if secret)
        self.tolerance = tolerance

    def parse(self, payload: bytes, headers: Mapping[str, str], now: float) -> ProviderEvent:
        if not self.secrets:
            raise _signature_error(
                "Stripe webhooks are not configured (QRMESH_BILLING_STRIPE_WEBHOOK_SECRET)", "WEBHOOK_NOT_CONFIGURED"
            )
        verify_stripe_signature(
            payload, headers.get(SIGNATURE_HEADER, ""), self.secrets, now=now, tolerance=self.tolerance
        )
        return parse_stripe_event(payload)


def parse_stripe_event(payload: bytes) -> ProviderEvent:
    """The event in a (verified) Stripe delivery."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgument("the event is not JSON", reason="WEBHOOK_PAYLOAD_INVALID") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise InvalidArgument("the event has no id or type", reason="WEBHOOK_PAYLOAD_INVALID")
    kind: str = event["type"]
    created = _time(event.get("created")) or datetime.now(UTC)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise InvalidArgument("the event has no data.object", reason="WEBHOOK_PAYLOAD_INVALID")
    base = ProviderEvent(provider=STRIPE, event_id=event["id"][:255], type=kind[:100], created=created)
    if kind in ("customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"):
        return ProviderEvent(**_fields(base), subscription=_subscription(obj, deleted=kind.endswith(".deleted")))
    if kind in ("invoice.paid", "invoice.payment_failed"):
        invoice = _invoice(obj, paid=kind == "invoice.paid")
        return ProviderEvent(**_fields(base), invoice=invoice)
    return base


def _fields(event: ProviderEvent) -> dict[str, Any]:
    return {"provider": event.provider, "event_id": event.event_id, "type": event.type, "created": event.created}


def _time(value: object) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**11:
        return datetime.fromtimestamp(value, UTC)
    return None


def _text(value: object, limit: int = 255) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _subscription(obj: Mapping[str, Any], *, deleted: bool) -> SubscriptionSnapshot:
    items = _mapping(obj.get("items")).get("data")
    item = _mapping(items[0]) if isinstance(items, list) and items else {}
    price = _mapping(item.get("price"))
    metadata = _mapping(obj.get("metadata"))
    plan = _text(metadata.get(PLAN_KEY)) or _text(_mapping(price.get("metadata")).get(PLAN_KEY))
    plan = plan or _text(price.get("lookup_key"))
    # API versions since 2025 carry the period on the item; older ones on the subscription.
    start = _time(item.get("current_period_start")) or _time(obj.get("current_period_start"))
    end = _time(item.get("current_period_end")) or _time(obj.get("current_period_end"))
    status = _STATUSES.get(_text(obj.get("status")))
    return SubscriptionSnapshot(
        subscription_id=_text(obj.get("id")),
        customer_id=_text(obj.get("customer")),
        organization=_text(metadata.get(ORGANIZATION_KEY)),
        plan=plan,
        status=Status.CANCELED if deleted else status,
        period_start=start,
        period_end=end,
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        trial_end=_time(obj.get("trial_end")),
        ended_at=_time(obj.get("ended_at")) or _time(obj.get("canceled_at")),
        deleted=deleted,
    )


def _invoice(obj: Mapping[str, Any], *, paid: bool) -> InvoiceOutcome:
    # API versions since 2025 name the subscription under parent.subscription_details.
    details = _mapping(_mapping(obj.get("parent")).get("subscription_details"))
    subscription = _text(details.get("subscription")) or _text(obj.get("subscription"))
    lines = _mapping(obj.get("lines")).get("data")
    period = _mapping(_mapping(lines[0]).get("period")) if isinstance(lines, list) and lines else {}
    start = _time(period.get("start")) or _time(obj.get("period_start"))
    end = _time(period.get("end")) or _time(obj.get("period_end"))
    metadata = _mapping(details.get("metadata")) or _mapping(_mapping(obj.get("subscription_details")).get("metadata"))
    amount = obj.get("amount_paid")
    return InvoiceOutcome(
        subscription_id=subscription,
        paid=paid,
        period_start=start,
        period_end=end,
        amount_paid=amount if isinstance(amount, int) and not isinstance(amount, bool) and amount > 0 else 0,
        currency=_text(obj.get("currency"), 3).upper(),
        reason=_text(obj.get("billing_reason"), 40),
        organization=_text(metadata.get(ORGANIZATION_KEY)),
    )
