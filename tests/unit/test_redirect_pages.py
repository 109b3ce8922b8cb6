"""The HTML pages scans see instead of a redirect."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from qrmesh.redirect.domain import pages
from qrmesh.redirect.domain.pages import CONTENT_SECURITY_POLICY, KINDS, PAGE_STATUS, page


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> _Tags:
    parser = _Tags()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


def test_every_kind_has_a_status() -> None:
    expected = {
        "password",
        "throttled",
        "not_yet_active",
        "expired",
        "unavailable",
        "limit_reached",
        "paused",
        "unknown",
    }
    assert set(KINDS) == expected
    assert PAGE_STATUS == {
        "password": 200,
        "throttled": 429,
        "not_yet_active": 403,
        "expired": 410,
        "unavailable": 403,
        "limit_reached": 410,
        "paused": 403,
        "unknown": 404,
    }


def test_content_security_policy() -> None:
    assert CONTENT_SECURITY_POLICY == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pages_are_small_self_contained_html(kind: str) -> None:
    body = page(kind, short_code="abc1234")
    text = body.decode("utf-8")
    assert text.startswith("<!doctype html>")
    assert len(body) < 4096
    tags = parse(body).tags
    metas = [attrs for tag, attrs in tags if tag == "meta"]
    assert {"name": "robots", "content": "noindex"} in metas
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in metas
    assert {"charset": "utf-8"} in metas
    names = {tag for tag, _ in tags}
    assert names.isdisjoint({"script", "link", "img", "iframe", "object", "embed", "a"})
    assert all("src" not in attrs and "href" not in attrs for _, attrs in tags)
    assert "http://" not in text
    assert "https://" not in text
    assert re.search(r"<title>[^<]+</title>", text)


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("throttled", "Too many attempts"),
        ("not_yet_active", "not active yet"),
        ("expired", "expired"),
        ("unavailable", "certain times"),
        ("limit_reached", "number of scans"),
        ("paused", "paused"),
        ("unknown", "not found"),
    ],
)
def test_pages_say_what_happened(kind: str, phrase: str) -> None:
    assert phrase in page(kind).decode()


def test_static_pages_are_built_once() -> None:
    assert page("expired") is page("expired")
    assert page("expired", short_code="x", error="y") is page("expired")


def test_password_page_has_a_form_posting_back() -> None:
    body = page("password", short_code="abc1234")
    tags = dict(parse(body).tags)
    assert tags["form"] == {"method": "post", "action": "/r/abc1234"}
    field = tags["input"]
    assert field["name"] == "password"
    assert field["type"] == "password"
    assert "autofocus" in field
    assert 'role="alert"' not in body.decode()


def test_password_page_shows_the_error() -> None:
    body = page("password", short_code="abc1234", error="That password is not right.").decode()
    assert '<p class="error" role="alert">That password is not right.</p>' in body


def test_interpolated_values_are_escaped() -> None:
    hostile_code = '"><script>alert(1)</script><a href="'
    hostile_error = "<img src=x onerror=alert(1)> & \"quotes\" 'too'"
    body = page("password", short_code=hostile_code, error=hostile_error)
    text = body.decode()
    parsed = parse(body)
    names = [tag for tag, _ in parsed.tags]
    assert "script" not in names
    assert "img" not in names
    assert "a" not in names
    assert "<script>" not in text
    assert "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quotes&quot; &#x27;too&#x27;" in text
    form = dict(parsed.tags)["form"]
    assert form["action"] == "/r/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E%3Ca%20href%3D%22"


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown page kind"):
        page("teapot")


def test_constants_name_the_kinds() -> None:
    assert {
        pages.PASSWORD,
        pages.THROTTLED,
        pages.NOT_YET_ACTIVE,
        pages.EXPIRED,
        pages.UNAVAILABLE,
        pages.LIMIT_REACHED,
        pages.PAUSED,
        pages.UNKNOWN,
    } == KINDS
