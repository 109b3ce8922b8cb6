"""The redirect's in-memory set of lapsed organizations: announcements carry the subscription's version and only
a newer one changes anything, so announcements (and reloads) arriving out of order converge on the latest."""

from __future__ import annotations

from qrmesh.billing.signals import parse_lapse
from qrmesh.redirect.suspensions import Suspensions


def test_announcements_suspend_and_resume() -> None:
    suspended = Suspensions(None)
    assert "organizations/a" not in suspended
    suspended.apply("+organizations/a@3")
    suspended.apply("+organizations/b@1")
    assert "organizations/a" in suspended
    suspended.apply("-organizations/a@4")
    assert "organizations/a" not in suspended
    assert "organizations/b" in suspended
    for noise in ("", "+", "-", "?organizations/c@1", "organizations/c@1", "+organizations/c", "+organizations/c@x"):
        suspended.apply(noise)
    assert suspended.organizations == frozenset({"organizations/b"})


def test_an_older_announcement_arriving_late_changes_nothing() -> None:
    suspended = Suspensions(None)
    suspended.apply("-organizations/a@7")  # renewed (version 7)...
    suspended.apply("+organizations/a@6")  # ...the lapse before it, delivered late
    assert "organizations/a" not in suspended
    suspended.apply("+organizations/a@7")  # the same version again: nothing new
    assert "organizations/a" not in suspended
    # A reload read before the latest announcement cannot undo it either.
    suspended.merge({"organizations/a": (6, True), "organizations/b": (2, True)})
    assert suspended.organizations == frozenset({"organizations/b"})
    suspended.merge({"organizations/a": (8, True)})
    assert suspended.organizations == frozenset({"organizations/a", "organizations/b"})


def test_announcements_parse() -> None:
    assert parse_lapse("+organizations/abc@12") == ("organizations/abc", 12, True)
    assert parse_lapse("-organizations/abc@0") == ("organizations/abc", 0, False)
    assert parse_lapse("*") is None
    assert parse_lapse("+@1") is None
