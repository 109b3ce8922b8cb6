"""Mail end to end over real sockets: the mailer consuming a private mail stream in a real Redis and sending
to a real SMTP server (aiosmtpd, on a free port); identity's outbox relay feeding it from a sign-up."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import redis.asyncio as redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qrmesh.auth.v1 import policy_pb2
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform import events
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.stack import start_mail_sink
from qrmesh.webhooks.mailer import FAILED, Mailer, MailerConfig
from tests.integration.billing_helpers import grant
from tests.integration.identity_helpers import sign_up

WAIT = 30.0
"""Seconds a test waits for something that happens within milliseconds when all is well."""


class Inbox:
    """An aiosmtpd handler that keeps what it accepts, answering the first `defer` DATA commands with 451 and
    every one with `refuse` (a 5xx line) when set."""

    def __init__(self, *, defer: int = 0, refuse: str = "") -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.attempts = 0
        self.defer = defer
        self.refuse = refuse
        self._lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        with self._lock:
            self.attempts += 1
            if self.refuse:
                return self.refuse
            if self.attempts <= self.defer:
                return "451 4.3.0 Try again later"
            message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
            assert isinstance(message, EmailMessage)
            self.messages.append(message)
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m, r in zip(self.messages, self.recipients, strict=True) if address in r]


@pytest.fixture
def smtp() -> Iterator[Callable[..., tuple[Inbox, int]]]:
    """Start SMTP servers (the local stack's sink controller, port 0) with an `Inbox` handler each."""
    stoppers: list[Callable[[], None]] = []

    def start(**options: Any) -> tuple[Inbox, int]:
        inbox = Inbox(**options)
        port, stop = start_mail_sink(Path("unused"), "127.0.0.1", 0, handler=inbox)
        stoppers.append(stop)
        return inbox, port

    yield start
    for stop in stoppers:
        stop()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
async def mailers(client: redis.Redis) -> AsyncIterator[Callable[..., Mailer]]:
    """Mailers on a private stream (or the one given) with a private group, stopped at the end."""
    started: list[Mailer] = []
    stream = f"test-mail-{secrets.token_hex(6)}"

    def make(port: int, *, on: str | None = None, start_id: str = "0", **config: Any) -> Mailer:
        options: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_timeout": 10.0,
            "retry_base": 0.05,
            "block": 0.2,
            **config,
        }
        mailer = Mailer(
            client,
            on or stream,
            MailerConfig(**options),
            group=f"mailer-{secrets.token_hex(4)}",
            name=f"test-{secrets.token_hex(4)}",
            start_id=start_id,
        )
        started.append(mailer)
        return mailer

    yield make
    for mailer in started:
        await mailer.close()
    await client.delete(stream)


async def until(condition: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await _value(condition()):
        if loop.time() > deadline:
            raise AssertionError(f"waited {WAIT}s for {what}")
        await asyncio.sleep(0.02)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def settled(client: redis.Redis, mailer: Mailer, last_entry: str) -> bool:
    """Whether the mailer's group has read up to `last_entry` and nothing is pending."""
    groups = await client.xinfo_groups(mailer.stream)
    group = next(g for g in groups if g["name"].decode() == mailer.group)
    last = group["last-delivered-id"]
    last = last.decode() if isinstance(last, bytes) else str(last)
    return bool(group["pending"] == 0 and last == last_entry) and not mailer._waiting


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


def _address() -> str:
    return f"ada-{secrets.token_hex(4)}@example.com"


async def test_a_mail_is_sent_with_a_text_and_an_html_part_its_values_escaped(
    client: redis.Redis, smtp: Callable[..., tuple[Inbox, int]], mailers: Callable[..., Mailer]
) -> None:
    inbox, port = smtp()
    mailer = mailers(port)
    await mailer.start()
    try:
        to = _address()
        link = "https://qrmesh.example/verify-email?token=abc&x=1"
        mail = events.new_mail(to, "verify_email", {"display_name": "<script>alert(1)</script>", "link": link})
        await events.append(client, mailer.stream, [mail])
        await until(lambda: inbox.to(to), "the mail")
    finally:
        await mailer.close()
    [message] = inbox.to(to)
    assert message.get_content_type() == "multipart/alternative"
    assert message["To"] == to
    assert message["From"] == "qrmesh <no-reply@localhost>"
    assert message["Subject"] == "Confirm your email address for qrmesh"
    assert message["Message-ID"] == f"<{mail.id}@localhost>"
    assert message["Date"]
    text, html = _parts(message)
    assert "Hello <script>alert(1)</script>," in text
    assert link in text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="https://qrmesh.example/verify-email?token=abc&amp;x=1"' in html


async def test_a_mail_appended_twice_or_redelivered_is_sent_once(
    client: redis.Redis, smtp: Callable[..., tuple[Inbox, int]], mailers: Callable[..., Mailer]
) -> None:
    inbox, port = smtp()
    mailer = mailers(port, claim_idle=0.05)
    await mailer.ensure_group()
    to = _address()
    mail = events.new_mail(to, "reset_password", {"link": "https://qrmesh.example/reset-password?token=t"})
    # A consumer that crashed after reading the first copy leaves it pending; the second copy comes later.
    await events.append(client, mailer.stream, [mail])
    await client.xreadgroup(mailer.group, "crashed", {mailer.stream: ">"}, count=1)
    [second] = await events.append(client, mailer.stream, [mail])
    await mailer.start()
    try:
        await until(lambda: settled(client, mailer, second), "both copies handled")
        [third] = await events.append(client, mailer.stream, [mail])
        await until(lambda: settled(client, mailer, third), "the third copy handled")
    finally:
        await mailer.close()
    assert len(inbox.to(to)) == 1
    assert mailer.sent == 1


class PausedRedis(redis.Redis):
    """A real Redis client whose first `exists` answer is held back until `go` is set (after `looked`)."""

    looked: asyncio.Event
    go: asyncio.Event

    async def exists(self, *names: Any) -> Any:
        found = await super().exists(*names)
        if not self.looked.is_set():
            self.looked.set()
            await self.go.wait()
        return found


async def test_two_consumers_sending_the_same_mail_at_once_send_it_once(
    redis_url: str, smtp: Callable[..., tuple[Inbox, int]], mailers: Callable[..., Mailer]
) -> None:
    inbox, port = smtp()
    first = mailers(port)
    paused = PausedRedis.from_url(redis_url)
    assert isinstance(paused, PausedRedis)
    paused.looked, paused.go = asyncio.Event(), asyncio.Event()
    second = Mailer(paused, first.stream, MailerConfig(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=10.0))
    to = _address()
    mail = events.new_mail(to, "reset_password", {"link": "https://qrmesh.example/reset-password?token=t"})
    try:
        async with asyncio.timeout(WAIT):
            # The second consumer has looked (not sent yet) when the first one sends the mail and lets go of it.
            slow = asyncio.create_task(second._send_once(mail, attempt=1))
            await paused.looked.wait()
            assert await first._send_once(mail, attempt=1) == "sent"
            paused.go.set()
            assert await slow == "duplicate"
    finally:
        await paused.aclose()
    assert len(inbox.to(to)) == 1
    assert second.sent == 0


async def test_a_temporary_failure_is_retried(
    client: redis.Redis, smtp: Callable[..., tuple[Inbox, int]], mailers: Callable[..., Mailer]
) -> None:
    inbox, port = smtp(defer=2)
    mailer = mailers(port)
    retries = FAILED.labels("invitation", "retry")._value.get()
    await mailer.start()
    try:
        to = _address()
        variables = {"organization_name": "Acme", "inviter": "Ada", "link": "https://qrmesh.example/accept"}
        await events.append(client, mailer.stream, [events.new_mail(to, "invitation", variables)])
        await until(lambda: inbox.to(to), "the mail after two deferrals")
    finally:
        await mailer.close()
    assert inbox.attempts == 3
    assert FAILED.labels("invitation", "retry")._value.get() == retries + 2
    [message] = inbox.to(to)
    assert message["Subject"] == "Join Acme on qrmesh"
    assert "Ada invited you to join Acme" in _parts(message)[0]


async def test_permanent_failures_and_invalid_mails_are_dead_lettered_and_acknowledged(
    client: redis.Redis, smtp: Callable[..., tuple[Inbox, int]], mailers: Callable[..., Mailer]
) -> None:
    inbox, port = smtp(refuse="550 5.1.1 No such user")
    mailer = mailers(port)
    await mailer.start()
    try:
        mails = [
            events.new_mail(_address(), "scan_alert", {"alert_name": "Poster"}),
            events.new_mail("victim@example.com\r\nBcc: everyone@example.com", "scan_alert", {}),
            events.new_mail(_address(), "no_such_template", {}),
        ]
        ids = await events.append(client, mailer.stream, mails)
        await client.xadd(mailer.stream, {"mail": b"\xff not a mail"})
        newest: Any = await client.xrevrange(mailer.stream, count=1)
        last = newest[0][0].decode()
        await until(lambda: settled(client, mailer, last), "every entry handled")
    finally:
        await mailer.close()
    dead: Any = await client.xrange(mailer.dead_stream)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 4
    assert "550" in reasons[0]
    assert "line break" in reasons[1]
    assert "unknown template" in reasons[2]
    assert reasons[3] == "not a Mail"
    assert [fields[b"entry"].decode() for _, fields in dead][:3] == ids
    assert inbox.attempts == 1  # only the valid one reached the server
    assert inbox.messages == []
    await client.delete(mailer.dead_stream)


async def test_each_mail_gets_a_span_in_its_producers_trace(
    client: redis.Redis,
    smtp: Callable[..., tuple[Inbox, int]],
    mailers: Callable[..., Mailer],
    spans: InMemorySpanExporter,
) -> None:
    inbox, port = smtp()
    mailer = mailers(port)
    trace_id = secrets.token_hex(16)
    mail = events.new_mail(_address(), "webhook_failing", {"url": "https://hooks.example/in", "last_error": "503"})
    mail.traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    await mailer.start()
    try:
        await events.append(client, mailer.stream, [mail])
        await until(lambda: inbox.to(mail.to), "the mail")
        await until(
            lambda: any(s.name == "mail send" for s in spans.get_finished_spans()), "the span"
        )  # ended right after the send
    finally:
        await mailer.close()
    [span] = [s for s in spans.get_finished_spans() if s.name == "mail send"]
    assert span.context is not None
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == mail.id


async def test_the_local_sink_keeps_each_mail_as_an_eml_file(
    client: redis.Redis, mailers: Callable[..., Mailer], tmp_path: Path
) -> None:
    port, stop = start_mail_sink(tmp_path / "mail", "127.0.0.1", 0)
    try:
        mailer = mailers(port)
        await mailer.start()
        try:
            mail = events.new_mail(_address(), "verify_email", {"link": "https://qrmesh.example/v"})
            await events.append(client, mailer.stream, [mail])
            await until(lambda: list((tmp_path / "mail").glob("*.eml")), "the .eml file")
        finally:
            await mailer.close()
    finally:
        stop()
    [path] = list((tmp_path / "mail").glob("*.eml"))
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == mail.to
    assert message["Subject"] == "Confirm your email address for qrmesh"


async def test_a_sign_up_sends_a_verification_mail_with_a_working_link(
    client: redis.Redis,
    smtp: Callable[..., tuple[Inbox, int]],
    mailers: Callable[..., Mailer],
    identity_server: Server,
    base_settings: Settings,
) -> None:
    # The session's identity relays every outbox row to the session's mail stream; this mailer reads what is
    # appended from now on in a group of its own (mail of tests running meanwhile lands in this inbox too).
    inbox, port = smtp()
    mailer = mailers(port, on=base_settings.mail_stream, start_id="$")
    await mailer.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
            account = await sign_up(channel, "mailed")
            await until(lambda: inbox.to(account.email), "the verification mail")
            [message] = inbox.to(account.email)
            text, html = _parts(message)
            [link] = [word for word in text.split() if "/verify-email?token=" in word]
            assert link.startswith(f"{base_settings.public_base_url}/verify-email?token=")
            assert "Hello mailed," in text
            assert "UTC" in text  # when the link stops working
            assert link.replace("&", "&amp;") in html
            token = parse_qs(urlsplit(link).query)["token"][0]
            auth = identity_service_pb2_grpc.AuthServiceStub(channel)
            user = await auth.VerifyEmail(identity_service_pb2.VerifyEmailRequest(token=token))
            assert user.email_verified
            # Asking for a password reset sends the reset mail the same way.
            await auth.RequestPasswordReset(identity_service_pb2.RequestPasswordResetRequest(email=account.email))
            await until(lambda: len(inbox.to(account.email)) == 2, "the reset mail")
            assert inbox.to(account.email)[1]["Subject"] == "Reset your qrmesh password"
    finally:
        await mailer.close()


async def test_an_invitation_sends_its_mail_with_the_organization_and_the_inviter(
    client: redis.Redis,
    smtp: Callable[..., tuple[Inbox, int]],
    mailers: Callable[..., Mailer],
    identity_server: Server,
    billing_server: Server,
    base_settings: Settings,
) -> None:
    inbox, port = smtp()
    mailer = mailers(port, on=base_settings.mail_stream, start_id="$")
    await mailer.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
            owner = await sign_up(channel, "Inviter")
            await grant(billing_server, owner.organization, "business")
            guest = _address()
            organizations = identity_service_pb2_grpc.OrganizationServiceStub(channel)
            invited = await organizations.CreateInvitation(
                identity_service_pb2.CreateInvitationRequest(
                    parent=owner.organization,
                    invitation=identity_pb2.Invitation(email=guest, role=policy_pb2.Role.EDITOR),
                ),
                metadata=owner.metadata(),
            )
            await until(lambda: inbox.to(guest), "the invitation mail")
    finally:
        await mailer.close()
    [message] = inbox.to(guest)
    assert message["Subject"] == "Join Inviter on qrmesh"
    text, html = _parts(message)
    assert "Inviter invited you to join Inviter on qrmesh as editor." in text
    assert f"/accept-invitation?token={invited.token}" in text
    assert "<strong>Inviter</strong>" in html
