"""The webhooks service's decisions: subscriptions, the delivery queue, what each attempt's answer means."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
import time as clock
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from qrmesh.billing.client import Plans, require_feature
from qrmesh.billing.domain.entitlements import WEBHOOKS
from qrmesh.events.v1 import event_pb2
from qrmesh.platform import events
from qrmesh.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from qrmesh.platform.ids import uuid7
from qrmesh.webhooks import names, store
from qrmesh.webhooks.config import WebhooksConfig
from qrmesh.webhooks.domain import envelope, retry
from qrmesh.webhooks.domain.sealing import key_id, seal, unseal
from qrmesh.webhooks.domain.signing import new_secret
from qrmesh.webhooks.domain.ssrf import UNSAFE_REASON, UnsafeUrl, parse_url
from qrmesh.webhooks.sender import AttemptResult, resolve
from qrmesh.webhooks.store import DeliveryRecord, DueDelivery, WebhookRecord

log = logging.getLogger("qrmesh.webhooks.service")

REQUEST_ID_TTL = timedelta(days=1)
CHANGEABLE = ("display_name", "url", "event_types", "qr_codes", "enabled", "contact_email")
_EMAIL = "@"
RESOLVE_TIMEOUT = 3.0
"""Seconds a subscribe-time DNS check may take (a host that does not answer is checked at delivery)."""
MAX_WEBHOOKS = 50
"""Webhooks one organization may have."""


@dataclass(frozen=True, slots=True)
class WebhookChange:
    """The values an update may set (the servicer fills only what the mask names)."""

    display_name: str | None = None
    url: str | None = None
    event_types: list[str] | None = None
    qr_codes: list[str] | None = None
    enabled: bool | None = None
    contact_email: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event to deliver to the webhooks of its organization that want it."""

    id: str
    type: str
    organization_id: str
    subject: str
    time: datetime
    data: Mapping[str, Any]
    traceparent: str = ""
    tracestate: str = ""


def _cursor(time: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([time.isoformat(), key]).encode()).decode().rstrip("=")


def _parse_cursor(token: str, *, uuid_key: bool = False) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        time, key = datetime.fromisoformat(raw[0]), str(raw[1])
        if time.tzinfo is None:
            raise ValueError("naive time")
        if uuid_key:
            key = str(uuid.UUID(key))
        return time, key
    except (ValueError, TypeError, IndexError, KeyError):
        raise InvalidArgument.field(
            "page_token", "is not a token this list gave", reason="INVALID_PAGE_TOKEN"
        ) from None


class Webhooks:
    """Subscriptions and their deliveries over the service's database and Redis."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        config: WebhooksConfig,
        *,
        plans: Plans,
        mail_stream: str,
        rng: random.Random | None = None,
    ) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.redis = client
        self.config = config
        self.plans = plans
        self.mail_stream = mail_stream
        self.rng = rng or random.Random()  # noqa: S311 - retry jitter, not a secret
        self._cache: dict[str, tuple[float, list[WebhookRecord]]] = {}
        self.on_queued: list[Any] = []
        """Callables run after deliveries were queued (the dispatcher wakes up)."""

    # --- subscriptions -------------------------------------------------------------------------------

    async def check_url(self, url: str, *, field: str) -> str:
        """The URL, if it may be subscribed: its form, and every address its host resolves to now (a host
        that does not resolve yet is accepted; each delivery checks again)."""
        try:
            target = parse_url(url, allow_private=self.config.allow_private_targets)
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                await resolve(target, allow_private=self.config.allow_private_targets)
        except UnsafeUrl as exc:
            raise InvalidArgument.field(field, str(exc), reason=UNSAFE_REASON) from None
        except (LookupError, TimeoutError):
            pass
        return target.url

    def _event_types(self, types: Sequence[str], *, field: str) -> list[str]:
        try:
            return envelope.normalize_event_types(types)
        except ValueError as exc:
            raise InvalidArgument.field(field, str(exc), reason="INVALID_EVENT_TYPE") from None

    @staticmethod
    def _qr_codes(codes: Sequence[str], organization: str, *, field: str) -> list[str]:
        prefix = f"{names.organization_name(organization)}/qrCodes/"
        for code in codes:
            if not code.startswith(prefix) or "/" in code[len(prefix) :] or len(code) == len(prefix):
                raise InvalidArgument.field(
                    field, f"must name this organization's codes ({prefix}{{qr_code}})", reason="INVALID_NAME"
                )
        return sorted(set(codes))

    @staticmethod
    def _email(email: str, *, field: str) -> str:
        email = email.strip()
        if email and (_EMAIL not in email or any(c.isspace() for c in email) or len(email) > 320):
            raise InvalidArgument.field(field, "must be an email address", reason="INVALID_EMAIL")
        return email

    async def create(
        self,
        organization: str,
        *,
        url: str,
        event_types: Sequence[str],
        qr_codes: Sequence[str],
        display_name: str,
        contact_email: str,
        request_id: str,
    ) -> WebhookRecord:
        """Subscribe an endpoint (Business and up); the answer is the only one with the secret."""
        await require_feature(self.plans, names.organization_name(organization), WEBHOOKS)
        if not url:
            raise InvalidArgument.field("webhook.url", "is required", reason="REQUIRED")
        checked = await self.check_url(url, field="webhook.url")
        types = self._event_types(event_types, field="webhook.event_types")
        codes = self._qr_codes(qr_codes, organization, field="webhook.qr_codes")
        email = self._email(contact_email, field="webhook.contact_email")
        now = datetime.now(UTC)
        async with self.sessions.begin() as session:
            if request_id:
                earlier = await store.find_request(organization, request_id, now - REQUEST_ID_TTL, session=session)
                if earlier is not None:
                    found = await store.get_webhook(organization, earlier, session=session)
                    if found is not None:
                        return replace(found, secret=unseal(self.config.secret_key, found.secret, found.id))
            existing = await store.list_webhooks(organization, session=session, limit=MAX_WEBHOOKS, after=None)
            if len(existing) >= MAX_WEBHOOKS:
                raise FailedPrecondition(
                    f"an organization may have at most {MAX_WEBHOOKS} webhooks; delete one first",
                    reason="TOO_MANY_WEBHOOKS",
                )
            record = WebhookRecord(
                id=base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower(),
                organization_id=organization,
                display_name=display_name,
                url=checked,
                event_types=types,
                qr_codes=codes,
                enabled=True,
                state="ACTIVE",
                contact_email=email,
                secret=new_secret(),
                last_error="",
                create_time=now,
                update_time=now,
            )
            await store.insert_webhook(
                replace(
                    record,
                    secret=seal(self.config.secret_key, record.secret, record.id),
                    secret_key_id=key_id(self.config.secret_key),
                ),
                session=session,
            )
            if request_id:
                await store.remember_request(
                    organization, request_id, record.id, now, now - REQUEST_ID_TTL, session=session
                )
        self._cache.pop(organization, None)
        return record

    async def get(self, organization: str, webhook: str) -> WebhookRecord:
        """One webhook; NOT_FOUND if the organization has none by that id."""
        async with self.sessions.begin() as session:
            found = await store.get_webhook(organization, webhook, session=session)
        if found is None:
            raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
        return found

    async def page(self, organization: str, page_size: int, page_token: str) -> tuple[list[WebhookRecord], str]:
        """A page of webhooks, newest first, and the next page's token."""
        size = page_size or 50
        async with self.sessions.begin() as session:
            rows = await store.list_webhooks(
                organization, session=session, limit=size + 1, after=_parse_cursor(page_token)
            )
        more = len(rows) > size
        rows = rows[:size]
        return rows, (_cursor(rows[-1].create_time, rows[-1].id) if more and rows else "")

    async def update(self, organization: str, webhook: str, change: WebhookChange) -> WebhookRecord:
        """Change a webhook; enabling it makes it ACTIVE again."""
        await self.get(organization, webhook)  # NOT_FOUND before any check of the new values
        values: dict[str, Any] = {}
        if change.display_name is not None:
            values["display_name"] = change.display_name
        if change.url is not None:
            if not change.url:
                raise InvalidArgument.field("webhook.url", "is required", reason="REQUIRED")
            values["url"] = await self.check_url(change.url, field="webhook.url")
        if change.event_types is not None:
            values["event_types"] = self._event_types(change.event_types, field="webhook.event_types")
        if change.qr_codes is not None:
            values["qr_codes"] = self._qr_codes(change.qr_codes, organization, field="webhook.qr_codes")
        if change.contact_email is not None:
            values["contact_email"] = self._email(change.contact_email, field="webhook.contact_email")
        async with self.sessions.begin() as session:
            found = await store.get_webhook(organization, webhook, session=session, lock=True)
            if found is None:
                raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
            if change.enabled is not None:
                values["enabled"] = change.enabled
                if change.enabled and (not found.enabled or found.state != "ACTIVE"):
                    values.update(state="ACTIVE", last_error="")
                elif not change.enabled:
                    values["state"] = "DISABLED"
            if values:
                values["update_time"] = datetime.now(UTC)
                await store.update_webhook(webhook, values, session=session)
            updated = replace(found, **values)
        self._cache.pop(organization, None)
        return updated

    async def delete(self, organization: str, webhook: str) -> None:
        """Delete a webhook and its deliveries."""
        async with self.sessions.begin() as session:
            if not await store.delete_webhook(organization, webhook, session=session):
                raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
        self._cache.pop(organization, None)

    async def rotate_secret(self, organization: str, webhook: str) -> WebhookRecord:
        """A new signing secret, answered once; deliveries from now on use it."""
        secret = new_secret()
        now = datetime.now(UTC)
        async with self.sessions.begin() as session:
            found = await store.get_webhook(organization, webhook, session=session, lock=True)
            if found is None:
                raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
            sealed = seal(self.config.secret_key, secret, webhook)
            values = {"secret": sealed, "secret_key_id": key_id(self.config.secret_key), "update_time": now}
            await store.update_webhook(webhook, values, session=session)
        return replace(found, secret=secret, update_time=now)

    # --- deliveries -------------------------------------------------------------------------------------

    async def deliveries(
        self, organization: str, webhook: str, page_size: int, page_token: str
    ) -> tuple[list[DeliveryRecord], str]:
        """A page of a webhook's deliveries with their attempts, newest first."""
        size = page_size or 50
        async with self.sessions.begin() as session:
            if await store.get_webhook(organization, webhook, session=session) is None:
                raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
            rows = await store.list_deliveries(
                webhook, session=session, limit=size + 1, after=_parse_cursor(page_token, uuid_key=True)
            )
        more = len(rows) > size
        rows = rows[:size]
        return rows, (_cursor(rows[-1].create_time, rows[-1].id) if more and rows else "")

    async def redeliver(self, organization: str, webhook: str, delivery: str) -> DeliveryRecord:
        """Send a delivery again now (same id and body), with a fresh round of retries."""
        now = datetime.now(UTC)
        async with self.sessions.begin() as session:
            if await store.get_webhook(organization, webhook, session=session) is None:
                raise NotFound("no such webhook delivery", reason="DELIVERY_NOT_FOUND")
            found = await store.get_delivery(webhook, delivery, session=session)
            if found is None:
                raise NotFound("no such webhook delivery", reason="DELIVERY_NOT_FOUND")
            values = {
                "state": "PENDING",
                "round_start": found.attempt_count,
                "next_attempt_at": now,
                "lease_until": None,
                "lease_id": None,  # an attempt still in flight no longer changes this delivery
                "update_time": now,
            }
            await store.update_delivery(delivery, values, session=session)
        self._wake()
        return replace(found, state="PENDING", round_start=found.attempt_count, next_attempt_at=now, update_time=now)

    async def send_test(self, organization: str, webhook: str) -> DeliveryRecord:
        """Queue a `webhook.test` event for one webhook."""
        now = datetime.now(UTC)
        event_id = uuid7()
        async with self.sessions.begin() as session:
            found = await store.get_webhook(organization, webhook, session=session)
            if found is None:
                raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
            payload = envelope.body(envelope.WEBHOOK_TEST, now, {"webhook": names.webhook_name(organization, webhook)})
            row = self._row(found, event_id, envelope.WEBHOOK_TEST, payload, now, "", "")
            await store.insert_deliveries([row], session=session)
            queued = await store.get_delivery(webhook, row["id"], session=session)
        self._wake()
        if queued is None:
            raise NotFound("no such webhook", reason="WEBHOOK_NOT_FOUND")
        return queued

    @staticmethod
    def _row(
        webhook: WebhookRecord, event_id: str, event_type: str, payload: str, now: datetime, tp: str, ts: str
    ) -> dict[str, Any]:
        return {
            "id": uuid7(),
            "webhook_id": webhook.id,
            "organization_id": webhook.organization_id,
            "event_id": event_id,
            "event_type": event_type,
            "payload": payload,
            "traceparent": tp,
            "tracestate": ts,
            "now": now,
        }

    def _wake(self) -> None:
        for callback in self.on_queued:
            callback()

    async def subscriptions(self, organization: str) -> list[WebhookRecord]:
        """The organization's webhooks that take deliveries (cached briefly)."""
        now = clock.monotonic()
        cached = self._cache.get(organization)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.sessions.begin() as session:
            found = await store.enabled_webhooks(organization, session=session)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[organization] = (now + self.config.cache_seconds, found)
        return found

    async def queue_events(self, queued: Sequence[QueuedEvent]) -> int:
        """Queue a delivery of each event to each webhook of its organization that wants it (once per webhook
        and event id, however often this is called). How many deliveries were new."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for event in queued:
            for webhook in await self.subscriptions(event.organization_id):
                if envelope.wants(webhook.event_types, webhook.qr_codes, event.type, event.subject):
                    payload = envelope.body(event.type, event.time, event.data)
                    rows.append(
                        self._row(webhook, event.id, event.type, payload, now, event.traceparent, event.tracestate)
                    )
        if not rows:
            return 0
        async with self.sessions.begin() as session:
            added = await store.insert_deliveries(rows, session=session)
        self._wake()
        return added

    async def queue_scans(self, organization: str, scans: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        """Queue `scan.recorded` deliveries of an organization's scans ((scan id, qr code, JSON) each), grouped
        into batches per webhook; each scan reaches each webhook once. How many deliveries were queued."""
        webhooks = [
            w
            for w in await self.subscriptions(organization)
            if envelope.wants(w.event_types, [], envelope.SCAN_RECORDED, "")
        ]
        if not webhooks or not scans:
            return 0
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        async with self.sessions.begin() as session:
            for webhook in webhooks:
                wanted = [
                    s
                    for s in scans
                    if envelope.wants(webhook.event_types, webhook.qr_codes, envelope.SCAN_RECORDED, s[1])
                ]
                new = await store.claim_scans(webhook.id, [s[0] for s in wanted], now, session=session)
                fresh = list({s[0]: s for s in wanted if s[0] in new}.values())  # an entry read twice: once
                size = self.config.scan_batch_size
                for start in range(0, len(fresh), size):
                    chunk = fresh[start : start + size]
                    payload = envelope.body(envelope.SCAN_RECORDED, now, {"scans": [s[2] for s in chunk]})
                    rows.append(self._row(webhook, uuid7(), envelope.SCAN_RECORDED, payload, now, "", ""))
            await store.insert_deliveries(rows, session=session)
        if rows:
            self._wake()
        return len(rows)

    async def forget_old_scans(self) -> None:
        """Drop scan marks older than a week."""
        async with self.sessions.begin() as session:
            await store.forget_scans(datetime.now(UTC) - timedelta(days=7), session=session)

    async def claim(self, limit: int) -> list[DueDelivery]:
        """Lease up to `limit` due deliveries for this process: only those whose signing secret this process's
        key opens (a replica or a process with another key leaves them alone); a lease on a secret that still
        does not open (a damaged row) is given back at once."""
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.config.total_timeout * 3 + 30)
        lease_id = str(uuid.uuid4())
        async with self.sessions.begin() as session:
            due = await store.claim_due(
                now, lease, limit, key_id=key_id(self.config.secret_key), lease_id=lease_id, session=session
            )
        opened: list[DueDelivery] = []
        unopened: list[str] = []
        for item in due:
            try:
                opened.append(
                    replace(item, secret=unseal(self.config.secret_key, item.secret, item.delivery.webhook_id))
                )
            except ValueError:
                unopened.append(item.delivery.id)
                log.exception("cannot open a webhook's signing secret", extra={"webhook": item.delivery.webhook_id})
        if unopened:
            async with self.sessions.begin() as session:
                await store.release_lease(unopened, lease_id, session=session)
        return opened

    async def record(self, due: DueDelivery, result: AttemptResult) -> DeliveryRecord:
        """Log an attempt and decide what follows: done, retry later, or give up (FAILING, owner mailed).

        Only the claim that still holds the delivery's lease decides: an attempt whose lease ended (taken over
        by another replica) or was dropped (redelivered meanwhile) is logged, and the delivery is left alone."""
        now = datetime.now(UTC)
        mail: event_pb2.Mail | None = None
        async with self.sessions.begin() as session:
            delivery = await store.lock_delivery(due.delivery.id, session=session)
            if delivery is None:  # deleted with its webhook meanwhile
                return due.delivery
            # Numbered after every attempt logged so far (a stale attempt is logged without counting).
            number = max(delivery.attempt_count, await store.last_attempt_number(delivery.id, session=session)) + 1
            if not await store.holds_lease(delivery.id, due.lease_id, session=session):
                await store.insert_attempt(self._attempt(delivery.id, number, now, result, None), session=session)
                log.info(
                    "an attempt ended after its lease; not recorded on the delivery", extra={"delivery": delivery.id}
                )
                return delivery
            verdict = retry.outcome(result.status_code) if result.status_code else "retry"
            next_at: datetime | None = None
            webhook_values: dict[str, Any] = {}
            webhook = await store.get_webhook(delivery.organization_id, delivery.webhook_id, session=session, lock=True)
            if verdict == "success":
                state = "SUCCEEDED"
                if webhook is not None and webhook.state == "FAILING":
                    webhook_values = {"state": "ACTIVE", "last_error": ""}
            elif verdict == "gone":
                state = "FAILED"
                webhook_values = {"state": "DISABLED", "enabled": False, "last_error": "the endpoint answered 410 Gone"}
            else:
                delay = retry.retry_delay(self.config.retry_schedule, number - delivery.round_start - 1, rng=self.rng)
                if delay is None:
                    state = "FAILED"
                    if webhook is not None and webhook.state == "ACTIVE":
                        webhook_values = {"state": "FAILING", "last_error": result.error[:2000]}
                        if webhook.contact_email:
                            mail = events.new_mail(
                                webhook.contact_email,
                                "webhook_failing",
                                {
                                    "webhook_url": webhook.url,
                                    "webhook": names.webhook_name(webhook.organization_id, webhook.id),
                                    "organization": names.organization_name(webhook.organization_id),
                                    "last_error": result.error[:500],
                                },
                                organization=names.organization_name(webhook.organization_id),
                            )
                    elif webhook is not None:
                        webhook_values = {"last_error": result.error[:2000]}
                else:
                    state = "PENDING"
                    next_at = now + timedelta(seconds=delay)
            await store.insert_attempt(self._attempt(delivery.id, number, now, result, next_at), session=session)
            values = {
                "state": state,
                "attempt_count": number,
                "next_attempt_at": next_at,
                "lease_until": None,
                "lease_id": None,
                "update_time": now,
            }
            await store.update_delivery(delivery.id, values, session=session)
            if webhook is not None and webhook_values:
                await store.update_webhook(webhook.id, {**webhook_values, "update_time": now}, session=session)
        if webhook_values:
            self._cache.pop(delivery.organization_id, None)
        if mail is not None:
            try:
                await events.append(self.redis, self.mail_stream, [mail])
            except Exception:
                log.exception("could not queue the webhook_failing mail", extra={"webhook": delivery.webhook_id})
        return replace(delivery, state=state, attempt_count=number, next_attempt_at=next_at, update_time=now)

    @staticmethod
    def _attempt(
        delivery_id: str, number: int, now: datetime, result: AttemptResult, next_at: datetime | None
    ) -> store.AttemptRecord:
        return store.AttemptRecord(
            delivery_id=delivery_id,
            attempt_number=number,
            time=now - timedelta(seconds=result.latency),
            status_code=result.status_code,
            latency_ms=int(result.latency * 1000),
            response_excerpt=result.excerpt.replace("\x00", ""),
            error=result.error[:2000],
            next_attempt_at=next_at,
        )
