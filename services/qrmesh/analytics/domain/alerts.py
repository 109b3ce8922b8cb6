"""Scan alert rules and when they fire: pure logic, no I/O.

A threshold rule "more than N scans in M minutes" fires at a counted scan at time t when the
scope's counted scans with times in [t - M, t] (both ends included) number more than N. After a
firing at t it stays quiet for scans within M minutes of t, either side (one firing per window),
then re-arms. A first-scan rule fires once per code in its scope, at the code's first counted scan
ever, when that scan is not older than the rule.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_RULES = 20
"""Alert rules per organization at most."""
MAX_RECIPIENTS = 10
MAX_NAME = 100
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


class Kind(enum.IntEnum):
    """What a rule watches for (the `kind` column)."""

    THRESHOLD = 1
    FIRST_SCAN = 2


@dataclass(frozen=True, slots=True)
class Rule:
    """An alert rule as evaluation needs it."""

    organization_id: str
    id: str
    display_name: str
    qr_code_id: str
    """The code watched; '' for every code of the organization."""
    kind: Kind
    more_than: int
    window_minutes: int
    recipients: tuple[str, ...]
    enabled: bool
    create_time: datetime

    @property
    def name(self) -> str:
        return f"organizations/{self.organization_id}/alertRules/{self.id}"

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.window_minutes)

    def covers(self, qr_code_id: str) -> bool:
        """Whether a scan of this code is in the rule's scope."""
        return not self.qr_code_id or self.qr_code_id == qr_code_id


def email_problem(address: str) -> str | None:
    """Why `address` is not an email address we send to; None when it is one."""
    if len(address) > 254:
        return "is longer than 254 characters"
    if _EMAIL.fullmatch(address) is None:
        return "must be an email address like name@example.com"
    local = address.rsplit("@", 1)[0]
    if len(local) > 64:
        return "has a local part longer than 64 characters"
    return None


def normalized_recipients(addresses: Iterable[str]) -> list[str]:
    """The addresses stripped, without duplicates (compared case-insensitively), in the order given."""
    seen: set[str] = set()
    result = []
    for address in addresses:
        clean = address.strip()
        if clean.lower() not in seen:
            seen.add(clean.lower())
            result.append(clean)
    return result


@dataclass(frozen=True, slots=True)
class Crossing:
    """A counted scan at which a threshold rule's window holds more than N scans."""

    time: datetime
    count: int
    """Counted scans of the scope in [time - M, time]."""
    qr_code_id: str
    short_code: str


def window_counts(times: Sequence[datetime], window: timedelta) -> list[int]:
    """For each time of a sorted sequence, how many times lie in [time - window, time] (equal times all
    count, whichever comes first). The reference for the SQL that counts in the database."""
    counts = []
    start = 0
    for index, moment in enumerate(times):
        while times[start] < moment - window:
            start += 1
        end = index
        while end + 1 < len(times) and times[end + 1] == moment:
            end += 1
        counts.append(end - start + 1)
    return counts


def select_firings(
    crossings: Sequence[Crossing], fired: Iterable[datetime], window: timedelta, *, not_before: datetime
) -> list[Crossing]:
    """The crossings that fire, in time order: each not older than the rule (`not_before`) and more than
    `window` or more away from every earlier firing (`fired`, in any order) and from those chosen before it."""
    taken = sorted(fired)
    chosen: list[Crossing] = []
    for crossing in sorted(crossings, key=lambda c: c.time):
        if crossing.time < not_before:
            continue
        if any(abs(crossing.time - moment) < window for moment in taken):
            continue
        chosen.append(crossing)
        taken.append(crossing.time)
    return chosen


def threshold_key(moment: datetime) -> str:
    """A threshold firing's key: the crossing scan's time (one firing per rule and instant)."""
    return moment.isoformat()


def window_words(minutes: int) -> str:
    """ "10 minutes", "1 hour", "2 days"."""
    for size, unit in ((1440, "day"), (60, "hour")):
        if minutes % size == 0:
            count = minutes // size
            return f"{count} {unit}" + ("s" if count != 1 else "")
    return f"{minutes} minute" + ("s" if minutes != 1 else "")
