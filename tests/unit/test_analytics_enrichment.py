"""Enrichment of scan headers: device, browser, OS and brand from user agents; language; referrer host."""

from __future__ import annotations

import pytest

from qrmesh.analytics.domain.enrichment import DEVICE_TYPES, Agent, language, parse_agent, referrer_host, region_code

IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
SAMSUNG_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.86 "
    "Mobile Safari/537.36"
)
SAMSUNG_INTERNET = (
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.86 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
TIZEN_TV = (
    "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36"
)
PLAYSTATION = "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)"
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Safari/605.1.15"
)


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (IPHONE_SAFARI, Agent("Mobile Safari", "iOS", "mobile", "Apple")),
        (SAMSUNG_CHROME, Agent("Chrome Mobile", "Android", "mobile", "Samsung")),
        (SAMSUNG_INTERNET, Agent("Samsung Internet", "Android", "mobile", "Samsung")),
        (WINDOWS_CHROME, Agent("Chrome", "Windows", "desktop", "")),
        (MAC_SAFARI, Agent("Safari", "Mac OS X", "desktop", "Apple")),
        (IPAD, Agent("Mobile Safari", "iOS", "tablet", "Apple")),
        (ANDROID_TABLET, Agent("Chrome", "Android", "tablet", "")),
        (TIZEN_TV, Agent("Safari", "Tizen", "tv", "Samsung")),
    ],
)
def test_user_agents(agent: str, expected: Agent) -> None:
    assert parse_agent(agent) == expected


def test_a_console() -> None:
    agent = parse_agent(PLAYSTATION)
    assert (agent.device_type, agent.device_brand) == ("console", "Sony")


def test_a_bot_is_a_bot_whatever_its_agent_says() -> None:
    assert parse_agent(GOOGLEBOT, bot=True) == Agent("Googlebot", "", "bot", "")
    assert parse_agent(IPHONE_SAFARI, bot=True).device_type == "bot"
    assert parse_agent("", bot=True).device_type == "bot"


def test_a_spider_the_redirect_let_through_is_still_typed_bot() -> None:
    assert parse_agent(GOOGLEBOT).device_type == "bot"


def test_unknown_and_empty_agents() -> None:
    assert parse_agent("") == Agent("", "", "other", "")
    assert parse_agent("something/1.0").device_type == "other"
    assert parse_agent("x" * 5000).device_type in DEVICE_TYPES


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sv-SE,sv;q=0.9,en;q=0.8", "sv"),
        ("EN-us", "en"),
        ("zh_Hant_TW", "zh"),
        ("de;q=0.8, en", "de"),
        ("*", ""),
        ("", ""),
        ("12-34", ""),
        ("   ", ""),
    ],
)
def test_language(header: str, expected: str) -> None:
    assert language(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("https://L.Facebook.com:443/path?q=1", "l.facebook.com"),
        ("http://user:pw@example.org/", "example.org"),
        ("android-app://com.google.android.gm/", "com.google.android.gm"),
        ("https://[2001:db8::1]:8443/", "2001:db8::1"),
        ("https://example.com./", "example.com"),
        ("not a url", ""),
        ("http://[::1", ""),
        ("", ""),
    ],
)
def test_referrer_host(header: str, expected: str) -> None:
    assert referrer_host(header) == expected


def test_region_code() -> None:
    assert region_code("se", "ab") == "SE-AB"
    assert region_code("SE", "") == ""
    assert region_code("", "AB") == ""
