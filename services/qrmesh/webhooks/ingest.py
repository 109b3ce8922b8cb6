"""Where events come from: the events stream (qrmesh.events.v1.Event) and the scans stream
(qrmesh.scans.v1.ScanEvent), each read with the consumer group "webhooks".

Entries are acknowledged only after their deliveries are committed; entries a dead consumer left pending
longer than QRMESH_WEBHOOKS_CLAIM_IDLE_MS are taken over with XAUTOCLAIM. Deliveries are unique per
(webhook, event id) and each scan reaches each webhook once, so an entry read twice queues nothing twice.
Scans are gathered for up to QRMESH_WEBHOOKS_SCAN_BATCH_SECONDS (or QRMESH_WEBHOOKS_SCAN_BATCH_SIZE scans)
and sent as `scan.recorded` deliveries of up to that many scans each. Only redirected scans of known codes
that are not bots become `scan.recorded`. The groups start at the stream's end when first created.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from redis.exceptions import RedisError, ResponseError

from qrmesh.events.v1 import event_pb2
from qrmesh.platform import events, tasks
from qrmesh.platform.telemetry import span_context_of
from qrmesh.scans.v1 import scan_event_pb2
from qrmesh.webhooks.domain.envelope import SCAN_RECORDED, rfc3339
from qrmesh.webhooks.service import QueuedEvent, Webhooks

log = logging.getLogger("qrmesh.webhooks.ingest")
tracer = trace.get_tracer("qrmesh.webhooks")

GROUP = "webhooks"
Entry = tuple[str, dict[bytes, bytes]]


def _organization_id(name: str) -> str:
    prefix = "organizations/"
    return name[len(prefix) :].split("/", 1)[0] if name.startswith(prefix) else ""


def scan_json(scan: scan_event_pb2.ScanEvent) -> dict[str, Any]:
    """One scan as it appears in a `scan.recorded` body."""
    return {
        "id": scan.event_id,
        "time": rfc3339(scan.time.ToDatetime().replace(tzinfo=UTC)),
        "qrCode": scan.qr_code,
        "shortCode": scan.short_code,
        "destinationUrl": scan.destination_url,
        "matchedRule": scan.matched_rule,
        "country": scan.country,
        "userAgent": scan.user_agent,
        "referer": scan.referer,
        "language": scan.accept_language,
    }


class StreamConsumer:
    """Reads one stream with the "webhooks" group and hands batches of entries to `handle`."""

    def __init__(
        self, client: redis.Redis, stream: str, *, claim_idle_ms: int, batch: int, gather_seconds: float
    ) -> None:
        self.redis = client
        self.stream = stream
        self.claim_idle_ms = claim_idle_ms
        self.batch = batch
        self.gather_seconds = gather_seconds
        self.name = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._task: asyncio.Task[None] | None = None

    async def handle(self, entries: Sequence[Entry]) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._task = asyncio.create_task(self._run(), name=f"webhooks-consumer-{self.stream}")

    async def close(self) -> None:
        await tasks.stop(self._task)

    async def _read(self, count: int, block_ms: int) -> list[Entry]:
        answer: Any = await self.redis.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=count, block=block_ms)
        found: list[Entry] = []
        for _, items in answer or []:
            for entry_id, fields in items:
                found.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields or {}))
        return found

    async def _claim(self) -> list[Entry]:
        answer: Any = await self.redis.xautoclaim(
            self.stream, GROUP, self.name, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        found: list[Entry] = []
        for entry_id, fields in answer[1] if answer else []:
            if fields is None:
                continue
            found.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields))
        return found

    async def _run(self) -> None:
        last_claim = 0.0
        backoff = 0.5
        while True:
            try:
                entries: list[Entry] = []
                if time.monotonic() - last_claim > max(self.claim_idle_ms / 2000, 1.0):
                    last_claim = time.monotonic()
                    entries = await self._claim()
                if not entries:
                    entries = await self._read(self.batch, 1000)
                    deadline = time.monotonic() + self.gather_seconds
                    while entries and len(entries) < self.batch and time.monotonic() < deadline:
                        wait = max(int((deadline - time.monotonic()) * 1000), 1)
                        more = await self._read(self.batch - len(entries), wait)
                        if not more:
                            break
                        entries.extend(more)
                if entries:
                    await self.handle(entries)
                    await self.redis.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("webhooks consumer: stream unavailable", extra={"stream": self.stream, "error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                log.exception("webhooks consumer batch failed; it stays pending", extra={"stream": self.stream})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


class EventsConsumer(StreamConsumer):
    """Domain events (QR codes, batches, alerts) to deliveries."""

    def __init__(self, webhooks: Webhooks, client: redis.Redis, stream: str) -> None:
        super().__init__(client, stream, claim_idle_ms=webhooks.config.claim_idle_ms, batch=100, gather_seconds=0)
        self.webhooks = webhooks

    async def handle(self, entries: Sequence[Entry]) -> None:
        queued: list[QueuedEvent] = []
        links: list[Link] = []
        for entry_id, fields in entries:
            raw = fields.get(events.EVENT_FIELD.encode())
            try:
                event = event_pb2.Event.FromString(raw or b"")
            except DecodeError:
                log.warning("skipping an entry that is not an Event", extra={"entry": entry_id})
                continue
            organization = _organization_id(event.organization)
            if not event.id or not event.type or not organization or event.type == SCAN_RECORDED:
                continue
            context = span_context_of(event.traceparent, event.tracestate)
            if context is not None and len(links) < 128:
                links.append(Link(context))
            queued.append(
                QueuedEvent(
                    id=event.id,
                    type=event.type,
                    organization_id=organization,
                    subject=event.subject,
                    time=event.time.ToDatetime().replace(tzinfo=UTC),
                    data=events.event_data(event),
                    traceparent=event.traceparent,
                    tracestate=event.tracestate,
                )
            )
        with tracer.start_as_current_span(f"process {self.stream}", kind=SpanKind.CONSUMER, links=links):
            await self.webhooks.queue_events(queued)


class ScansConsumer(StreamConsumer):
    """Redirected, human scans to batched `scan.recorded` deliveries."""

    def __init__(self, webhooks: Webhooks, client: redis.Redis) -> None:
        config = webhooks.config
        super().__init__(
            client,
            config.scans_stream,
            claim_idle_ms=config.claim_idle_ms,
            batch=config.scan_batch_size,
            gather_seconds=config.scan_batch_seconds,
        )
        self.webhooks = webhooks

    async def handle(self, entries: Sequence[Entry]) -> None:
        by_organization: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for entry_id, fields in entries:
            try:
                scan = scan_event_pb2.ScanEvent.FromString(fields.get(events.EVENT_FIELD.encode()) or b"")
            except DecodeError:
                log.warning("skipping an entry that is not a ScanEvent", extra={"entry": entry_id})
                continue
            organization = _organization_id(scan.organization)
            if scan.outcome != scan_event_pb2.ScanEvent.REDIRECTED or scan.bot or not organization or not scan.event_id:
                continue
            by_organization.setdefault(organization, []).append((scan.event_id, scan.qr_code, scan_json(scan)))
        with tracer.start_as_current_span(f"process {self.stream}", kind=SpanKind.CONSUMER):
            for organization, scans in by_organization.items():
                await self.webhooks.queue_scans(organization, scans)
