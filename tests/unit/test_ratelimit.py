"""The rate limiter's pure parts: GCRA on a fake clock, who a caller is, and its settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qrmesh.platform.auth import Principal, PrincipalKind
from qrmesh.platform.ratelimit import (
    MICROS,
    Decision,
    KeyKind,
    Rate,
    RateLimited,
    SettingsRatePolicy,
    address_bucket,
    bucket_key,
    client_address,
    decide,
    rate_or_none,
    user_identity,
)
from qrmesh.platform.settings import Settings, SettingsError

START = 1_700_000_000 * MICROS
SECOND = MICROS


class Bucket:
    """One bucket on a fake clock: what the Lua script keeps in Redis, kept here."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.tat: int | None = None
        self.now = START

    def call(self) -> Decision:
        decision = decide(self.rate, self.tat, self.now)
        if decision.tat is not None:
            self.tat = decision.tat
        return decision

    def wait(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


def test_a_fresh_bucket_allows_the_burst_then_refuses_for_one_interval() -> None:
    bucket = Bucket(Rate(per_second=2, burst=3))
    answers = [bucket.call() for _ in range(3)]
    assert [a.allowed for a in answers] == [True, True, True]
    assert [a.remaining for a in answers] == [2, 1, 0]
    refused = bucket.call()
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == SECOND // 2
    assert refused.reset_after == 3 * SECOND // 2
    assert refused.tat is None  # a refused call stores nothing


def test_refused_calls_cost_nothing_and_the_bucket_refills_at_the_rate() -> None:
    bucket = Bucket(Rate(per_second=2, burst=3))
    for _ in range(3):
        bucket.call()
    for _ in range(5):
        assert not bucket.call().allowed
    bucket.wait(0.25)
    assert bucket.call().retry_after == SECOND // 4
    bucket.wait(0.25)
    assert bucket.call().allowed
    assert not bucket.call().allowed
    bucket.wait(10)  # long idle: back to a full burst, never more
    assert [bucket.call().allowed for _ in range(4)] == [True, True, True, False]


def test_calls_at_the_sustained_rate_are_always_allowed() -> None:
    bucket = Bucket(Rate(per_second=10, burst=1))
    for _ in range(100):
        decision = bucket.call()
        assert decision.allowed
        assert decision.remaining == 0
        bucket.wait(0.1)
    assert bucket.call().allowed
    assert not bucket.call().allowed


def test_a_bucket_left_by_a_stricter_rate_waits_one_interval_not_the_old_window() -> None:
    # After a plan upgrade the old, far-ahead TAT must not lock the caller out for long.
    strict = Rate(per_second=0.01, burst=3)
    bucket = Bucket(strict)
    for _ in range(3):
        bucket.call()
    bucket.rate = Rate(per_second=20, burst=100)
    refused = bucket.call()
    assert not refused.allowed
    assert refused.retry_after == SECOND // 20
    bucket.wait(0.05)
    assert bucket.call().allowed


def test_retry_after_seconds_is_whole_and_at_least_one() -> None:
    assert Decision(False, 0, 1, 1).retry_after_seconds == 1
    assert Decision(False, 0, SECOND, 1).retry_after_seconds == 1
    assert Decision(False, 0, SECOND + 1, 1).retry_after_seconds == 2


@given(
    per_second=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.integers(min_value=0, max_value=3 * SECOND), min_size=1, max_size=200),
)
def test_no_window_ever_admits_more_than_the_burst_plus_the_rate(
    per_second: float, burst: int, gaps: list[int]
) -> None:
    rate = Rate(per_second, burst)
    bucket = Bucket(rate)
    allowed: list[int] = []
    for gap in gaps:
        bucket.now += gap
        if bucket.call().allowed:
            allowed.append(bucket.now)
    # GCRA's promise: between any two admitted calls, at most burst + elapsed / interval calls.
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= burst + (allowed[j] - first) // rate.interval


def test_rates_are_checked() -> None:
    assert Rate(3, 1).interval == 333_333
    assert Rate(2_000_000, 1).interval == 1  # never zero
    with pytest.raises(ValueError, match="per_second"):
        Rate(0, 10)
    with pytest.raises(ValueError, match="per_second"):
        Rate(float("inf"), 10)
    with pytest.raises(ValueError, match="burst"):
        Rate(1, 0)
    assert rate_or_none(0, 100) is None
    assert rate_or_none(5, 10) == Rate(5, 10)


def test_the_error_names_the_limit_and_sets_the_headers() -> None:
    error = RateLimited(KeyKind.API_KEY, Rate(20, 100), Decision(False, 0, 2_300_000, 5 * SECOND))
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after == pytest.approx(2.3)
    assert error.metadata == {"limit": "100", "per_second": "20", "retry_after_seconds": "3", "key_kind": "api_key"}
    assert dict(error.headers) == {"retry-after": "3", "x-ratelimit-limit": "100", "x-ratelimit-remaining": "0"}
    assert "API key" in error.message
    assert "retry in 3 s" in error.message


def test_addresses_are_bucketed_per_ipv4_address_and_ipv6_slash_64() -> None:
    assert address_bucket("203.0.113.9") == "203.0.113.9"
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_bucket("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_bucket("not-an-address" * 10) == ("not-an-address" * 10)[:64]


def test_the_edge_header_is_believed_only_from_a_private_peer() -> None:
    assert client_address("ipv4:127.0.0.1:5000", "203.0.113.9") == "203.0.113.9"
    assert client_address("ipv4:10.1.2.3:5000", "203.0.113.9") == "203.0.113.9"
    assert client_address("ipv6:[::1]:5000", "2001:db8::1") == "2001:db8::1"
    assert client_address("unix:/tmp/s", "203.0.113.9") == "203.0.113.9"
    # A caller reaching a service directly from outside cannot choose its bucket.
    assert client_address("ipv4:198.51.100.4:5000", "203.0.113.9") == "198.51.100.4"
    assert client_address("ipv6:[2001:db8::5]:443", "203.0.113.9") == "2001:db8::5"
    assert client_address("ipv4:127.0.0.1:5000", None) == "127.0.0.1"


def test_bucket_keys_are_per_key_per_user_and_per_address() -> None:
    assert (
        bucket_key(KeyKind.API_KEY, "organizations/o/apiKeys/k") == "qrmesh:ratelimit:api_key:organizations/o/apiKeys/k"
    )
    assert user_identity("users/u") == "users/u"  # one bucket per person, across organizations
    assert bucket_key(KeyKind.ADDRESS, "2001:db8::/64", prefix="p:") == "p:address:2001:db8::/64"


async def test_the_default_policy_gives_users_and_api_keys_their_settings() -> None:
    policy = SettingsRatePolicy(user=Rate(20, 100), api_key=Rate(5, 10))
    user = Principal(kind=PrincipalKind.USER, user="users/u")
    key = Principal(kind=PrincipalKind.API_KEY, api_key="organizations/o/apiKeys/k", organization="organizations/o")
    assert await policy.rate_for(user, None) == Rate(20, 100)
    assert await policy.rate_for(key, "organizations/o") == Rate(5, 10)
    assert await SettingsRatePolicy(user=None, api_key=None).rate_for(user, None) is None


def test_settings_read_the_rates_and_name_a_bad_variable() -> None:
    base = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
    defaults = Settings.from_env("qr", base)
    assert (defaults.rate_user_per_second, defaults.rate_user_burst) == (20.0, 100)
    assert (defaults.rate_api_key_per_second, defaults.rate_api_key_burst) == (20.0, 100)
    assert (defaults.rate_anonymous_per_second, defaults.rate_anonymous_burst) == (20.0, 100)
    configured = Settings.from_env(
        "qr",
        {
            **base,
            "QRMESH_RATE_USER_PER_SECOND": "0.5",
            "QRMESH_RATE_USER_BURST": "7",
            "QRMESH_RATE_API_KEY_PER_SECOND": "0",
            "QRMESH_RATE_ANONYMOUS_BURST": "3",
            "QRMESH_RATE_TIMEOUT": "0.05",
        },
    )
    policy = SettingsRatePolicy.from_settings(configured)
    assert policy.user == Rate(0.5, 7)
    assert policy.api_key is None
    assert configured.rate_anonymous_burst == 3
    assert configured.rate_timeout == 0.05
    with pytest.raises(SettingsError, match="QRMESH_RATE_USER_BURST"):
        Settings.from_env("qr", {**base, "QRMESH_RATE_USER_BURST": "0"})
    with pytest.raises(SettingsError, match="QRMESH_RATE_API_KEY_PER_SECOND"):
        Settings.from_env("qr", {**base, "QRMESH_RATE_API_KEY_PER_SECOND": "fast"})
