"""Identity's outbox rows as `Mail`: the id is stable per row, so a row appended again after a crash is the
same mail to the mailer (sent once)."""

from __future__ import annotations

from datetime import UTC, datetime

from qrmesh.identity.outbox_relay import mail_origin, to_mail
from qrmesh.identity.store import OutboxMail

WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def row(**changes: object) -> OutboxMail:
    values: dict[str, object] = {
        "id": 7,
        "mail_id": "0193a1b2-mail",
        "recipient": "ada@example.com",
        "template": "verify_email",
        "variables": {"link": "https://qrmesh.example/verify-email?token=t", "display_name": "Ada"},
        "subject": "Confirm your email address for qrmesh",
        "body": "text",
        "organization": "",
        "created_at": WHEN,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "",
    }
    values.update(changes)
    return OutboxMail(**values)  # type: ignore[arg-type]


def test_a_row_becomes_the_mail_it_describes() -> None:
    mail = to_mail(row())
    assert (mail.id, mail.to, mail.template) == ("0193a1b2-mail", "ada@example.com", "verify_email")
    assert dict(mail.variables) == {"link": "https://qrmesh.example/verify-email?token=t", "display_name": "Ada"}
    assert mail.time.ToDatetime(tzinfo=UTC) == WHEN
    assert mail.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_same_row_always_gives_the_same_id() -> None:
    assert to_mail(row()).id == to_mail(row()).id
    older = row(mail_id=None)
    assert to_mail(older).id == to_mail(older).id
    assert to_mail(older).id != to_mail(row(mail_id=None, id=8)).id
    # A database recreated from scratch numbers rows from 1 again: the time keeps the ids apart.
    assert to_mail(older).id != to_mail(row(mail_id=None, created_at=datetime(2026, 11, 25, tzinfo=UTC))).id


def test_rows_queued_as_text_only_still_carry_their_link() -> None:
    mail = to_mail(row(variables={}, body="Open this link:\n\nhttps://qrmesh.example/reset-password?token=x\n"))
    assert dict(mail.variables) == {"link": "https://qrmesh.example/reset-password?token=x"}


def test_each_queued_mail_gets_a_new_id() -> None:
    assert mail_origin()["mail_id"] != mail_origin()["mail_id"]
