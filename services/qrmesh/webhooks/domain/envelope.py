"""Event types and the JSON body every delivery carries.

The body is a versioned envelope:

    {"type": "qr_code.created", "timestamp": "2026-11-24T10:00:00.000000Z", "version": "2026-11-01",
     "data": {...}}

`data` is the event's payload (the resource in its REST form). `scan.recorded` deliveries carry several
scans at once: `{"scans": [{"id", "time", "qrCode", "shortCode", "destinationUrl", "matchedRule",
"country", "userAgent", "referer", "language"}, ...]}` (at most the batch size, oldest first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

VERSION = "2026-11-01"
"""The envelope version, also sent as the `webhook-version` header."""

QR_CODE_CREATED = "qr_code.created"
QR_CODE_UPDATED = "qr_code.updated"
QR_CODE_DELETED = "qr_code.deleted"
SCAN_RECORDED = "scan.recorded"
BATCH_COMPLETED = "batch.completed"
SCAN_THRESHOLD_REACHED = "scan.threshold_reached"
WEBHOOK_TEST = "webhook.test"
ALL = "*"

EVENT_TYPES = (
    QR_CODE_CREATED,
    QR_CODE_UPDATED,
    QR_CODE_DELETED,
    SCAN_RECORDED,
    BATCH_COMPLETED,
    SCAN_THRESHOLD_REACHED,
)


def normalize_event_types(types: Iterable[str]) -> list[str]:
    """The subscribed types, sorted and unique (`*` alone stands for all); ValueError names an unknown one."""
    chosen = {t.strip() for t in types if t.strip()}
    if not chosen:
        raise ValueError("name at least one event type")
    unknown = sorted(chosen - {*EVENT_TYPES, ALL})
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; one of {', '.join(EVENT_TYPES)} or *")
    return [ALL] if ALL in chosen else sorted(chosen)


def wants(event_types: Iterable[str], qr_codes: Iterable[str], event_type: str, subject: str) -> bool:
    """Whether a subscription wants an event of `event_type` about `subject`."""
    types = set(event_types)
    if ALL not in types and event_type not in types:
        return False
    codes = set(qr_codes)
    if not codes or "/qrCodes/" not in subject:
        return True
    return subject in codes


def rfc3339(time: datetime) -> str:
    """`time` in UTC as RFC 3339 with microseconds and a Z."""
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body(event_type: str, time: datetime, data: Mapping[str, Any]) -> str:
    """The delivery body: the envelope as compact JSON."""
    envelope = {"type": event_type, "timestamp": rfc3339(time), "version": VERSION, "data": dict(data)}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
