"""Validation rules written in the protos, checked without a server."""

from __future__ import annotations

import pytest

from qrmesh.platform.errors import InvalidArgument
from qrmesh.platform.validation import validate, violations
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2

Request = qr_code_service_pb2.RenderQrCodeRequest


def url_request(url: str, **fields: int) -> Request:
    return Request(content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=url)), **fields)  # type: ignore[arg-type]


def fields_of(message: Request) -> dict[str, str]:
    return {v.field: v.description for v in violations(message)}


def test_valid_request_has_no_violations() -> None:
    assert violations(url_request("https://example.com/a?b=c#d", size=256, quiet_zone=0)) == []


def test_missing_content_is_required() -> None:
    assert fields_of(Request()) == {"content": "is required"}


def test_oneof_without_a_member_names_the_choices() -> None:
    found = fields_of(Request(content=qr_code_pb2.Content()))
    assert found["content"].startswith("exactly one of url, text, email, phone, sms, wifi, vcard,")
    assert found["content"].endswith("whatsapp must be set")


def test_empty_url_is_required() -> None:
    message = Request(content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload()))
    assert fields_of(message) == {"content.url.url": "is required"}


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "data:text/html,<b>x</b>",
        "file:///etc/passwd",
        "ftp://example.com/",
        "https://",
        "example.com",
        "https://exa mple.com/",
        "https://example.com:99999/",
        "http://example.com/\nSet-Cookie:x",
    ],
)
def test_urls_that_are_not_absolute_http_are_refused(url: str) -> None:
    found = fields_of(url_request(url))
    assert found == {"content.url.url": "must be an absolute URL starting with http:// or https://"}


def test_url_length_is_limited() -> None:
    found = fields_of(url_request("https://example.com/" + "a" * 2048))
    assert found["content.url.url"].startswith("must be at most 2048 characters long")


def test_integer_range_reports_bounds_and_value() -> None:
    assert fields_of(url_request("https://a.example", size=5000)) == {"size": "must be between 0 and 4096 (got 5000)"}
    assert fields_of(url_request("https://a.example", quiet_zone=17)) == {
        "quietZone": "must be between 0 and 16 (got 17)"
    }


def test_optional_field_set_to_zero_is_checked_and_allowed() -> None:
    message = url_request("https://a.example", quiet_zone=0)
    assert message.HasField("quiet_zone")
    assert violations(message) == []


def test_unknown_enum_number_is_refused() -> None:
    message = url_request("https://a.example")
    message.format = 42  # type: ignore[assignment]  # what a client on a newer contract may send
    assert fields_of(message) == {"format": "must be one of PNG, SVG, PDF, EPS, JPEG, WEBP (got 42)"}


def test_every_violation_is_reported_at_once() -> None:
    message = url_request("javascript:x", size=9999, quiet_zone=99)
    assert set(fields_of(message)) == {"content.url.url", "size", "quietZone"}


def test_validate_raises_invalid_argument_with_violations() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(url_request(""))
    assert caught.value.violations[0].field == "content.url.url"
    assert str(caught.value) == "content.url.url: is required"


def test_nul_is_refused_in_any_string_even_without_rules() -> None:
    message = url_request("https://a.example")
    message.content.url.url = "https://a.example/\x00"
    found = [v.description for v in violations(message) if v.field == "content.url.url"]
    assert "must not contain NUL characters" in found
    from qrmesh.identity.v1 import identity_pb2, identity_service_pb2

    request = identity_service_pb2.CreateOrganizationRequest(
        organization=identity_pb2.Organization(display_name="Ac\x00me"), request_id="a\x00b"
    )
    assert {v.field for v in violations(request)} == {"organization.displayName", "requestId"}


def test_every_contract_message_has_valid_rules() -> None:
    """Rules are compiled for every message of every contract (a bad rule fails here, not in production)."""
    from google.protobuf import descriptor_pool
    from google.protobuf.descriptor import Descriptor

    from qrmesh.identity.v1 import identity_service_pb2
    from qrmesh.platform.validation import _plan

    pool = descriptor_pool.Default()
    seen = 0

    def walk(message: Descriptor) -> None:
        nonlocal seen
        _plan(message)
        seen += 1
        for nested in message.nested_types:
            walk(nested)

    for name in [qr_code_service_pb2.DESCRIPTOR.name, identity_service_pb2.DESCRIPTOR.name]:
        for dependency in [pool.FindFileByName(name), *pool.FindFileByName(name).dependencies]:
            for message in dependency.message_types_by_name.values():
                walk(message)
    assert seen > 50


def test_oversized_strings_never_reach_the_pattern() -> None:
    """An adversarial email far over max_len is refused by length alone (the pattern never runs on it)."""
    from qrmesh.identity.v1 import identity_service_pb2

    hostile = "a@" + "." * 200_000 + "@"
    request = identity_service_pb2.SignUpRequest(email=hostile, password="x" * 12)
    assert [v.description for v in violations(request) if v.field == "email"] == [
        "must be at most 254 characters long (got 200003)"
    ]
