"""The pure logic of scan alerts: window counts, one firing per window, addresses, wording."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from qrmesh.analytics.domain.alerts import (
    Crossing,
    email_problem,
    normalized_recipients,
    select_firings,
    window_counts,
    window_words,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TEN = timedelta(minutes=10)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def crossing(minutes: float, count: int = 4) -> Crossing:
    return Crossing(at(minutes), count, "code", "short")


def test_window_counts_include_both_ends_and_equal_times() -> None:
    times = [at(0), at(1), at(2), at(10), at(10), at(10 + 1 / 60), at(25)]
    # at(10): [0, 10] holds 0, 1, 2 and both scans at 10; a second later 0 has left the window.
    assert window_counts(times, TEN) == [1, 2, 3, 5, 5, 5, 1]


def test_window_counts_match_a_brute_force_count() -> None:
    generator = random.Random(7)  # noqa: S311 - a fixed sample, not a secret
    times = sorted(at(generator.randrange(0, 600) / 4) for _ in range(300))
    expected = [sum(1 for other in times if moment - TEN <= other <= moment) for moment in times]
    assert window_counts(times, TEN) == expected


def test_more_than_three_fires_at_the_fourth_scan() -> None:
    times = [at(0), at(1), at(2), at(3)]
    counts = window_counts(times, TEN)
    crossings = [Crossing(t, n, "c", "s") for t, n in zip(times, counts, strict=True) if n > 3]
    assert [c.time for c in select_firings(crossings, [], TEN, not_before=T0)] == [at(3)]


def test_one_firing_per_window_then_it_re_arms() -> None:
    crossings = [crossing(m) for m in (3, 4, 9, 12.99, 13, 14, 30)]
    chosen = select_firings(crossings, [], TEN, not_before=T0)
    assert [c.time for c in chosen] == [at(3), at(13), at(30)]


def test_earlier_firings_block_crossings_on_either_side() -> None:
    # A firing at 20 recorded by another evaluation: crossings within 10 minutes of it, before or after, wait.
    chosen = select_firings([crossing(m) for m in (11, 15, 25, 30)], [at(20)], TEN, not_before=T0)
    assert [c.time for c in chosen] == [at(30)]
    assert [c.time for c in select_firings([crossing(10)], [at(20)], TEN, not_before=T0)] == [at(10)]


def test_evaluating_again_chooses_nothing_new() -> None:
    crossings = [crossing(m) for m in (3, 4, 13, 14)]
    first = select_firings(crossings, [], TEN, not_before=T0)
    assert select_firings(crossings, [c.time for c in first], TEN, not_before=T0) == []


def test_crossings_older_than_the_rule_do_not_fire() -> None:
    chosen = select_firings([crossing(-5), crossing(-1), crossing(2)], [], TEN, not_before=T0)
    assert [c.time for c in chosen] == [at(2)]


@pytest.mark.parametrize("address", ["ada@example.com", "a.b+tag@sub.example.co.uk", "x_y@exa-mple.org"])
def test_good_addresses(address: str) -> None:
    assert email_problem(address) is None


@pytest.mark.parametrize(
    "address",
    ["", "ada", "ada@", "@example.com", "ada@example", "ada @example.com", "ada@-example.com", f"{'a' * 65}@x.com"],
)
def test_bad_addresses(address: str) -> None:
    assert email_problem(address) is not None


def test_recipients_are_stripped_and_deduplicated() -> None:
    assert normalized_recipients([" ada@example.com", "ADA@example.com", "bob@example.com"]) == [
        "ada@example.com",
        "bob@example.com",
    ]


def test_window_words() -> None:
    assert [window_words(m) for m in (1, 10, 60, 90, 120, 1440, 2880)] == [
        "1 minute",
        "10 minutes",
        "1 hour",
        "90 minutes",
        "2 hours",
        "1 day",
        "2 days",
    ]
