"""Breakdowns: the top values of a dimension with their shares, the rest summed as "other"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Entry:
    """One value: its scans, unique visitors, and share of all scans (0 to 1)."""

    value: str
    scans: int
    uniques: int
    share: float


@dataclass(frozen=True, slots=True)
class Breakdown:
    """The top values, most scans first (ties by value), the scans of the rest, and all scans."""

    entries: list[Entry]
    other_scans: int
    total_scans: int


def limit_of(requested: int) -> int:
    """How many top values: 10 when not set, at most 100."""
    if requested <= 0:
        return DEFAULT_LIMIT
    return min(requested, MAX_LIMIT)


def ranked(counts: Mapping[str, tuple[int, int]]) -> list[Entry]:
    """Every value with scans, most scans first, ties by value; `counts` maps value to (scans, uniques)."""
    total = sum(scans for scans, _ in counts.values())
    ordered = sorted(((value, s, u) for value, (s, u) in counts.items() if s > 0), key=lambda e: (-e[1], e[0]))
    return [Entry(value, scans, uniques, scans / total if total else 0.0) for value, scans, uniques in ordered]


def top(counts: Mapping[str, tuple[int, int]], limit: int) -> Breakdown:
    """The `limit` top values and the rest as other scans."""
    entries = ranked(counts)
    total = sum(entry.scans for entry in entries)
    shown = entries[:limit]
    return Breakdown(shown, total - sum(entry.scans for entry in shown), total)
