"""The billing service's pure logic: proration to the cent, entitlement checks, downgrade overages, the
subscription life cycle, Stripe-style webhook signatures (cross-checked with the `stripe` package) and the
plan features a stored code uses."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import stripe

from qrmesh.billing.domain import lifecycle
from qrmesh.billing.domain.entitlements import (
    DESIGN_FULL,
    DYNAMIC_CODES,
    RULES_PASSWORD,
    RULES_SCHEDULE,
    TEAM_MEMBERS,
    EntitlementSet,
    Grant,
    Overage,
    Status,
    over_limits,
)
from qrmesh.billing.domain.proration import (
    Proration,
    add_month,
    divide_half_up,
    new_period,
    prorate,
    settle,
    share,
)
from qrmesh.billing.domain.providers import (
    SignatureError,
    StripeProvider,
    parse_stripe_event,
    stripe_signature,
    verify_stripe_signature,
)
from qrmesh.platform.errors import PermissionDenied, ResourceExhausted
from qrmesh.qr.domain.plan_features import required_features
from qrmesh.qr.v1 import design_pb2, stored_qr_code_pb2
from tests.integration.billing_helpers import recorded_event

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)  # 31 days: 2,678,400 s
SECRET = "whsec_unit_secret"
GRACE = timedelta(days=7)


# ---------------------------------------------------------------- proration


def test_half_up_division_is_exact() -> None:
    assert divide_half_up(5, 2) == 3
    assert divide_half_up(4, 2) == 2
    assert divide_half_up(-5, 2) == -3
    assert divide_half_up(1, 3) == 0
    assert divide_half_up(2, 3) == 1
    with pytest.raises(ValueError, match="positive"):
        divide_half_up(1, 0)


def test_share_clamps_and_rounds_to_the_cent() -> None:
    month = END - START
    assert share(1900, month, month) == 1900
    assert share(1900, timedelta(0), month) == 0
    assert share(1900, -timedelta(days=1), month) == 0
    assert share(1900, month * 2, month) == 1900
    # 10 of 31 days of $19.00: 612.903... cents -> 613.
    assert share(1900, timedelta(days=10), month) == 613


def test_mid_period_upgrade_credits_the_old_plan_and_charges_the_new_to_the_cent() -> None:
    at = START + timedelta(days=21)  # 10 days left of 31
    change = prorate(
        old_name="Pro", old_price=1900, new_name="Business", new_price=4900, period_start=START, period_end=END, at=at
    )
    assert [(line.description, line.amount) for line in change.lines] == [
        ("Unused time on Pro", -613),  # 1900 * 10/31 = 612.90
        ("Remaining time on Business", 1581),  # 4900 * 10/31 = 1580.65
    ]
    assert change.total == 968
    assert (change.credit_applied, change.amount_due, change.balance) == (0, 968, 0)
    assert all(line.start == at and line.end == END for line in change.lines)


def test_mid_period_downgrade_leaves_a_credit_that_pays_the_next_upgrade() -> None:
    at = START + timedelta(days=15, hours=12)  # 15.5 days left of 31: exactly half
    down = prorate(
        old_name="Business", old_price=4900, new_name="Pro", new_price=1900, period_start=START, period_end=END, at=at
    )
    assert [line.amount for line in down.lines] == [-2450, 950]
    assert (down.total, down.amount_due, down.balance) == (-1500, 0, 1500)
    up = prorate(
        old_name="Pro",
        old_price=1900,
        new_name="Enterprise",
        new_price=14900,
        period_start=START,
        period_end=END,
        at=at,
        balance=down.balance,
    )
    assert [line.amount for line in up.lines] == [-950, 7450]
    assert (up.total, up.credit_applied, up.amount_due, up.balance) == (6500, 1500, 5000, 0)


def test_a_change_at_the_first_second_swaps_whole_prices() -> None:
    change = prorate(
        old_name="Pro",
        old_price=1900,
        new_name="Business",
        new_price=4900,
        period_start=START,
        period_end=END,
        at=START,
    )
    assert change.total == 3000


def test_credit_never_exceeds_what_was_paid_and_a_downgrade_never_charges() -> None:
    at = START + timedelta(days=15, hours=12)  # half of the period left

    def change(old: tuple[str, int], new: tuple[str, int], paid: int) -> Proration:
        return prorate(
            old_name=old[0],
            old_price=old[1],
            new_name=new[0],
            new_price=new[1],
            period_start=START,
            period_end=END,
            at=at,
            paid=paid,
        )

    business, pro, enterprise = ("Business", 4900), ("Pro", 1900), ("Enterprise", 14900)
    # Paid in full: the usual credit.
    assert [line.amount for line in change(business, pro, paid=4900).lines] == [-2450, 950]
    # A granted period (nothing paid): no credit, and the cheaper plan costs nothing either.
    granted = change(business, pro, paid=0)
    assert (granted.lines, granted.total, granted.balance) == ((), 0, 0)
    # Partly paid: credit up to what was paid, the rest of the period on the cheaper plan at most as much.
    assert [line.amount for line in change(business, pro, paid=600).lines] == [-600, 600]
    # An upgrade from a granted period pays the whole remaining time of the new plan.
    up = change(pro, enterprise, paid=0)
    assert [(line.description, line.amount) for line in up.lines] == [("Remaining time on Enterprise", 7450)]
    assert up.amount_due == 7450


def test_settle_spends_credit_before_charging() -> None:
    assert settle(1000, 0) == (0, 1000, 0)
    assert settle(1000, 300) == (300, 700, 0)
    assert settle(1000, 5000) == (1000, 0, 4000)
    assert settle(-250, 100) == (0, 0, 350)
    with pytest.raises(ValueError, match="never negative"):
        settle(10, -1)


def test_a_new_period_charges_a_whole_month_and_ends_a_calendar_month_later() -> None:
    proration, end = new_period(name="Pro", price=1900, at=datetime(2026, 1, 31, 9, tzinfo=UTC), balance=400)
    assert end == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert (proration.total, proration.credit_applied, proration.amount_due) == (1900, 400, 1500)
    assert add_month(datetime(2026, 12, 15, tzinfo=UTC)) == datetime(2027, 1, 15, tzinfo=UTC)
    assert add_month(datetime(2028, 1, 30, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)


# ---------------------------------------------------------------- entitlements


FREE = EntitlementSet.of(
    "organizations/a",
    "free",
    [
        Grant.quantity(DYNAMIC_CODES, 10),
        Grant.feature(RULES_PASSWORD, False),
        Grant.quantity(TEAM_MEMBERS, 1),
    ],
)


def test_limits_and_features() -> None:
    assert FREE.check(DYNAMIC_CODES, usage=9).allowed
    assert not FREE.check(DYNAMIC_CODES, usage=10).allowed
    assert not FREE.check(DYNAMIC_CODES, usage=5, requested=6).allowed
    assert not FREE.has(RULES_PASSWORD)
    # A name the plan does not carry grants nothing (fail closed).
    assert not FREE.has("sso")
    assert FREE.limit("bulk_rows") == 0
    unlimited = EntitlementSet.of("organizations/a", "business", [Grant.quantity(DYNAMIC_CODES, None)])
    assert unlimited.limit(DYNAMIC_CODES) is None
    assert unlimited.check(DYNAMIC_CODES, usage=10**9).allowed


def test_refusals_carry_the_limit_the_usage_and_the_plan() -> None:
    with pytest.raises(ResourceExhausted) as exhausted:
        FREE.require_room(DYNAMIC_CODES, usage=10)
    assert exhausted.value.reason == "PLAN_LIMIT_REACHED"
    assert exhausted.value.metadata == {"entitlement": "dynamic_codes", "limit": "10", "usage": "10", "plan": "free"}
    with pytest.raises(PermissionDenied) as denied:
        FREE.require_feature(RULES_PASSWORD)
    assert denied.value.reason == "FEATURE_NOT_IN_PLAN"
    assert denied.value.metadata == {"entitlement": "rules.password", "plan": "free"}


def test_downgrade_overages_list_every_limit_that_is_over() -> None:
    usage = {DYNAMIC_CODES: 12, TEAM_MEMBERS: 1, "webhooks_sent": 3}
    assert over_limits(FREE.grants.values(), usage) == [
        Overage(DYNAMIC_CODES, 10, 12),
        Overage("webhooks_sent", 0, 3),  # counted but not a limit of the plan: nothing allowed
    ]
    assert over_limits(FREE.grants.values(), {DYNAMIC_CODES: 10, TEAM_MEMBERS: 1}) == []


# ---------------------------------------------------------------- the life cycle


def active(**changes: object) -> lifecycle.State:
    base = lifecycle.renewed("pro", START, END)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_an_unpaid_period_goes_past_due_then_suspended_after_grace() -> None:
    state = active()
    assert lifecycle.advance(state, END - timedelta(seconds=1), GRACE) == state
    due = lifecycle.advance(state, END, GRACE)
    assert (due.status, due.past_due_since, due.grace_until) == (Status.PAST_DUE, END, END + GRACE)
    assert not due.lapsed
    assert lifecycle.next_due(due) == END + GRACE
    assert lifecycle.advance(due, END + GRACE - timedelta(seconds=1), GRACE) == due
    lapsed = lifecycle.advance(due, END + GRACE, GRACE)
    assert lapsed.status is Status.SUSPENDED
    assert lapsed.lapsed
    # Long overdue: both moves in one round.
    assert lifecycle.advance(state, END + timedelta(days=30), GRACE).status is Status.SUSPENDED


def test_payment_events_move_the_status() -> None:
    failed_at = START + timedelta(days=3)
    due = lifecycle.on_payment_failed(active(), failed_at, GRACE)
    assert (due.status, due.grace_until) == (Status.PAST_DUE, failed_at + GRACE)
    # A second failure keeps the grace counting from the first.
    assert lifecycle.on_payment_failed(due, failed_at + timedelta(days=2), GRACE) == due
    suspended = lifecycle.advance(due, failed_at + GRACE, GRACE)
    renewed = lifecycle.on_payment_succeeded(suspended, END, add_month(END))
    assert (renewed.status, renewed.period_start, renewed.past_due_since, renewed.grace_until) == (
        Status.ACTIVE,
        END,
        None,
        None,
    )
    ended = lifecycle.on_deleted(active(), START + timedelta(days=1))
    assert ended.status is Status.CANCELED
    assert lifecycle.on_payment_succeeded(ended, END, add_month(END)) == ended  # only subscribing again renews


def test_cancel_at_period_end_or_at_once() -> None:
    now = START + timedelta(days=5)
    pending = lifecycle.on_cancel(active(), now, immediately=False)
    assert (pending.status, pending.cancel_at_period_end) == (Status.ACTIVE, True)
    assert lifecycle.advance(pending, END - timedelta(seconds=1), GRACE) == pending
    ended = lifecycle.advance(pending, END, GRACE)
    assert (ended.status, ended.ended_at, ended.lapsed) == (Status.CANCELED, END, True)
    assert lifecycle.on_cancel(active(), now, immediately=True).status is Status.CANCELED
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.on_cancel(lifecycle.free(), now, immediately=False)
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.on_cancel(ended, now, immediately=False)


def test_scheduled_changes_take_effect_at_the_period_end() -> None:
    to_free = active(scheduled_plan="free", scheduled_plan_paid=False)
    moved = lifecycle.advance(to_free, END, GRACE)
    assert (moved.plan, moved.status, moved.period_end, moved.paid) == ("free", Status.ACTIVE, None, False)
    to_pro = active(plan="business", scheduled_plan="pro", scheduled_plan_paid=True)
    moved = lifecycle.advance(to_pro, END, GRACE)
    # The next period is Pro's and waits for its renewal payment.
    assert (moved.plan, moved.status, moved.grace_until) == ("pro", Status.PAST_DUE, END + GRACE)


@pytest.mark.parametrize(
    "state",
    [
        active(),
        active(cancel_at_period_end=True),
        active(scheduled_plan="free", scheduled_plan_paid=False),
        active(scheduled_plan="business", scheduled_plan_paid=True),
        active(status=Status.TRIALING, trial_end=START + timedelta(days=14)),
        active(status=Status.TRIALING, trial_end=None, cancel_at_period_end=True),
        active(status=Status.TRIALING, trial_end=None),
        active(status=Status.PAST_DUE, past_due_since=START, grace_until=START + GRACE),
        active(status=Status.PAST_DUE, past_due_since=END, grace_until=END + GRACE),
        active(status=Status.PAST_DUE, past_due_since=START, grace_until=START + GRACE, cancel_at_period_end=True),
        active(status=Status.ACTIVE, trial_end=START),  # a leftover trial end on an active subscription
        active(status=Status.SUSPENDED),
        active(status=Status.CANCELED, ended_at=START),
        active(period_start=None, period_end=None),  # granted without an end
        lifecycle.free(),
        lifecycle.granted("pro", True, START, END),
    ],
)
def test_next_due_is_exactly_when_the_job_has_something_to_do(state: lifecycle.State) -> None:
    due = lifecycle.next_due(state)
    if due is None:
        # Nothing ever moves it with time alone.
        assert lifecycle.advance(state, END + timedelta(days=400), GRACE) == state
        return
    assert lifecycle.advance(state, due - timedelta(seconds=1), GRACE) == state
    assert lifecycle.advance(state, due, GRACE) != state  # due means it moves: the job never sees it due twice


def test_pending_changes_apply_only_to_what_was_priced() -> None:
    now = START + timedelta(days=3)
    upgrade = lifecycle.Pending("business", amount_due=2710, credit_applied=0, requested_at=now, period_end=END)
    assert upgrade.applies_to(active())
    assert not upgrade.applies_to(active(period_end=add_month(END)))  # renewed meanwhile: priced for another period
    assert not upgrade.applies_to(active(status=Status.SUSPENDED))
    confirmed = lifecycle.confirm(active(cancel_at_period_end=True), upgrade, at=now, period=None)
    assert (confirmed.plan, confirmed.period_start, confirmed.period_end, confirmed.cancel_at_period_end) == (
        "business",
        START,
        END,
        False,
    )
    subscribe = lifecycle.Pending("pro", amount_due=1900, credit_applied=0, requested_at=now, period_end=None)
    assert subscribe.applies_to(lifecycle.free())
    assert subscribe.applies_to(active(status=Status.CANCELED))
    assert subscribe.applies_to(active(period_start=None, period_end=None))  # granted without an end
    assert not subscribe.applies_to(active())  # already on a paid period
    renewed = lifecycle.confirm(lifecycle.free(), subscribe, at=now, period=(now, now + timedelta(days=30)))
    assert (renewed.plan, renewed.status, renewed.period_end) == ("pro", Status.ACTIVE, now + timedelta(days=30))
    assert lifecycle.confirm(lifecycle.free(), subscribe, at=now, period=None).period_end == add_month(now)


def test_grants_end_on_free() -> None:
    granted = lifecycle.granted("business", True, START, END)
    assert (granted.plan, granted.scheduled_plan, lifecycle.next_due(granted)) == ("business", "free", END)
    ended = lifecycle.advance(granted, END, GRACE)
    assert (ended.plan, ended.status, ended.lapsed, ended.period_end) == ("free", Status.ACTIVE, False, None)
    forever = lifecycle.granted("enterprise", True, START, None)
    assert (forever.period_end, lifecycle.next_due(forever)) == (None, None)
    assert lifecycle.granted("free", False, START, END) == lifecycle.free()


def test_trials_end_unpaid_as_past_due() -> None:
    trial = active(status=Status.TRIALING, trial_end=START + timedelta(days=14))
    due = lifecycle.advance(trial, START + timedelta(days=14), GRACE)
    assert (due.status, due.past_due_since) == (Status.PAST_DUE, START + timedelta(days=14))


def test_moves_the_life_cycle_forbids() -> None:
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.move(active(), Status.SUSPENDED)  # only past due subscriptions are suspended
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.move(active(status=Status.CANCELED), Status.PAST_DUE)
    assert lifecycle.move(active(status=Status.SUSPENDED), Status.ACTIVE).status is Status.ACTIVE


# ---------------------------------------------------------------- Stripe-style webhooks


def sign(payload: bytes, timestamp: int, secret: str = SECRET) -> str:
    """The header, computed here with the standard library's HMAC (independent of the code under test)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def payload(name: str = "invoice.paid") -> bytes:
    return recorded_event(
        name,
        event_id="evt_1QxZb2LkdIwHu7ixUnit0001",
        created=1772352000,
        customer="cus_RkT0unit",
        subscription="sub_1QxYz4LkdIwHu7ixUnit",
        organization="organizations/aaaaaaaaaaaaaaaa",
        plan="pro",
        period_start=1772323200,
        period_end=1775001600,
        status="past_due",
        cancel_at_period_end="false",
        ended_at=1772352000,
        amount_paid=1900,
        billing_reason="subscription_cycle",
    )


def test_a_genuine_signature_verifies_and_so_does_stripe_itself() -> None:
    body = payload()
    now = int(time.time())
    header = sign(body, now)
    assert verify_stripe_signature(body, header, [SECRET], now=now) == now
    assert stripe_signature(SECRET, now, body) == header.split("v1=")[1]
    # The stripe package, offline, accepts the same delivery with the same secret...
    event = stripe.Webhook.construct_event(body.decode(), header, SECRET)
    assert event["id"] == json.loads(body)["id"]
    # ...and a header the code under test builds.
    ours = f"t={now},v1={stripe_signature(SECRET, now, body)}"
    assert stripe.Webhook.construct_event(body.decode(), ours, SECRET)["type"] == "invoice.paid"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda body, header: (body + b" ", header), "WEBHOOK_SIGNATURE_INVALID"),
        (lambda body, header: (body, header.replace("v1=", "v1=0")), "WEBHOOK_SIGNATURE_INVALID"),
        (lambda body, header: (body, ""), "WEBHOOK_SIGNATURE_MISSING"),
        (lambda body, header: (body, "v1=abc"), "WEBHOOK_SIGNATURE_MALFORMED"),
        (lambda body, header: (body, "t=notanumber,v1=abc"), "WEBHOOK_SIGNATURE_MALFORMED"),
    ],
)
def test_tampered_or_malformed_deliveries_are_refused(mutate: object, reason: str) -> None:
    body = payload()
    now = int(time.time())
    changed_body, header = mutate(body, sign(body, now))  # type: ignore[operator]
    with pytest.raises(SignatureError) as caught:
        verify_stripe_signature(changed_body, header, [SECRET], now=now)
    assert caught.value.reason == reason
    if reason == "WEBHOOK_SIGNATURE_INVALID":
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(changed_body.decode(), header, SECRET)


def test_old_deliveries_are_replays_and_refused() -> None:
    body = payload()
    now = int(time.time())
    old = sign(body, now - 301)
    with pytest.raises(SignatureError) as caught:
        verify_stripe_signature(body, old, [SECRET], now=now)
    assert caught.value.reason == "WEBHOOK_TIMESTAMP_OUT_OF_WINDOW"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), old, SECRET, tolerance=300)
    assert verify_stripe_signature(body, sign(body, now - 299), [SECRET], now=now)


def test_rolled_secrets_and_several_signatures() -> None:
    body = payload()
    now = int(time.time())
    header = sign(body, now, "whsec_old") + ",v1=" + sign(body, now, "whsec_new").split("v1=")[1]
    assert verify_stripe_signature(body, header, ["whsec_new"], now=now)
    assert verify_stripe_signature(body, sign(body, now, "whsec_old"), ["whsec_new", "whsec_old"], now=now)
    with pytest.raises(SignatureError):
        verify_stripe_signature(body, sign(body, now, "whsec_other"), ["whsec_new", "whsec_old"], now=now)


def test_recorded_events_parse_into_what_billing_applies() -> None:
    paid = parse_stripe_event(payload("invoice.paid"))
    assert paid.invoice is not None
    assert (paid.invoice.subscription_id, paid.invoice.paid) == ("sub_1QxYz4LkdIwHu7ixUnit", True)
    assert (paid.invoice.amount_paid, paid.invoice.currency, paid.invoice.renewal) == (1900, "USD", True)
    assert paid.invoice.organization == "organizations/aaaaaaaaaaaaaaaa"
    assert paid.invoice.period_start == datetime.fromtimestamp(1772323200, UTC)
    failed = parse_stripe_event(payload("invoice.payment_failed"))
    assert failed.invoice is not None
    assert not failed.invoice.paid
    created = parse_stripe_event(payload("customer.subscription.created"))
    snapshot = created.subscription
    assert snapshot is not None
    assert (snapshot.organization, snapshot.plan, snapshot.status) == (
        "organizations/aaaaaaaaaaaaaaaa",
        "pro",
        Status.ACTIVE,
    )
    assert snapshot.period_end == datetime.fromtimestamp(1775001600, UTC)
    updated = parse_stripe_event(payload("customer.subscription.updated"))
    assert updated.subscription is not None
    assert updated.subscription.status is Status.PAST_DUE
    deleted = parse_stripe_event(payload("customer.subscription.deleted"))
    assert deleted.subscription is not None
    assert (deleted.subscription.deleted, deleted.subscription.status) == (True, Status.CANCELED)
    incomplete = parse_stripe_event(payload("customer.subscription.created.incomplete"))
    assert incomplete.subscription is not None
    assert incomplete.subscription.status is None  # grants nothing by itself
    other = parse_stripe_event(json.dumps({"id": "evt_x", "type": "charge.refunded", "data": {"object": {}}}).encode())
    assert not other.handled


def test_the_provider_checks_before_parsing() -> None:
    body = payload()
    now = time.time()
    provider = StripeProvider([SECRET])
    event = provider.parse(body, {"stripe-signature": sign(body, int(now))}, now)
    assert event.event_id == "evt_1QxZb2LkdIwHu7ixUnit0001"
    with pytest.raises(SignatureError) as caught:
        StripeProvider([]).parse(body, {"stripe-signature": sign(body, int(now))}, now)
    assert caught.value.reason == "WEBHOOK_NOT_CONFIGURED"


# ---------------------------------------------------------------- plan features of stored codes

Design = design_pb2.Design
LinkRules = stored_qr_code_pb2.LinkRules


def test_basic_design_needs_no_plan_feature() -> None:
    basic = Design(foreground="#123456", background="#ffffff", module_shape=Design.DOTS, quiet_zone=2)
    basic.eye_frame.shape = Design.EyeFrame.SQUARE
    basic.frame.style = Design.Frame.NONE
    assert (
        required_features(old_design=None, new_design=basic, old_rules=None, new_rules=None, password_set=False) == []
    )


@pytest.mark.parametrize(
    "design",
    [
        Design(logo=Design.Logo(image=b"png")),
        Design(
            gradient=Design.Gradient(stops=[Design.Gradient.Stop(color="#000"), Design.Gradient.Stop(color="#f00")])
        ),
        Design(frame=Design.Frame(style=Design.Frame.BANNER_BOTTOM, text="SCAN ME")),
        Design(eye_frame=Design.EyeFrame(shape=Design.EyeFrame.CIRCLE)),
        Design(eye_ball=Design.EyeBall(color="#ff0000")),
    ],
)
def test_full_design_parts_need_the_feature_when_set_or_changed(design: design_pb2.Design) -> None:
    assert required_features(
        old_design=None, new_design=design, old_rules=None, new_rules=None, password_set=False
    ) == [DESIGN_FULL]
    # Keeping them while changing a basic color does not.
    recolored = Design()
    recolored.CopyFrom(design)
    recolored.foreground = "#222222"
    assert (
        required_features(old_design=design, new_design=recolored, old_rules=None, new_rules=None, password_set=False)
        == []
    )


def test_rules_features() -> None:
    schedule = stored_qr_code_pb2.Schedule(windows=[stored_qr_code_pb2.Schedule.Window()])
    with_schedule = LinkRules(schedule=schedule)
    routed = LinkRules(
        routes=[
            stored_qr_code_pb2.Route(url="https://x.test", when=stored_qr_code_pb2.RouteCondition(time_window=schedule))
        ]
    )
    assert required_features(
        old_design=None, new_design=None, old_rules=None, new_rules=with_schedule, password_set=True
    ) == [RULES_PASSWORD, RULES_SCHEDULE]
    assert required_features(
        old_design=None, new_design=None, old_rules=LinkRules(), new_rules=routed, password_set=False
    ) == [RULES_SCHEDULE]
    unchanged = LinkRules(schedule=schedule, max_scans=5)
    assert (
        required_features(
            old_design=None, new_design=None, old_rules=with_schedule, new_rules=unchanged, password_set=False
        )
        == []
    )
