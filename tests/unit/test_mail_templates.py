"""Mail templates and messages without a server: every template renders both parts with or without its
values, values are escaped in HTML, links are web addresses only, and no value can add a header."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from qrmesh.platform.events import new_mail
from qrmesh.platform.settings import Settings, SettingsError
from qrmesh.webhooks.mailer import (
    TEMPLATES,
    InvalidMail,
    MailerConfig,
    Rendered,
    Templates,
    build_message,
    parse_recipient,
    parse_sender,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
EVERYTHING = {
    "link": "https://qrmesh.example/x?token=a&b=c",
    "expires_at": "2026-11-25 12:00 UTC",
    "display_name": "Ada <b>Lovelace</b>",
    "organization_name": "Acme & Co",
    "inviter": "Grace",
    "role": "editor",
    "url": "https://hooks.example/in",
    "last_error": "HTTP 503 <html>",
    "failures": "5",
    "alert_name": "Poster",
    "code": "spring",
    "count": "1000",
    "window": "1 hour",
}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("variables", [EVERYTHING, {}], ids=["all values", "no values"])
def test_every_template_renders_a_subject_and_both_parts(template: str, variables: dict[str, str]) -> None:
    rendered = Templates().render(template, variables)
    assert rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text.strip()
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "<b>" not in rendered.html
    assert "<html>\n" not in rendered.text.split("HTTP 503")[0]
    assert "None" not in rendered.text
    assert "Undefined" not in rendered.html


def test_html_escapes_every_value_and_text_keeps_it() -> None:
    rendered = Templates().render("invitation", EVERYTHING)
    assert "Acme &amp; Co" in rendered.html
    assert "Acme & Co" in rendered.text
    assert rendered.subject == "Join Acme & Co on qrmesh"
    rendered = Templates().render("verify_email", {"display_name": "<script>alert(1)</script>"})
    assert "&lt;script&gt;" in rendered.html
    assert "<script>" not in rendered.html
    assert "Hello <script>alert(1)</script>," in rendered.text


def test_links_that_are_not_web_addresses_are_left_out() -> None:
    rendered = Templates().render("verify_email", {"link": "javascript:alert(1)"})
    assert "javascript" not in rendered.html
    assert "javascript" not in rendered.text
    assert "href" not in rendered.html.split("<body")[1]


def test_producers_may_name_values_either_way() -> None:
    rendered = Templates().render("scan_alert", {"name": "Poster", "organization": "Acme", "count": "10"})
    assert rendered.subject == "Scan alert: Poster"
    assert "in Acme" in rendered.text
    assert "got 10 scans" in rendered.text


def test_unknown_templates_are_refused() -> None:
    with pytest.raises(InvalidMail, match="unknown template"):
        Templates().render("../../etc/passwd", {})


@pytest.mark.parametrize(
    "address",
    [
        "a@b.c\r\nBcc: x@y.z",
        "a@b.c\nX: y",
        "Ada <a@b.c>",
        "a@b.c, x@y.z",
        "a@b.c;x@y.z",
        "no-at-sign",
        "a@",
        "a b@c.d",
        "",
        "a" * 250 + "@b.c",
    ],
)
def test_recipients_must_be_one_plain_address(address: str) -> None:
    with pytest.raises(InvalidMail):
        parse_recipient(address)


def test_a_plain_address_passes() -> None:
    assert parse_recipient(" ada@example.com ") == "ada@example.com"
    assert parse_recipient("zoë+tag@xn--exmple-cua.com") == "zoë+tag@xn--exmple-cua.com"


def test_no_value_can_add_a_header() -> None:
    sender = parse_sender("qrmesh <no-reply@qrmesh.example>")
    mail = new_mail("ada@example.com", "verify_email", {}, id="0193-mail")
    with pytest.raises(InvalidMail, match="line break"):
        build_message(mail, Rendered("Hi\r\nBcc: x@y.z", "text", "<p>html</p>"), sender, now=NOW)
    # Values reach the subject through a template, which folds any line break into a space.
    rendered = Templates().render("invitation", {"organization_name": "Acme\r\nBcc: x@y.z"})
    assert rendered.subject == "Join Acme Bcc: x@y.z on qrmesh"
    message = build_message(mail, rendered, sender, now=NOW)
    assert message.get_all("Bcc") is None
    assert message["Message-ID"] == "<0193-mail@qrmesh.example>"
    assert message["From"] == "qrmesh <no-reply@qrmesh.example>"
    assert message["Date"] == "Tue, 24 Nov 2026 12:00:00 +0000"
    bad = new_mail("ada@example.com\nBcc: x@y.z", "verify_email", {})
    with pytest.raises(InvalidMail):
        build_message(bad, rendered, sender, now=NOW)


def test_settings_for_the_mailer_parse_and_refuse_clearly() -> None:
    base = Settings(service="webhooks", database_url="postgresql://x", redis_url="redis://x")
    assert MailerConfig.from_settings(base).smtp_host == ""
    tls = dataclasses.replace(base, extra={"SMTP_HOST": "smtp.example", "SMTP_TLS": "true"})
    assert MailerConfig.from_settings(tls).smtp_port == 465
    plain = MailerConfig.from_settings(
        dataclasses.replace(base, extra={"SMTP_HOST": "smtp.example", "SMTP_STARTTLS": "true"})
    )
    assert (plain.smtp_port, plain.smtp_starttls) == (587, True)
    assert "password" not in repr(
        MailerConfig.from_settings(dataclasses.replace(base, extra={"SMTP_PASSWORD": "password"}))
    )
    with pytest.raises(SettingsError, match="QRMESH_WEBHOOKS_SMTP_TLS"):
        MailerConfig.from_settings(dataclasses.replace(base, extra={"SMTP_TLS": "1", "SMTP_STARTTLS": "1"}))
    with pytest.raises(SettingsError, match="QRMESH_WEBHOOKS_MAIL_FROM"):
        MailerConfig.from_settings(dataclasses.replace(base, extra={"MAIL_FROM": "a@b.c\nBcc: d@e.f"}))
    with pytest.raises(SettingsError, match="QRMESH_WEBHOOKS_SMTP_PORT"):
        MailerConfig.from_settings(dataclasses.replace(base, extra={"SMTP_PORT": "x"}))


def test_links_stay_whole_in_the_raw_mail_and_any_text_survives_the_trip() -> None:
    sender = parse_sender("no-reply@qrmesh.example")
    link = "https://qrmesh.example/verify-email?token=" + "x" * 120
    mail = new_mail("ada@example.com", "verify_email", {"link": link})
    raw = build_message(mail, Templates().render("verify_email", {"link": link}), sender, now=NOW).as_bytes()
    assert link.encode() in raw
    zoe = Templates().render("verify_email", {"link": link, "display_name": "Zoë Ångström"})
    message = build_message(mail, zoe, sender, now=NOW)
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    text = parsed.get_body(("plain",))
    assert text is not None
    assert "Hello Zoë Ångström," in str(text.get_content())
