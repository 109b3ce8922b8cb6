"""Address cutting, visitor ids, sticky buckets, event ids and link passwords."""

from __future__ import annotations

import hashlib
import hmac
import re
import statistics
import time
from datetime import date

import pytest
from argon2 import PasswordHasher

from qrmesh.platform import ids
from qrmesh.redirect.domain.passwords import verify_password
from qrmesh.redirect.domain.privacy import anonymize_ip, sticky_bucket, visitor_id

SECRET = b"0123456789abcdef0123456789abcdef"
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148 Safari/604.1"


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("8.8.8.8", "8.8.8.0"),
        ("10.1.2.255", "10.1.2.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("2001:0db8:0001:ffff::1", "2001:db8:1::"),
        ("2a00:1450:4001:81c::200e", "2a00:1450:4001::"),
        ("::1", "::"),
        ("::ffff:203.0.113.77", "203.0.113.0"),
        ("::ffff:cb00:714d", "203.0.113.0"),
        ("", ""),
        ("203.0.113", ""),
        ("203.0.113.256", ""),
        ("not an address", ""),
        ("[2001:db8::1]", ""),
        ("fe80::1%eth0", ""),
    ],
)
def test_anonymize_ip(ip: str, network: str) -> None:
    assert anonymize_ip(ip) == network


def test_visitor_id_is_32_hex_characters_and_stable_within_a_day() -> None:
    day = date(2026, 3, 1)
    first = visitor_id(SECRET, day, "203.0.113.7", UA)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert visitor_id(SECRET, day, "203.0.113.7", UA) == first


def test_visitor_id_rotates_every_day_and_depends_on_everything() -> None:
    base = visitor_id(SECRET, date(2026, 3, 1), "203.0.113.7", UA)
    others = {
        visitor_id(SECRET, date(2026, 3, 2), "203.0.113.7", UA),
        visitor_id(SECRET, date(2027, 3, 1), "203.0.113.7", UA),
        visitor_id(SECRET, date(2026, 3, 1), "203.0.113.8", UA),
        visitor_id(SECRET, date(2026, 3, 1), "203.0.113.7", UA + " "),
        visitor_id(b"another secret", date(2026, 3, 1), "203.0.113.7", UA),
        # The separator keeps (ip, ua) pairs apart.
        visitor_id(SECRET, date(2026, 3, 1), "203.0.113.7" + "\x00" + UA, ""),
    }
    assert base not in others
    assert len(others) == 6


def test_visitor_ids_of_a_year_never_repeat() -> None:
    days = [date.fromordinal(date(2026, 1, 1).toordinal() + n) for n in range(365)]
    assert len({visitor_id(SECRET, day, "203.0.113.7", UA) for day in days}) == 365


def test_visitor_id_accepts_any_text() -> None:
    assert len(visitor_id(SECRET, date(2026, 3, 1), "\ud800", "é\x00")) == 32


def test_sticky_bucket_is_stable_and_per_code() -> None:
    bucket = sticky_bucket(SECRET, "abc1234", "203.0.113.7", UA)
    assert 0.0 <= bucket < 1.0
    assert sticky_bucket(SECRET, "abc1234", "203.0.113.7", UA) == bucket
    assert sticky_bucket(SECRET, "xyz9876", "203.0.113.7", UA) != bucket
    assert sticky_bucket(SECRET, "abc1234", "203.0.113.8", UA) != bucket
    assert sticky_bucket(b"another secret", "abc1234", "203.0.113.7", UA) != bucket


def test_sticky_buckets_are_uniform() -> None:
    buckets = [
        sticky_bucket(SECRET, "abc1234", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", UA) for n in range(10_000)
    ]
    assert all(0.0 <= b < 1.0 for b in buckets)
    deciles = [0] * 10
    for b in buckets:
        deciles[int(b * 10)] += 1
    # Each decile expects 1000 (standard deviation 30): 850..1150 is five sigma.
    assert all(850 <= count <= 1150 for count in deciles), deciles
    assert abs(statistics.fmean(buckets) - 0.5) < 0.015


UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuid7_format_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = ids.uuid7()
    after = time.time_ns() // 1_000_000
    assert UUID7.fullmatch(value), value
    stamp = int(value.replace("-", "")[:12], 16)
    assert before <= stamp <= after + 1


def test_uuid7_is_monotonic_and_unique() -> None:
    values = [ids.uuid7() for _ in range(20_000)]
    assert len(set(values)) == len(values)
    assert values == sorted(values)


def test_uuid7_stays_ordered_when_the_clock_stands_still_or_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ids.uuid7()
    frozen = int(first.replace("-", "")[:12], 16) * 1_000_000
    monkeypatch.setattr(ids, "time_ns", lambda: frozen)
    still = [ids.uuid7() for _ in range(1000)]
    monkeypatch.setattr(ids, "time_ns", lambda: frozen - 60_000_000_000)
    back = [ids.uuid7() for _ in range(1000)]
    values = [first, *still, *back]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert all(UUID7.fullmatch(value) for value in values)


def test_uuid7_counter_overflow_moves_the_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ids.uuid7()
    frozen = int(first.replace("-", "")[:12], 16) * 1_000_000
    monkeypatch.setattr(ids, "time_ns", lambda: frozen)
    monkeypatch.setattr(ids, "_counter", (1 << 42) - 1)
    after = ids.uuid7()
    assert after > first
    assert int(after.replace("-", "")[:12], 16) == frozen // 1_000_000 + 1


@pytest.fixture(scope="module")
def password_hash() -> str:
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("open sesame")


def test_verify_password(password_hash: str) -> None:
    assert verify_password(password_hash, "open sesame") is True
    assert verify_password(password_hash, "open sesame ") is False
    assert verify_password(password_hash, "") is False


@pytest.mark.parametrize(
    "bad_hash",
    ["", "not a hash", "$argon2id$v=19$m=1024,t=1,p=1$bad$bad", "$argon2id$v=19$m=1024,t=1,p=1$", "\ud800"],
)
def test_verify_password_is_false_for_malformed_hashes(bad_hash: str) -> None:
    assert verify_password(bad_hash, "open sesame") is False


def test_verify_password_is_false_for_hostile_input(password_hash: str) -> None:
    assert verify_password(password_hash, "\ud800") is False
    assert verify_password(password_hash, "\x00") is False
    assert verify_password(password_hash, "open sesame" * 1000) is False


def test_visitor_id_is_hmac_sha256_under_a_day_key() -> None:
    for secret in [SECRET, b"", b"x" * 65, b"y" * 200]:
        day_key = hmac.digest(secret, b"qrmesh visitor id\x00" + b"2026-03-01", hashlib.sha256)
        expected = hmac.digest(day_key, b"203.0.113.7\x00" + UA.encode(), hashlib.sha256).hex()[:32]
        assert visitor_id(secret, date(2026, 3, 1), "203.0.113.7", UA) == expected


def test_sticky_bucket_is_hmac_sha256_under_a_derived_key() -> None:
    key = hmac.digest(SECRET, b"qrmesh sticky bucket", hashlib.sha256)
    digest = hmac.digest(key, b"abc1234\x00203.0.113.7\x00" + UA.encode(), hashlib.sha256)
    assert sticky_bucket(SECRET, "abc1234", "203.0.113.7", UA) == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
