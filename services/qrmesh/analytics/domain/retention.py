"""How long raw scans are kept, and what to drop or delete to keep to it.

Every organization keeps raw scans for the default number of days unless it has
a retention of its own (plans set these). Whole monthly partitions go once
their last instant is older than the LONGEST retention of any organization;
inside the partitions that stay, rows of organizations with a shorter retention
are deleted. Rollups are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from qrmesh.analytics.partitions import Month


@dataclass(frozen=True, slots=True)
class Deletion:
    """Delete raw rows older than `before` of `organizations` (exclude=False) or of every organization but
    those (exclude=True)."""

    before: datetime
    organizations: tuple[str, ...]
    exclude: bool


def longest(default_days: int, overrides: Mapping[str, int]) -> int:
    """The longest retention in force: the default, or an organization's own if longer."""
    return max(default_days, *overrides.values()) if overrides else default_days


def partitions_to_drop(months: Iterable[Month], now: datetime, longest_days: int) -> list[Month]:
    """The months whose whole partition is older than the longest retention, oldest first."""
    cutoff = now - timedelta(days=longest_days)
    return sorted(month for month in months if month.end <= cutoff)


def deletions(default_days: int, overrides: Mapping[str, int], now: datetime) -> list[Deletion]:
    """Row deletions that bring organizations with a retention shorter than the longest down to theirs."""
    top = longest(default_days, overrides)
    planned = [
        Deletion(now - timedelta(days=days), (organization,), exclude=False)
        for organization, days in sorted(overrides.items())
        if days < top
    ]
    if default_days < top:
        planned.append(Deletion(now - timedelta(days=default_days), tuple(sorted(overrides)), exclude=True))
    return planned
