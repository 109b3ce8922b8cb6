"""The life of a subscription: its statuses, what moves it between them, and the grace period.

    TRIALING --(trial ends unpaid / period ends unpaid)--> PAST_DUE
    ACTIVE   --(payment fails / period ends unpaid)------> PAST_DUE
    PAST_DUE --(grace period over)-----------------------> SUSPENDED   (lapsed)
    any live --(canceled, period over / deleted)---------> CANCELED    (lapsed)
    TRIALING, PAST_DUE, SUSPENDED --(payment succeeds)----> ACTIVE      (renewed)
    CANCELED, SUSPENDED --(subscribed again)--------------> ACTIVE      (renewed)

Time-driven moves happen in `advance(state, now)`, which the billing service's
job runs for every subscription that is due; event-driven ones in the
`on_*` functions. Every function returns a new state and never mutates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from qrmesh.billing.domain.entitlements import FREE_PLAN, Status
from qrmesh.billing.domain.proration import Proration, add_month

LIVE = frozenset({Status.TRIALING, Status.ACTIVE, Status.PAST_DUE})
"""Statuses that still grant the subscribed plan."""

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.TRIALING: frozenset({Status.TRIALING, Status.ACTIVE, Status.PAST_DUE, Status.CANCELED}),
    Status.ACTIVE: frozenset({Status.ACTIVE, Status.PAST_DUE, Status.CANCELED}),
    Status.PAST_DUE: frozenset({Status.PAST_DUE, Status.ACTIVE, Status.SUSPENDED, Status.CANCELED}),
    Status.SUSPENDED: frozenset({Status.SUSPENDED, Status.ACTIVE, Status.CANCELED}),
    Status.CANCELED: frozenset({Status.CANCELED, Status.ACTIVE, Status.TRIALING}),
}
"""Which status may follow which (a provider's snapshot that breaks this is applied as the provider says,
but the service's own moves never do)."""


class TransitionError(ValueError):
    """A move the life cycle does not allow."""


@dataclass(frozen=True, slots=True)
class State:
    """What the life cycle needs to know about a subscription."""

    plan: str
    status: Status
    paid: bool
    """Whether `plan` has a price (Free has none and never renews)."""
    period_start: datetime | None = None
    period_end: datetime | None = None
    cancel_at_period_end: bool = False
    scheduled_plan: str | None = None
    scheduled_plan_paid: bool = False
    trial_end: datetime | None = None
    past_due_since: datetime | None = None
    grace_until: datetime | None = None
    ended_at: datetime | None = None

    @property
    def lapsed(self) -> bool:
        """Dynamic codes are paused and Free's entitlements apply."""
        return self.status.lapsed


def move(state: State, status: Status, **changes: object) -> State:
    """`state` with `status` and `changes`; TransitionError for a move the life cycle does not allow."""
    if status not in ALLOWED[state.status]:
        raise TransitionError(f"a {state.status.value} subscription cannot become {status.value}")
    return dataclasses.replace(state, status=status, **changes)  # type: ignore[arg-type]


def _past_due(state: State, since: datetime, grace: timedelta) -> State:
    return move(state, Status.PAST_DUE, past_due_since=since, grace_until=since + grace)


def next_due(state: State) -> datetime | None:
    """When `advance` will next have something to do, or None: exactly the moments `_step` acts on, so a
    subscription due at `now` always moves when advanced (the job never finds the same row due twice)."""
    candidates: list[datetime] = []
    if state.period_end is not None:
        if state.status in LIVE and state.cancel_at_period_end:
            candidates.append(state.period_end)
        if state.status in (Status.ACTIVE, Status.TRIALING) and state.scheduled_plan is not None:
            candidates.append(state.period_end)
        if state.status is Status.ACTIVE and state.paid:
            candidates.append(state.period_end)
    if state.status is Status.TRIALING and state.trial_end is not None:
        candidates.append(state.trial_end)
    if state.status is Status.PAST_DUE and state.grace_until is not None:
        candidates.append(state.grace_until)
    return min(candidates) if candidates else None


def advance(state: State, now: datetime, grace: timedelta) -> State:
    """Every time-driven move due at `now`, applied in order until none is left.

    - a cancellation at period end ends the subscription: CANCELED;
    - a scheduled change takes effect at the period's end (a move to Free leaves no period to renew);
    - a paid period (or trial) that ended without a renewal payment: PAST_DUE, grace counted from its end;
    - a PAST_DUE subscription whose grace is over: SUSPENDED.
    """
    for _ in range(8):
        following = _step(state, now, grace)
        if following == state:
            return state
        state = following
    return state


def _step(state: State, now: datetime, grace: timedelta) -> State:
    ended = state.period_end is not None and state.period_end <= now
    if state.status in LIVE and state.cancel_at_period_end and ended:
        return move(state, Status.CANCELED, cancel_at_period_end=False, scheduled_plan=None, ended_at=state.period_end)
    if state.status in (Status.ACTIVE, Status.TRIALING) and state.scheduled_plan is not None and ended:
        if not state.scheduled_plan_paid:
            return move(
                state,
                Status.ACTIVE,
                plan=state.scheduled_plan,
                paid=False,
                scheduled_plan=None,
                period_start=None,
                period_end=None,
                trial_end=None,
            )
        # The next period is on the new plan; its renewal payment decides what follows.
        return dataclasses.replace(state, plan=state.scheduled_plan, paid=True, scheduled_plan=None)
    if state.status is Status.TRIALING and state.trial_end is not None and state.trial_end <= now:
        return _past_due(dataclasses.replace(state, trial_end=None), state.trial_end, grace)
    if state.status is Status.ACTIVE and state.paid and ended:
        assert state.period_end is not None  # noqa: S101 - `ended` says so
        return _past_due(state, state.period_end, grace)
    if state.status is Status.PAST_DUE and state.grace_until is not None and state.grace_until <= now:
        return move(state, Status.SUSPENDED)
    return state


def on_payment_failed(state: State, at: datetime, grace: timedelta) -> State:
    """A renewal (or trial-end) payment failed at `at`: PAST_DUE, grace from the first failure."""
    if state.status in (Status.ACTIVE, Status.TRIALING):
        return _past_due(state, at, grace)
    return state  # already past due (grace keeps counting from the first failure), lapsed or ended


def on_payment_succeeded(state: State, period_start: datetime, period_end: datetime) -> State:
    """A payment for [period_start, period_end) succeeded: ACTIVE again, paused codes resume."""
    if state.status is Status.CANCELED:
        return state  # an ended subscription is renewed by subscribing again, not by a stray invoice
    return move(
        state,
        Status.ACTIVE,
        period_start=period_start,
        period_end=period_end,
        past_due_since=None,
        grace_until=None,
        trial_end=None,
    )


def on_cancel(state: State, now: datetime, *, immediately: bool) -> State:
    """Cancel: at the period's end (withdrawn by changing to the current plan), or now."""
    if not state.paid or state.plan == FREE_PLAN:
        raise TransitionError("a Free organization has no paid subscription to cancel")
    if state.status.lapsed:
        raise TransitionError(f"the subscription is {state.status.value.lower()} already")
    if immediately or state.period_end is None or state.period_end <= now:
        return move(state, Status.CANCELED, cancel_at_period_end=False, scheduled_plan=None, ended_at=now)
    return dataclasses.replace(state, cancel_at_period_end=True, scheduled_plan=None)


def on_deleted(state: State, at: datetime) -> State:
    """The provider ended the subscription at `at`."""
    return dataclasses.replace(
        state, status=Status.CANCELED, cancel_at_period_end=False, scheduled_plan=None, ended_at=at
    )


def renewed(plan: str, start: datetime, end: datetime) -> State:
    """A paid plan subscribed from `start` (from Free, or again after a lapse)."""
    return State(plan=plan, status=Status.ACTIVE, paid=True, period_start=start, period_end=end)


def granted(plan: str, paid: bool, start: datetime, end: datetime | None) -> State:
    """A plan an operator grants from `start`: until `end` (then Free), or with no end (nothing renews)."""
    if not paid:
        return free()
    if end is None:
        return State(plan=plan, status=Status.ACTIVE, paid=True)
    return State(
        plan=plan,
        status=Status.ACTIVE,
        paid=True,
        period_start=start,
        period_end=end,
        scheduled_plan=FREE_PLAN,
        scheduled_plan_paid=False,
    )


def free() -> State:
    """The Free plan: ACTIVE, no period, nothing to renew."""
    return State(plan=FREE_PLAN, status=Status.ACTIVE, paid=False)


@dataclass(frozen=True, slots=True)
class Pending:
    """A change to a paid plan that waits for the payment provider to confirm its payment."""

    plan: str
    amount_due: int
    """What the payment must cover (minor units)."""
    credit_applied: int
    """Credit balance spent once it is paid (kept until then)."""
    requested_at: datetime
    period_end: datetime | None
    """The end of the period the amount was prorated for; None: it starts a new period (from Free or a lapse)."""

    def applies_to(self, state: State) -> bool:
        """Whether paying it now still does what was priced: a new period for a Free or lapsed organization (or
        one on a plan granted without an end), or the rest of the very period it was prorated for."""
        if self.period_end is None:
            return state.lapsed or not state.paid or (state.status is Status.ACTIVE and state.period_end is None)
        return state.status in LIVE and state.period_end == self.period_end


def confirm(state: State, pending: Pending, *, at: datetime, period: tuple[datetime, datetime] | None) -> State:
    """The state once `pending` is paid at `at`: a new period on its plan (the provider's `period` when it
    names one), or its plan for the rest of the current period."""
    if pending.period_end is None:
        start, end = period if period is not None else (at, add_month(at))
        return renewed(pending.plan, start, end)
    return dataclasses.replace(
        state,
        plan=pending.plan,
        paid=True,
        scheduled_plan=None,
        scheduled_plan_paid=False,
        cancel_at_period_end=False,
    )


@dataclass(frozen=True, slots=True)
class Current:
    """An organization's subscription as the API shows it: the stored row, or Free when there is none."""

    organization_id: str
    state: State
    credit: int = 0
    currency: str = "USD"
    provider: str = ""
    version: int = 0
    updated_at: datetime | None = None
    pending: Pending | None = None
    period_paid: int = 0
    """Paid for the current period and not credited back yet (minor units): the most a downgrade credits."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a plan change does: the subscription after it, its proration and when it takes effect."""

    before: Current
    after: Current
    from_plan: str
    to_plan: str
    proration: Proration
    effective: datetime
    at_period_end: bool
    awaiting_payment: bool = False
    """Nothing changed yet: `after.pending` waits for the payment of `proration.amount_due`."""
