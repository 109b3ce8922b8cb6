"""The mailer: consumes the mail stream, renders each mail's template (text and HTML) and sends it over SMTP.

Producers (identity's outbox relay, webhooks, analytics alerts) append `qrmesh.events.v1.Mail` entries to
the stream `mail` (QRMESH_MAIL_STREAM). The mailer reads them as the consumer group "mailer" and, per mail:

- refuses what cannot be sent safely (an unknown template, a malformed recipient, a header value with CR or
  LF): dead-lettered to `<stream>:dead` with the reason, acknowledged, counted;
- sends each mail id once: a short lock key while sending and a "sent" key kept for a week, set only after
  the server accepted the mail, so a mail appended twice or redelivered after a crash is not sent again;
- acknowledges the entry once the SMTP server accepted it (or refused it for good, 5xx: dead-lettered);
- retries temporary failures (4xx answers, connection failures, timeouts) with exponential backoff, keeping the
  entry pending meanwhile (another replica claims it with XAUTOCLAIM if this one goes away).

It runs inside the webhooks service (`attach(resources)`), configured with QRMESH_WEBHOOKS_SMTP_*; without an
SMTP host it does not start and says so in the log (mails wait in the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2
import redis.asyncio as redis
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from qrmesh.events.v1 import event_pb2
from qrmesh.platform import tasks
from qrmesh.platform.events import MAIL_FIELD
from qrmesh.platform.metrics import REGISTRY
from qrmesh.platform.server import Resources
from qrmesh.platform.settings import Settings, SettingsError, int_setting
from qrmesh.platform.telemetry import extract_context
from qrmesh.webhooks.config import flag as _flag
from qrmesh.webhooks.config import seconds as _seconds

log = logging.getLogger("qrmesh.webhooks.mailer")
_tracer = trace.get_tracer("qrmesh.webhooks.mailer")

GROUP = "mailer"
"""The consumer group on the mail stream."""
TEMPLATES = ("verify_email", "reset_password", "invitation", "webhook_failing", "scan_alert")
"""Every template the mailer knows; a mail naming another is dead-lettered."""
TEMPLATE_DIR = Path(__file__).with_name("templates")
SENT_KEY = "qrmesh:mail:sent:{}"
"""Set (for SENT_TTL) once the SMTP server accepted the mail with this id."""
SENDING_KEY = "qrmesh:mail:sending:{}"
"""Held while one consumer sends the mail with this id, so two never send it at once."""
SENT_TTL = 7 * 86_400
DEAD_SUFFIX = ":dead"
DEAD_MAXLEN = 100_000
MAX_VARIABLE = 4096
"""Characters of one variable a mail may carry (longer values are cut, with an ellipsis)."""
DEFAULT_FROM = "qrmesh <no-reply@localhost>"
RETRY_MAX = 300.0
"""Seconds between two attempts at most."""
_ALIASES = (("organization_name", "organization"), ("alert_name", "name"), ("url", "webhook_url"))
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

SENT = Counter("qrmesh_mail_sent", "Mails the SMTP server accepted, by template.", ["template"], registry=REGISTRY)
FAILED = Counter(
    "qrmesh_mail_failed",
    "Mails that failed, by template and outcome (retry: a temporary failure, tried again later; dead: refused "
    "for good or invalid, set aside in the dead-letter stream).",
    ["template", "outcome"],
    registry=REGISTRY,
)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class MailerConfig:
    """Where and how mail is sent (QRMESH_WEBHOOKS_SMTP_* and QRMESH_WEBHOOKS_MAIL_*)."""

    smtp_host: str = ""
    """QRMESH_WEBHOOKS_SMTP_HOST: the SMTP server; empty: the mailer does not start."""
    smtp_port: int = 0
    """QRMESH_WEBHOOKS_SMTP_PORT: 0 means 465 with implicit TLS, else 587."""
    smtp_username: str = ""
    """QRMESH_WEBHOOKS_SMTP_USERNAME: log in with this user (and the password) when set."""
    smtp_password: str = field(default="", repr=False)
    """QRMESH_WEBHOOKS_SMTP_PASSWORD."""
    smtp_starttls: bool | None = None
    """QRMESH_WEBHOOKS_SMTP_STARTTLS: true requires STARTTLS, false never uses it; unset: when offered."""
    smtp_tls: bool = False
    """QRMESH_WEBHOOKS_SMTP_TLS: implicit TLS from the first byte (port 465)."""
    smtp_timeout: float = 30.0
    """QRMESH_WEBHOOKS_SMTP_TIMEOUT: seconds for connecting and for each answer."""
    smtp_validate_certs: bool = True
    """QRMESH_WEBHOOKS_SMTP_VALIDATE_CERTS: verify the server's certificate (TLS)."""
    mail_from: str = DEFAULT_FROM
    """QRMESH_WEBHOOKS_MAIL_FROM: the From header and envelope sender."""
    retry_base: float = 2.0
    """QRMESH_WEBHOOKS_MAIL_RETRY_BASE: seconds before the first retry of a temporary failure (doubling)."""
    max_attempts: int = 12
    """QRMESH_WEBHOOKS_MAIL_MAX_ATTEMPTS: attempts before a temporarily failing mail is dead-lettered."""
    claim_idle: float = 600.0
    """QRMESH_WEBHOOKS_MAIL_CLAIM_IDLE: seconds a pending mail stays with a consumer before another claims it."""
    block: float = 2.0
    """Seconds one read waits for new mail."""
    batch: int = 20
    """Mails read at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MailerConfig:
        """Parse QRMESH_WEBHOOKS_SMTP_* / _MAIL_*, failing with a message that names the bad variable."""
        extra = dict(settings.extra)
        tls = _flag(extra, "SMTP_TLS", False)
        starttls_raw = extra.get("SMTP_STARTTLS", "").strip()
        starttls = _flag(extra, "SMTP_STARTTLS", False) if starttls_raw else None
        if tls and starttls:
            raise SettingsError("QRMESH_WEBHOOKS_SMTP_TLS and QRMESH_WEBHOOKS_SMTP_STARTTLS cannot both be true")
        port = int_setting(
            {f"QRMESH_WEBHOOKS_{k}": v for k, v in extra.items()}, "QRMESH_WEBHOOKS_SMTP_PORT", 0, low=0, high=65535
        )
        attempts = int_setting(
            {f"QRMESH_WEBHOOKS_{k}": v for k, v in extra.items()},
            "QRMESH_WEBHOOKS_MAIL_MAX_ATTEMPTS",
            12,
            low=1,
            high=1000,
        )
        sender = extra.get("MAIL_FROM", "").strip() or DEFAULT_FROM
        try:
            parse_sender(sender)
        except InvalidMail as exc:
            raise SettingsError(f"QRMESH_WEBHOOKS_MAIL_FROM: {exc}") from None
        return cls(
            smtp_host=extra.get("SMTP_HOST", "").strip(),
            smtp_port=port or (465 if tls else 587),
            smtp_username=extra.get("SMTP_USERNAME", "").strip(),
            smtp_password=extra.get("SMTP_PASSWORD", ""),
            smtp_starttls=starttls,
            smtp_tls=tls,
            smtp_timeout=_seconds(extra, "SMTP_TIMEOUT", 30.0, low=0.1, high=600.0),
            smtp_validate_certs=_flag(extra, "SMTP_VALIDATE_CERTS", True),
            mail_from=sender,
            retry_base=_seconds(extra, "MAIL_RETRY_BASE", 2.0, low=0.001, high=3600.0),
            max_attempts=attempts,
            claim_idle=_seconds(extra, "MAIL_CLAIM_IDLE", 600.0, low=0.01, high=86_400.0),
        )


# ------------------------------------------------------------------------------------------------ rendering


class InvalidMail(ValueError):
    """A mail that can never be sent as it is (dead-lettered, never retried)."""


def _header(value: str, what: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise InvalidMail(f"{what} contains a line break")
    return value


def parse_recipient(value: str) -> str:
    """A bare address `local@domain`, or InvalidMail: no display names, no line breaks, no lists."""
    _header(value, "the recipient")
    address = value.strip()
    if len(address) > 254 or not _ADDRESS.fullmatch(address):
        raise InvalidMail(f"the recipient {address[:80]!r} is not a single email address")
    return address


def parse_sender(value: str) -> Address:
    """The From setting, `Name <local@domain>` or `local@domain`."""
    _header(value, "the sender")
    text = value.strip()
    match = re.fullmatch(r"(?:(.*?)\s*<([^<>]+)>|([^<>\s]+))", text)
    if match is None:
        raise InvalidMail(f"{text!r} is not an address (`Name <local@domain>` or `local@domain`)")
    name = (match.group(1) or "").strip().strip('"')
    address = parse_recipient(match.group(2) or match.group(3))
    local, _, domain = address.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A mail's subject and its two bodies."""

    subject: str
    text: str
    html: str


class Templates:
    """The mail templates: `<name>.subject.txt`, `<name>.txt` and `<name>.html` for each name in TEMPLATES.

    HTML is autoescaped (every variable), text is not; a variable a mail does not carry renders empty, so
    templates test `{% if name %}` for optional parts.
    """

    def __init__(self, directory: Path = TEMPLATE_DIR) -> None:
        loader = jinja2.FileSystemLoader(str(directory))
        self._html = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.ChainableUndefined, keep_trailing_newline=True
        )
        self._text = jinja2.Environment(
            loader=loader,
            autoescape=False,  # noqa: S701 - plain text, never HTML
            undefined=jinja2.ChainableUndefined,
            keep_trailing_newline=True,
        )

    def render(self, template: str, variables: Mapping[str, str]) -> Rendered:
        """Render one template; InvalidMail for an unknown one."""
        if template not in TEMPLATES:
            raise InvalidMail(f"unknown template {template[:80]!r}")
        values = {str(k): (v if len(v) <= MAX_VARIABLE else v[: MAX_VARIABLE - 1] + "…") for k, v in variables.items()}
        for name, alias in _ALIASES:  # producers may name a value either way
            if not values.get(name) and values.get(alias):
                values[name] = values[alias]
        for name in ("link", "url"):  # links are followed from mail: web addresses only, never `javascript:`
            if name in values and not values[name].lower().startswith(("https://", "http://")):
                del values[name]
        subject = " ".join(self._text.get_template(f"{template}.subject.txt").render(values).split())
        if not subject:
            raise InvalidMail(f"the template {template!r} rendered an empty subject")
        return Rendered(
            subject=subject,
            text=self._text.get_template(f"{template}.txt").render(values),
            html=self._html.get_template(f"{template}.html").render(values),
        )


def build_message(mail: event_pb2.Mail, rendered: Rendered, sender: Address, *, now: datetime) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) with From, To, Subject, Date and a Message-ID
    derived from the mail id; InvalidMail when a header value would carry a line break."""
    to = parse_recipient(mail.to)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = _header(rendered.subject, "the subject")
    message["Date"] = format_datetime(now)
    message_id = re.sub(r"[^A-Za-z0-9.-]", "", mail.id)[:128] or "mail"
    message["Message-ID"] = f"<{message_id}@{sender.domain or 'qrmesh'}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text, cte=_encoding(rendered.text))
    message.add_alternative(rendered.html, subtype="html", cte=_encoding(rendered.html))
    return message


def _encoding(body: str) -> str:
    """7bit when SMTP can carry the body as it is (ASCII, lines within 998 characters), so links stay whole
    for anyone reading the raw mail; quoted-printable otherwise."""
    plain = body.isascii() and all(len(line) <= 998 for line in body.splitlines())
    return "7bit" if plain else "quoted-printable"


# ------------------------------------------------------------------------------------------------ sending


class TemporaryFailure(Exception):
    """The server or network failed in a way worth another try later."""


class PermanentFailure(Exception):
    """The server refused the mail for good (5xx)."""


def _classify(error: BaseException) -> Exception:
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        # A wrong password is the operator's to fix: keep the mail and try again.
        return TemporaryFailure(f"SMTP login refused ({error.code}): {error.message}")
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in error.recipients]
        text = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return PermanentFailure(f"recipient refused: {text}")
        return TemporaryFailure(f"recipient deferred: {text}")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        if 500 <= error.code < 600:
            return PermanentFailure(f"refused ({error.code}): {error.message}")
        return TemporaryFailure(f"deferred ({error.code}): {error.message}")
    return TemporaryFailure(f"{type(error).__name__}: {error}")


@dataclass(order=True, slots=True)
class _Retry:
    due: float
    entry_id: bytes = field(compare=False)
    fields: dict[bytes, bytes] = field(compare=False)
    attempt: int = field(compare=False)


class Mailer:
    """One consumer of the mail stream (group "mailer")."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        config: MailerConfig,
        *,
        templates: Templates | None = None,
        name: str | None = None,
        group: str = GROUP,
        start_id: str = "0",
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.start_id = start_id
        """Where a new group starts reading: "0" (the stream's first entry) or "$" (entries appended later)."""
        self.dead_stream = stream + DEAD_SUFFIX
        self.config = config
        self.templates = templates or Templates()
        self.sender = parse_sender(config.mail_from)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.sent = 0
        """Mails this consumer sent (for tests and logs)."""
        self.dead = 0
        self._retries: list[_Retry] = []
        self._waiting: set[bytes] = set()
        self._claimed_at = -1e18
        self._claim_cursor = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._tls_context: ssl.SSLContext | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the group if missing and consume in the background."""
        await self.ensure_group()
        self._task = asyncio.create_task(self._run(), name=f"mailer-{self.name}")
        log.info(
            "mailer started",
            extra={"stream": self.stream, "smtp_host": self.config.smtp_host, "smtp_port": self.config.smtp_port},
        )

    async def close(self) -> None:
        """Stop consuming (a mail being sent is abandoned and stays pending, to be claimed later)."""
        task, self._task = self._task, None
        await tasks.stop(task)

    async def ensure_group(self) -> None:
        """Create the stream and the group if missing (a new group starts at `start_id`)."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep consuming once Redis answers again
                failures += 1
                log.warning("reading the mail stream failed", extra={"attempt": failures, "error": repr(exc)})
                if "NOGROUP" in str(exc):
                    with contextlib.suppress(Exception):
                        await self.ensure_group()
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 30.0))

    # -- one step ----------------------------------------------------------------------------------

    async def step(self) -> int:
        """Handle due retries, claimed idle entries or new ones; how many mails were handled."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        handled = 0
        while self._retries and self._retries[0].due <= now:
            retry = heapq.heappop(self._retries)
            self._waiting.discard(retry.entry_id)
            await self.handle(retry.entry_id, retry.fields, attempt=retry.attempt)
            handled += 1
        if handled:
            return handled
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        if now - self._claimed_at >= min(self.config.claim_idle, 5.0):
            entries = await self.claim()
            if not entries:
                self._claimed_at = now
        if not entries:
            block = self.config.block
            if self._retries:
                block = max(0.001, min(block, self._retries[0].due - now))
            answer: Any = await self.redis.xreadgroup(
                self.group, self.name, {self.stream: ">"}, count=self.config.batch, block=max(1, int(block * 1000))
            )
            for _, items in answer or []:
                entries.extend(items)
        for entry_id, fields in entries:
            if entry_id in self._waiting:
                continue
            await self.handle(entry_id, fields, attempt=1)
            handled += 1
        return handled

    async def claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Take over entries pending with another consumer (gone, or slow) for longer than claim_idle."""
        answer: Any = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=int(self.config.claim_idle * 1000),
            start_id=self._claim_cursor,
            count=self.config.batch,
        )
        if not answer:
            self._claim_cursor = "0-0"
            return []
        cursor = answer[0]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        entries = []
        for entry_id, fields in answer[1]:
            raw = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
            if fields is None:  # trimmed from the stream meanwhile: nothing left to send
                await self.redis.xack(self.stream, self.group, raw)
                continue
            entries.append((raw, fields))
        return entries

    # -- one mail ----------------------------------------------------------------------------------

    async def handle(self, entry_id: bytes, fields: dict[bytes, bytes], *, attempt: int) -> None:
        """Send one entry's mail (once), dead-letter it, or schedule a retry."""
        raw = fields.get(MAIL_FIELD.encode(), b"")
        mail = event_pb2.Mail()
        try:
            mail.ParseFromString(raw)
            if not mail.id:
                raise InvalidMail("the mail has no id")
        except (DecodeError, InvalidMail) as exc:
            await self._dead(entry_id, raw, mail, str(exc) if isinstance(exc, InvalidMail) else "not a Mail")
            return
        context = extract_context(mail.traceparent, mail.tracestate)
        with _tracer.start_as_current_span(
            "mail send",
            context=context,
            kind=SpanKind.PRODUCER,
            attributes={"messaging.message.id": mail.id, "qrmesh.mail.template": mail.template},
        ) as span:
            try:
                outcome = await self._send_once(mail, attempt=attempt)
            except InvalidMail as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await self._dead(entry_id, raw, mail, str(exc))
                return
            except PermanentFailure as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await self._dead(entry_id, raw, mail, str(exc))
                return
            except TemporaryFailure as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                FAILED.labels(_label(mail.template), "retry").inc()
                if attempt >= self.config.max_attempts:
                    await self._dead(entry_id, raw, mail, f"gave up after {attempt} attempts: {exc}")
                    return
                delay = min(self.config.retry_base * 2 ** (attempt - 1), RETRY_MAX)
                log.warning(
                    "mail deferred",
                    extra={"mail_id": mail.id, "template": mail.template, "attempt": attempt, "error": str(exc)},
                )
                due = asyncio.get_running_loop().time() + delay
                heapq.heappush(self._retries, _Retry(due, entry_id, fields, attempt + 1))
                self._waiting.add(entry_id)
                return
            except RedisError:
                raise  # the loop backs off; the entry stays pending and is claimed again
            except Exception as exc:  # one bad mail must not stall the others or loop forever
                span.set_status(Status(StatusCode.ERROR, repr(exc)))
                log.exception("mail failed unexpectedly", extra={"mail_id": mail.id, "template": mail.template})
                await self._dead(entry_id, raw, mail, f"unexpected error: {exc!r}")
                return
            span.set_attribute("qrmesh.mail.outcome", outcome)
        await self.redis.xack(self.stream, self.group, entry_id)

    async def _send_once(self, mail: event_pb2.Mail, *, attempt: int) -> str:
        """'sent', or 'duplicate' when the id was sent before; raises InvalidMail, PermanentFailure or
        TemporaryFailure (also while another consumer is sending the same id)."""
        sent_key = SENT_KEY.format(mail.id)
        if await self.redis.exists(sent_key):
            log.info("mail sent before, skipped", extra={"mail_id": mail.id})
            return "duplicate"
        rendered = self.templates.render(mail.template, mail.variables)
        message = build_message(mail, rendered, self.sender, now=datetime.now(UTC))
        recipient = parse_recipient(mail.to)
        sending_key = SENDING_KEY.format(mail.id)
        lock_ms = int((self.config.smtp_timeout * 4 + 30) * 1000)
        if not await self.redis.set(sending_key, self.name, nx=True, px=lock_ms):
            raise TemporaryFailure("another consumer is sending this mail")
        if await self.redis.exists(sent_key):  # sent by another consumer between the first look and the lock
            await self.redis.delete(sending_key)
            log.info("mail sent before, skipped", extra={"mail_id": mail.id})
            return "duplicate"
        try:
            await self._smtp(message, recipient)
        except BaseException:
            await self.redis.delete(sending_key)
            raise
        await self.redis.set(sent_key, "1", ex=SENT_TTL)
        await self.redis.delete(sending_key)
        self.sent += 1
        SENT.labels(_label(mail.template)).inc()
        log.info("mail sent", extra={"mail_id": mail.id, "template": mail.template, "attempt": attempt})
        return "sent"

    async def _smtp(self, message: EmailMessage, recipient: str) -> None:
        config = self.config
        if (config.smtp_tls or config.smtp_starttls is not False) and self._tls_context is None:
            self._tls_context = ssl.create_default_context()
            if not config.smtp_validate_certs:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl.CERT_NONE
        try:
            await aiosmtplib.send(
                message,
                sender=self.sender.addr_spec,
                recipients=[recipient],
                hostname=config.smtp_host,
                port=config.smtp_port,
                username=config.smtp_username or None,
                password=(config.smtp_password or None) if config.smtp_username else None,
                use_tls=config.smtp_tls,
                start_tls=config.smtp_starttls,
                timeout=config.smtp_timeout,
                validate_certs=config.smtp_validate_certs,
                tls_context=self._tls_context,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _classify(exc) from exc

    async def _dead(self, entry_id: bytes, raw: bytes, mail: event_pb2.Mail, reason: str) -> None:
        """Set an entry aside in the dead-letter stream with why, and acknowledge it."""
        self.dead += 1
        FAILED.labels(_label(mail.template), "dead").inc()
        log.error("mail dead-lettered", extra={"mail_id": mail.id, "template": mail.template, "reason": reason})
        await self.redis.xadd(
            self.dead_stream,
            {MAIL_FIELD: raw, "reason": reason[:1000], "entry": entry_id},
            maxlen=DEAD_MAXLEN,
            approximate=True,
        )
        await self.redis.xack(self.stream, self.group, entry_id)


def _label(template: str) -> str:
    return template if template in TEMPLATES else "unknown"


# ------------------------------------------------------------------------------------------------ wiring


def attach(resources: Resources) -> None:
    """Run a mailer in this service (start after migrations, stop when shutdown begins), if an SMTP host is
    configured (QRMESH_WEBHOOKS_SMTP_HOST); without one, log that mail is not sent."""
    config = MailerConfig.from_settings(resources.settings)
    if not config.smtp_host:
        log.warning(
            "mail is not sent: QRMESH_WEBHOOKS_SMTP_HOST is not set (mails wait in the stream)",
            extra={"stream": resources.settings.mail_stream},
        )
        return
    if resources.redis is None:
        raise RuntimeError("the mailer needs Redis")
    mailer = Mailer(resources.redis, resources.settings.mail_stream, config)
    resources.on_start.append(mailer.start)
    resources.on_stopping.append(mailer.close)
