"""Countries of addresses from the bundled GeoLite2 data."""

from __future__ import annotations

import pytest

from qrmesh.redirect.domain.geo import CountryLookup


@pytest.fixture(scope="module")
def lookup() -> CountryLookup:
    return CountryLookup()


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),  # Google DNS
        ("9.9.9.9", "US"),  # Quad9
        ("81.2.69.160", "GB"),  # MaxMind's own test address
        ("193.0.6.139", "NL"),  # RIPE NCC
        ("194.71.11.69", "SE"),
        ("133.242.0.1", "JP"),
        ("200.160.2.3", "BR"),  # NIC.br
        ("2001:4860:4860::8888", "US"),
        ("2a00:1450:4001::1", "DE"),
        ("2001:67c:2e8::1", "NL"),  # RIPE NCC
        ("2001:6b0::1", "SE"),  # SUNET
        ("::ffff:8.8.8.8", "US"),  # IPv4-mapped
        ("2001:4860:4860:0:0:0:0:8888", "US"),  # non-canonical IPv6 text
    ],
)
def test_public_addresses(lookup: CountryLookup, ip: str, country: str) -> None:
    assert lookup.country(ip) == country


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.1.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.5",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::8.8.8.8",  # deprecated IPv4-compatible form: not routed (and not 8.8.8.8)
    ],
)
def test_private_and_reserved_addresses_have_no_country(lookup: CountryLookup, ip: str) -> None:
    assert lookup.country(ip) == ""


@pytest.mark.parametrize(
    "ip", ["", "1", "127.1", "08.8.8.8", "8.8.8.8:80", "[::1]", "8.8.8.8 ", "999.1.1.1", "fe80::1%eth0", "x", "\x00"]
)
def test_invalid_addresses_have_no_country(lookup: CountryLookup, ip: str) -> None:
    assert lookup.country(ip) == ""


def test_instances_share_the_loaded_data(lookup: CountryLookup) -> None:
    other = CountryLookup(cache_size=4)
    assert other.country("81.2.69.160") == "GB"
    assert lookup.country("8.8.8.8") == "US"
