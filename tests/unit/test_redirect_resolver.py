"""The redirect's in-process link cache: bounded, oldest out first, and forgetting on announcements."""

from __future__ import annotations

from qrmesh.redirect.resolver import NOT_CACHED, LinkResolver


def resolver(max_entries: int) -> LinkResolver:
    return LinkResolver(None, "", service="redirect", service_secret="secret", max_entries=max_entries)


def test_the_cache_stays_bounded_and_keeps_the_newest() -> None:
    cache = resolver(1000)
    for number in range(3000):
        cache._remember(f"code{number}", None, 60.0)
    assert len(cache._entries) <= 1000
    assert cache.cached("code2999") is None  # known missing: cached negatively
    assert cache.cached("code0") is NOT_CACHED


def test_forget_and_clear_drop_entries() -> None:
    cache = resolver(100)
    cache._remember("a", None, 60.0)
    cache._remember("b", None, 60.0)
    cache.forget("a")
    assert cache.cached("a") is NOT_CACHED
    assert cache.cached("b") is None
    cache.clear()
    assert cache.cached("b") is NOT_CACHED


def test_expired_entries_are_not_used() -> None:
    cache = resolver(100)
    cache._remember("a", None, -1.0)
    assert cache.cached("a") is NOT_CACHED
