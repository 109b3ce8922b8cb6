"""Issue 5's promise, with curl-like HTTP through Envoy: create a dynamic code,
download its SVG, scan it, change its destination, scan again, and find both
scans in the `scans` stream; plus what the edge adds to scans (client address,
country, rules) and what it must never do (retry, cache, open-redirect)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2
from tests.e2e.test_identity_flow import sign_up_and_login

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def scans_of(redis_url: str, short_code: str) -> list[scan_event_pb2.ScanEvent]:
    client = redis.Redis.from_url(redis_url)
    try:
        found = []
        # The stream is shared by the whole session: read only its newest entries.
        entries: Any = client.xrevrange("scans", "+", "-", count=5000)
        for _, fields in reversed(entries):
            event = scan_event_pb2.ScanEvent.FromString(fields[b"event"])
            if event.short_code == short_code:
                found.append(event)
        return found
    finally:
        client.close()


def wait_for_scans(redis_url: str, short_code: str, count: int, timeout: float = 5.0) -> list[scan_event_pb2.ScanEvent]:
    deadline = time.monotonic() + timeout
    while True:
        found = scans_of(redis_url, short_code)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture(scope="module")
def owner(edge: str) -> tuple[dict[str, str], str]:
    _, headers = sign_up_and_login(edge, "scanner")
    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": "Scans Inc"}, headers=headers)
    assert org.status_code == 200, org.text
    return headers, org.json()["name"]


def create_dynamic(edge: str, owner: tuple[dict[str, str], str], url: str, **extra: object) -> dict[str, object]:
    headers, org = owner
    body = {"displayName": "Poster", "kind": "DYNAMIC", "content": {"url": {"url": url}}, **extra}
    answer = httpx.post(f"{edge}/v1/{org}/qrCodes", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    created: dict[str, object] = answer.json()
    return created


def test_create_render_scan_edit_scan(edge: str, owner: tuple[dict[str, str], str], settings: Settings) -> None:
    headers, _ = owner
    code = create_dynamic(edge, owner, "https://example.com/spring")
    short_code = str(code["shortCode"])
    assert len(short_code) >= 7
    assert str(code["shortUrl"]).endswith(f"/r/{short_code}")

    svg = httpx.get(f"{edge}/v1/{code['name']}:render", params={"format": "SVG", "size": 256}, headers=headers)
    assert svg.status_code == 200, svg.text
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content

    first = httpx.get(f"{edge}/r/{short_code}", headers={"user-agent": IPHONE, "x-forwarded-for": "81.2.69.142"})
    assert first.status_code == 302, first.text
    assert first.headers["location"] == "https://example.com/spring"
    assert first.headers["cache-control"] == "private, max-age=0"

    changed = httpx.patch(
        f"{edge}/v1/{code['name']}",
        params={"updateMask": "content"},
        json={"content": {"url": {"url": "https://example.com/summer"}}},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    # The image never changes: it encodes the short link, not the destination.
    again = httpx.get(f"{edge}/v1/{code['name']}:render", params={"format": "SVG", "size": 256}, headers=headers)
    assert again.content == svg.content

    deadline = time.monotonic() + 1.0
    while True:
        second = httpx.get(f"{edge}/r/{short_code}", headers={"user-agent": WINDOWS, "x-forwarded-for": "8.8.8.8"})
        if second.headers.get("location") == "https://example.com/summer" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert second.status_code == 302
    assert second.headers["location"] == "https://example.com/summer", "the edit was not seen within 1 s"

    events = wait_for_scans(settings.redis_url, short_code, 2)
    redirected = [e for e in events if e.outcome == scan_event_pb2.ScanEvent.REDIRECTED]
    assert [e.destination_url for e in redirected][:1] == ["https://example.com/spring"]
    assert redirected[-1].destination_url == "https://example.com/summer"
    spring = redirected[0]
    assert spring.qr_code == code["name"]
    assert spring.organization == owner[1]
    # The edge told the redirect who the client is; the address is cut to its /24.
    assert spring.ip_address == "81.2.69.0"
    assert spring.country == "GB"
    assert spring.user_agent == IPHONE
    assert not spring.bot
    assert len(spring.visitor_id) == 32
    assert redirected[-1].country == "US"


def test_unknown_code_is_a_404_page_and_an_orphan_scan(edge: str, settings: Settings) -> None:
    answer = httpx.get(f"{edge}/r/NoSuchCode42", headers={"user-agent": IPHONE})
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    events = wait_for_scans(settings.redis_url, "NoSuchCode42", 1)
    assert events
    assert events[0].outcome == scan_event_pb2.ScanEvent.UNKNOWN_CODE
    assert events[0].qr_code == ""


def test_head_is_recorded_as_a_bot(edge: str, owner: tuple[dict[str, str], str], settings: Settings) -> None:
    code = create_dynamic(edge, owner, "https://example.com/head")
    short_code = str(code["shortCode"])
    answer = httpx.head(f"{edge}/r/{short_code}", headers={"user-agent": IPHONE})
    assert answer.status_code == 302
    events = wait_for_scans(settings.redis_url, short_code, 1)
    assert events
    assert events[0].bot
    assert events[0].method == "HEAD"


def test_country_routing_through_the_edge(edge: str, owner: tuple[dict[str, str], str]) -> None:
    rules = {
        "routes": [
            {"name": "uk", "when": {"countries": ["GB"]}, "url": "https://example.co.uk/"},
            {"name": "ios", "when": {"os": ["IOS"]}, "url": "https://apps.apple.com/app/x"},
        ]
    }
    code = create_dynamic(edge, owner, "https://example.com/", rules=rules)
    url = f"{edge}/r/{code['shortCode']}"
    uk = httpx.get(url, headers={"user-agent": WINDOWS, "x-forwarded-for": "81.2.69.142"})
    assert uk.headers["location"] == "https://example.co.uk/"
    ios = httpx.get(url, headers={"user-agent": IPHONE, "x-forwarded-for": "8.8.8.8"})
    assert ios.headers["location"] == "https://apps.apple.com/app/x"
    other = httpx.get(url, headers={"user-agent": WINDOWS, "x-forwarded-for": "8.8.8.8"})
    assert other.headers["location"] == "https://example.com/"


def test_a_client_cannot_forge_its_address_past_the_edge(edge: str, owner: tuple[dict[str, str], str]) -> None:
    # The redirect trusts only the header the edge sets; a client sending it is overwritten.
    rules = {"routes": [{"when": {"countries": ["GB"]}, "url": "https://example.co.uk/"}]}
    code = create_dynamic(edge, owner, "https://example.com/", rules=rules)
    answer = httpx.get(
        f"{edge}/r/{code['shortCode']}",
        headers={"user-agent": WINDOWS, "x-qrmesh-client-ip": "81.2.69.142", "x-forwarded-for": "8.8.8.8"},
    )
    assert answer.headers["location"] == "https://example.com/"
