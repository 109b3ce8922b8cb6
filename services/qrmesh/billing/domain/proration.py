"""Proration to the cent, in integer minor units.

A plan change in the middle of a paid period credits the unused time of the
old plan and charges the same time on the new one. Time is counted in whole
seconds; each line is `price x remaining / period`, rounded half up to the
minor unit, so the two lines are exact each and their sum is what is charged
(or, when negative, credited). No floating point anywhere.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Line:
    """One charge (positive) or credit (negative) for the time [start, end)."""

    description: str
    amount: int
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Proration:
    """The lines of a plan change and what they come to."""

    lines: tuple[Line, ...]
    total: int
    """The sum of the lines; negative when the change leaves a credit."""
    credit_applied: int = 0
    """Credit balance spent on the total."""
    amount_due: int = 0
    """What is charged now: total less the credit applied, never negative."""
    balance: int = 0
    """The credit balance after the change."""


def divide_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves away from zero (denominator > 0)."""
    if denominator <= 0:
        raise ValueError("the denominator must be positive")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    if remainder * 2 >= denominator:
        quotient += 1
    return sign * quotient


def share(price: int, part: timedelta, whole: timedelta) -> int:
    """`price` x part / whole in minor units, rounded half up; part is clamped to [0, whole]."""
    whole_seconds = int(whole.total_seconds())
    if whole_seconds <= 0:
        raise ValueError("the period must be at least a second long")
    part_seconds = min(max(int(part.total_seconds()), 0), whole_seconds)
    return divide_half_up(price * part_seconds, whole_seconds)


def add_month(moment: datetime) -> datetime:
    """The same day and time a calendar month later (the month's last day when it is shorter: Jan 31 -> Feb 28)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def settle(total: int, balance: int) -> tuple[int, int, int]:
    """(credit applied, amount due, new balance) for a `total` against a credit `balance` (>= 0)."""
    if balance < 0:
        raise ValueError("a credit balance is never negative")
    if total <= 0:
        return 0, 0, balance - total
    applied = min(balance, total)
    return applied, total - applied, balance - applied


def prorate(
    *,
    old_name: str,
    old_price: int,
    new_name: str,
    new_price: int,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
    balance: int = 0,
    paid: int | None = None,
) -> Proration:
    """A change from the old plan to the new one at `at`, inside the paid period [period_start, period_end).

    Credits the unused time of the old plan, charges the same time on the new one, then spends the
    credit `balance` on what is due. `paid` (when given) is what was paid for the period and not
    credited back yet: the credit for unused time never exceeds it, so a period nobody paid for (a
    grant) earns none. A change to a cheaper plan never charges: its remaining time costs at most
    the credit.
    """
    if not period_start <= at:
        raise ValueError("a change cannot take effect before its period starts")
    whole = period_end - period_start
    remaining = period_end - at
    at = min(at, period_end)
    lines: list[Line] = []
    credit = share(old_price, remaining, whole)
    if paid is not None:
        credit = min(credit, max(paid, 0))
    if credit:
        lines.append(Line(f"Unused time on {old_name}", -credit, at, period_end))
    charge = share(new_price, remaining, whole)
    if new_price < old_price:
        charge = min(charge, credit)
    if charge:
        lines.append(Line(f"Remaining time on {new_name}", charge, at, period_end))
    total = charge - credit
    applied, due, after = settle(total, balance)
    return Proration(tuple(lines), total, applied, due, after)


def new_period(*, name: str, price: int, at: datetime, balance: int = 0) -> tuple[Proration, datetime]:
    """Subscribing to a plan from `at` (from Free, or after a lapse): a whole month charged; the period's end."""
    end = add_month(at)
    lines = (Line(f"{name} from {at:%Y-%m-%d}", price, at, end),) if price else ()
    applied, due, after = settle(price, balance)
    return Proration(lines, price, applied, due, after), end


def no_charge(balance: int) -> Proration:
    """A change that costs nothing now (scheduled for period end, a trial, the same plan, a move to Free)."""
    return Proration((), 0, 0, 0, balance)
