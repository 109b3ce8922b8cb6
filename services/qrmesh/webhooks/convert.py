"""Records of the webhooks store to protos."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from qrmesh.webhooks import names
from qrmesh.webhooks.store import AttemptRecord, DeliveryRecord, WebhookRecord
from qrmesh.webhooks.v1 import webhook_pb2


def _time(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def webhook_to_proto(record: WebhookRecord, *, with_secret: bool = False) -> webhook_pb2.Webhook:
    """A webhook; its secret only when `with_secret` (create and rotate)."""
    return webhook_pb2.Webhook(
        name=names.webhook_name(record.organization_id, record.id),
        display_name=record.display_name,
        url=record.url,
        event_types=record.event_types,
        qr_codes=record.qr_codes,
        enabled=record.enabled,
        state=webhook_pb2.Webhook.State.Value(record.state),
        contact_email=record.contact_email,
        secret=record.secret if with_secret else "",
        last_error=record.last_error,
        create_time=_time(record.create_time),
        update_time=_time(record.update_time),
    )


def attempt_to_proto(record: AttemptRecord) -> webhook_pb2.WebhookDeliveryAttempt:
    """One attempt."""
    attempt = webhook_pb2.WebhookDeliveryAttempt(
        attempt_number=record.attempt_number,
        time=_time(record.time),
        status_code=record.status_code,
        latency=duration_pb2.Duration(seconds=record.latency_ms // 1000, nanos=(record.latency_ms % 1000) * 1_000_000),
        response_excerpt=record.response_excerpt,
        error=record.error,
    )
    if record.next_attempt_at is not None:
        attempt.next_attempt_time.CopyFrom(_time(record.next_attempt_at))
    return attempt


def delivery_to_proto(record: DeliveryRecord) -> webhook_pb2.WebhookDelivery:
    """A delivery with its attempts."""
    delivery = webhook_pb2.WebhookDelivery(
        name=names.delivery_name(record.organization_id, record.webhook_id, record.id),
        event_id=record.event_id,
        event_type=record.event_type,
        state=webhook_pb2.WebhookDelivery.State.Value(record.state),
        payload=record.payload,
        attempts=[attempt_to_proto(a) for a in record.attempts],
        create_time=_time(record.create_time),
        update_time=_time(record.update_time),
    )
    if record.next_attempt_at is not None and record.state == "PENDING":
        delivery.next_attempt_time.CopyFrom(_time(record.next_attempt_at))
    return delivery
