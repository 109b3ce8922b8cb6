"""The webhooks service against real PostgreSQL, Redis, identity and billing, delivering to a real HTTP
receiver on loopback that checks every signature with the standardwebhooks package."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text
from standardwebhooks import Webhook as ReferenceVerifier

from qrmesh.events.v1 import event_pb2
from qrmesh.platform import events
from qrmesh.platform.ids import uuid7
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2
from qrmesh.webhooks.v1 import webhook_pb2, webhook_service_pb2, webhook_service_pb2_grpc
from tests.integration.billing_helpers import error_info, subscribe
from tests.integration.identity_helpers import Account, sign_up

svc = webhook_service_pb2
T = TypeVar("T")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """A small HTTP/1.1 server: answers each POST with the next planned (status, headers), then `default`."""

    plan: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, dict[str, str]] = (200, {})
    received: list[Received] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(headers, body, path))
            status, extra = self.plan.pop(0) if self.plan else self.default
            reply = b"ok" if status < 300 else b"nope"
            lines_out = [f"HTTP/1.1 {status} X", f"content-length: {len(reply)}", "connection: close"]
            lines_out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(lines_out) + "\r\n\r\n").encode() + reply)
            await writer.drain()
        finally:
            writer.close()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    await server.wait_closed()


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, attempts: int = 300) -> T:
    """Poll `check` every 0.1 s until it answers something (at most `attempts` times)."""
    for _ in range(attempts):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def business(identity_server: Server, billing_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        account = await sign_up(channel, "hooks")
    await subscribe(billing_server, account, "business")
    return account


@pytest.fixture
async def stub(webhooks_server: Server) -> AsyncIterator[webhook_service_pb2_grpc.WebhookServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{webhooks_server.port}") as channel:
        yield webhook_service_pb2_grpc.WebhookServiceStub(channel)


async def create(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub, account: Account, url: str, types: list[str], **more: Any
) -> webhook_pb2.Webhook:
    hook = webhook_pb2.Webhook(url=url, event_types=types, **more)
    answer: webhook_pb2.Webhook = await stub.CreateWebhook(
        svc.CreateWebhookRequest(parent=account.organization, webhook=hook), metadata=account.metadata()
    )
    return answer


async def deliveries(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub, account: Account, hook: webhook_pb2.Webhook
) -> list[webhook_pb2.WebhookDelivery]:
    answer = await stub.ListWebhookDeliveries(
        svc.ListWebhookDeliveriesRequest(parent=hook.name), metadata=account.metadata()
    )
    return list(answer.deliveries)


def verify(secret: str, received: Received) -> dict[str, Any]:
    """The body, verified by the independent implementation (raises if the signature is wrong)."""
    verified: dict[str, Any] = ReferenceVerifier(secret).verify(received.body, received.headers)
    assert received.headers["content-type"] == "application/json"
    assert received.headers["user-agent"] == "qrmesh-webhooks/1"
    return verified


async def test_subscribing_unsafe_urls_and_without_the_plan_is_refused(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub, business: Account, identity_server: Server
) -> None:
    for url in ("http://169.254.169.254/", "http://10.0.0.1/", "http://[::ffff:10.0.0.1]/", "ftp://example.com/"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(stub, business, url, ["*"])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        if url.startswith("http://"):
            assert error_info(caught.value).reason == "UNSAFE_WEBHOOK_URL", url
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        free = await sign_up(channel, "free")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, free, "https://example.com/hook", ["*"])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "FEATURE_NOT_IN_PLAN"


async def test_crud_hides_the_secret_after_create(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub, business: Account, webhooks_server: Server
) -> None:
    hook = await create(stub, business, "https://example.com/a", ["qr_code.created"], contact_email="ops@example.com")
    assert hook.secret.startswith("whsec_")
    assert hook.state == webhook_pb2.Webhook.ACTIVE
    assert hook.enabled
    got = await stub.GetWebhook(svc.GetWebhookRequest(name=hook.name), metadata=business.metadata())
    assert got.secret == ""
    engine = webhooks_server.resources.engine
    assert engine is not None
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                text("SELECT secret FROM webhooks.webhooks WHERE id = :id"), {"id": hook.name[-16:]}
            )
        ).scalar_one()
    assert stored.startswith("v1:")  # sealed with QRMESH_WEBHOOKS_SECRET_KEY
    assert hook.secret.removeprefix("whsec_") not in stored
    assert got.url == "https://example.com/a"
    changed = await stub.UpdateWebhook(
        svc.UpdateWebhookRequest(
            webhook=webhook_pb2.Webhook(name=hook.name, event_types=["*"], enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["event_types", "enabled"]),
        ),
        metadata=business.metadata(),
    )
    assert list(changed.event_types) == ["*"]
    assert not changed.enabled
    assert changed.secret == ""
    assert changed.state == webhook_pb2.Webhook.DISABLED
    rotated = await stub.RotateWebhookSecret(
        svc.RotateWebhookSecretRequest(name=hook.name), metadata=business.metadata()
    )
    assert rotated.secret.startswith("whsec_")
    assert rotated.secret != hook.secret
    listed = await stub.ListWebhooks(
        svc.ListWebhooksRequest(parent=business.organization), metadata=business.metadata()
    )
    assert [h.name for h in listed.webhooks] == [hook.name]
    assert listed.webhooks[0].secret == ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateWebhook(
            svc.UpdateWebhookRequest(
                webhook=webhook_pb2.Webhook(name=hook.name, url="http://169.254.169.254/"),
                update_mask=field_mask_pb2.FieldMask(paths=["url"]),
            ),
            metadata=business.metadata(),
        )
    assert error_info(caught.value).reason == "UNSAFE_WEBHOOK_URL"
    await stub.DeleteWebhook(svc.DeleteWebhookRequest(name=hook.name), metadata=business.metadata())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetWebhook(svc.GetWebhookRequest(name=hook.name), metadata=business.metadata())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_event_is_delivered_signed_and_retried_then_replayed(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub,
    business: Account,
    receiver: Receiver,
    webhooks_settings: Settings,
) -> None:
    receiver.plan = [(500, {}), (503, {})]
    hook = await create(stub, business, receiver.url(), ["qr_code.created"])
    code = f"{business.organization}/qrCodes/abc"
    event = events.new_event("qr_code.created", business.organization, code, {"name": code, "displayName": "Poster"})
    other = events.new_event("qr_code.deleted", business.organization, code, {"name": code})
    client = aioredis.Redis.from_url(webhooks_settings.redis_url)
    try:
        await events.append(client, webhooks_settings.events_stream, [other, event, event])
    finally:
        await client.aclose()
    await eventually(lambda: asyncio.sleep(0, len(receiver.received) >= 3), "three attempts")
    bodies = [verify(hook.secret, r) for r in receiver.received]
    assert {r.headers["webhook-id"] for r in receiver.received} == {event.id}
    assert bodies[0]["type"] == "qr_code.created"
    assert bodies[0]["data"]["displayName"] == "Poster"
    assert bodies[0]["version"] == "2026-11-01"

    async def succeeded() -> list[webhook_pb2.WebhookDelivery] | None:
        found = await deliveries(stub, business, hook)
        return found if found and found[0].state == webhook_pb2.WebhookDelivery.SUCCEEDED else None

    found = await eventually(succeeded, "the delivery succeeded")
    assert len(found) == 1  # the deleted event is not wanted; the duplicate entry queued nothing
    assert [a.status_code for a in found[0].attempts] == [500, 503, 200]
    assert [a.attempt_number for a in found[0].attempts] == [1, 2, 3]
    assert found[0].attempts[0].error == "HTTP 500"
    assert found[0].attempts[0].response_excerpt == "nope"
    assert found[0].attempts[0].HasField("next_attempt_time")
    assert not found[0].attempts[2].HasField("next_attempt_time")

    await stub.RedeliverWebhookDelivery(
        svc.RedeliverWebhookDeliveryRequest(name=found[0].name), metadata=business.metadata()
    )
    await eventually(lambda: asyncio.sleep(0, len(receiver.received) >= 4), "the replay")
    assert receiver.received[3].headers["webhook-id"] == event.id
    verify(hook.secret, receiver.received[3])


async def test_exhausted_retries_mark_failing_and_mail_the_owner(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub,
    business: Account,
    receiver: Receiver,
    webhooks_settings: Settings,
) -> None:
    receiver.default = (500, {})
    hook = await create(stub, business, receiver.url(), ["*"], contact_email="owner@example.com")
    await stub.SendTestWebhookEvent(svc.SendTestWebhookEventRequest(name=hook.name), metadata=business.metadata())

    async def failing() -> webhook_pb2.Webhook | None:
        got = await stub.GetWebhook(svc.GetWebhookRequest(name=hook.name), metadata=business.metadata())
        return got if got.state == webhook_pb2.Webhook.FAILING else None

    got = await eventually(failing, "the webhook is FAILING")
    assert got.last_error == "HTTP 500"
    [delivery] = await deliveries(stub, business, hook)
    assert delivery.state == webhook_pb2.WebhookDelivery.FAILED
    assert len(delivery.attempts) == 4
    assert delivery.event_type == "webhook.test"
    assert verify(hook.secret, receiver.received[0])["type"] == "webhook.test"

    client = aioredis.Redis.from_url(webhooks_settings.redis_url)
    try:

        async def mailed() -> list[event_pb2.Mail] | None:
            entries: Any = await client.xrange(webhooks_settings.mail_stream)
            mails = [event_pb2.Mail.FromString(f[b"mail"]) for _, f in entries]
            return [m for m in mails if m.variables.get("webhook") == hook.name] or None

        [mail] = await eventually(mailed, "the webhook_failing mail")
    finally:
        await client.aclose()
    assert mail.to == "owner@example.com"
    assert mail.template == "webhook_failing"
    assert mail.variables["webhook_url"] == receiver.url()
    assert mail.variables["organization"] == business.organization
    assert mail.variables["last_error"] == "HTTP 500"

    receiver.default = (204, {})
    await stub.SendTestWebhookEvent(svc.SendTestWebhookEventRequest(name=hook.name), metadata=business.metadata())

    async def active() -> bool:
        got = await stub.GetWebhook(svc.GetWebhookRequest(name=hook.name), metadata=business.metadata())
        return bool(got.state == webhook_pb2.Webhook.ACTIVE)

    await eventually(active, "a success makes it ACTIVE again")


async def test_gone_disables_and_private_redirects_are_refused(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub, business: Account, receiver: Receiver
) -> None:
    # Both answers are set before anything is sent: the retry after the refused redirect may come at once.
    receiver.plan = [(302, {"location": "http://10.0.0.1/internal"})]
    receiver.default = (410, {})
    hook = await create(stub, business, receiver.url(), ["*"])
    await stub.SendTestWebhookEvent(svc.SendTestWebhookEventRequest(name=hook.name), metadata=business.metadata())

    async def first_attempt() -> webhook_pb2.WebhookDeliveryAttempt | None:
        found = await deliveries(stub, business, hook)
        return found[0].attempts[0] if found and found[0].attempts else None

    attempt = await eventually(first_attempt, "the first attempt")
    assert attempt.error.startswith("refused:")
    assert "10.0.0.1" in attempt.error

    async def disabled() -> webhook_pb2.Webhook | None:
        got = await stub.GetWebhook(svc.GetWebhookRequest(name=hook.name), metadata=business.metadata())
        return got if got.state == webhook_pb2.Webhook.DISABLED else None

    got = await eventually(disabled, "410 disables the webhook")
    assert not got.enabled
    assert "410" in got.last_error
    assert all(r.path != "/internal" for r in receiver.received)  # nothing reached the private address


async def test_scans_become_batched_scan_recorded_deliveries(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub,
    business: Account,
    receiver: Receiver,
    webhooks_settings: Settings,
) -> None:
    hook = await create(stub, business, receiver.url(), ["scan.recorded"])
    code = f"{business.organization}/qrCodes/poster"

    def scan(*, bot: bool = False, outcome: int = scan_event_pb2.ScanEvent.REDIRECTED) -> scan_event_pb2.ScanEvent:
        event = scan_event_pb2.ScanEvent(
            event_id=uuid7(),
            short_code="abc1234",
            qr_code=code,
            organization=business.organization,
            outcome=outcome,  # type: ignore[arg-type]
            destination_url="https://example.com/spring",
            bot=bot,
            country="SE",
        )
        event.time.FromDatetime(datetime.now(UTC))
        return event

    scans = [scan(), scan(), scan(bot=True), scan(outcome=scan_event_pb2.ScanEvent.PAUSED)]
    client = aioredis.Redis.from_url(webhooks_settings.redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for item in [*scans, scans[0]]:
                pipe.xadd(webhooks_settings.extra["SCANS_STREAM"], {"event": item.SerializeToString()})
            await pipe.execute()
    finally:
        await client.aclose()
    await eventually(lambda: asyncio.sleep(0, len(receiver.received) >= 1), "a scan.recorded delivery")
    await asyncio.sleep(0.5)  # room for a wrong second delivery to show up
    sent = [verify(hook.secret, r) for r in receiver.received]
    assert [b["type"] for b in sent] == ["scan.recorded"] * len(sent)
    ids = [s["id"] for b in sent for s in b["data"]["scans"]]
    assert sorted(ids) == sorted([scans[0].event_id, scans[1].event_id])  # humans' redirects, each once
    assert sent[0]["data"]["scans"][0]["qrCode"] == code
    assert json.loads(receiver.received[0].body)["data"]["scans"][0]["destinationUrl"] == "https://example.com/spring"


async def test_deliveries_continue_the_event_trace(
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub,
    business: Account,
    receiver: Receiver,
    webhooks_settings: Settings,
    spans: InMemorySpanExporter,
) -> None:
    await create(stub, business, receiver.url(), ["batch.completed"])
    trace_id = secrets.token_hex(16)
    event = events.new_event("batch.completed", business.organization, f"{business.organization}/batches/b", {})
    event.traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    client = aioredis.Redis.from_url(webhooks_settings.redis_url)
    try:
        await events.append(client, webhooks_settings.events_stream, [event])
    finally:
        await client.aclose()

    async def delivered() -> list[Any] | None:
        found = [
            s
            for s in spans.get_finished_spans()
            if s.name == "deliver webhook" and s.context is not None and s.context.trace_id == int(trace_id, 16)
        ]
        return found or None

    [span] = await eventually(delivered, "a delivery span in the event's trace")
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert receiver.received[0].headers["webhook-id"] == event.id
