"""Events and mail on Redis streams: the envelopes every service appends, with trace context.

A service that must not lose an event (one tied to a database change) writes it to an outbox table
in the same transaction and appends it here after the commit; consumers handle each id once, so an
append repeated after a crash is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from opentelemetry import trace

from qrmesh.events.v1 import event_pb2
from qrmesh.platform.ids import uuid7
from qrmesh.platform.telemetry import w3c_headers

EVENT_FIELD = "event"
"""The stream entry field that holds a serialized `Event`."""
MAIL_FIELD = "mail"
"""The stream entry field that holds a serialized `Mail`."""
DEFAULT_MAXLEN = 1_000_000
"""Streams are trimmed to about this many entries (consumers keep up long before)."""


def _now(time: datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(time or datetime.now(UTC))
    return stamp


def _trace() -> tuple[str, str]:
    context = trace.get_current_span().get_span_context()
    return w3c_headers(context) if context.is_valid else ("", "")


def new_event(
    type: str,
    organization: str,
    subject: str,
    data: Mapping[str, Any],
    *,
    id: str | None = None,
    time: datetime | None = None,
) -> event_pb2.Event:
    """An event of this span's trace; `data` is the JSON the webhook body carries."""
    traceparent, tracestate = _trace()
    payload = struct_pb2.Struct()
    json_format.ParseDict(dict(data), payload)
    return event_pb2.Event(
        id=id or uuid7(),
        type=type,
        organization=organization,
        time=_now(time),
        subject=subject,
        data=payload,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def new_mail(
    to: str,
    template: str,
    variables: Mapping[str, str],
    *,
    organization: str = "",
    id: str | None = None,
    time: datetime | None = None,
) -> event_pb2.Mail:
    """A mail of this span's trace, for the mailer to render with `template`."""
    traceparent, tracestate = _trace()
    return event_pb2.Mail(
        id=id or uuid7(),
        to=to,
        template=template,
        variables=dict(variables),
        organization=organization,
        time=_now(time),
        traceparent=traceparent,
        tracestate=tracestate,
    )


async def append(
    client: redis.Redis,
    stream: str,
    messages: list[event_pb2.Event] | list[event_pb2.Mail],
    *,
    maxlen: int = DEFAULT_MAXLEN,
) -> list[str]:
    """Append events or mails to `stream` in one round trip; their stream ids, in order."""
    if not messages:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for message in messages:
            field = EVENT_FIELD if isinstance(message, event_pb2.Event) else MAIL_FIELD
            pipe.xadd(stream, {field: message.SerializeToString()}, maxlen=maxlen, approximate=True)
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def event_data(event: event_pb2.Event) -> dict[str, Any]:
    """The event's `data` as plain JSON values."""
    return json_format.MessageToDict(event.data)
