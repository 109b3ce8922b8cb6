"""Scan totals: each code's `scan_count`, from the scan events the redirect appends to Redis.

A consumer of the stream `scans` in the group `qr-scan-totals` (one consumer
per process). Each batch of entries is counted in one transaction: the event
ids go into `counted_scans` (ON CONFLICT DO NOTHING) and only the ids that
were new add to their codes' `scan_count`, so an event redelivered after a
crash, or appended twice, counts once. Entries are acknowledged after the
commit. Entries another consumer read but never acknowledged (it died) are
claimed once idle for 30 seconds. Only redirected scans by people count (not
bots, not pages shown). Counted ids are forgotten after 7 days.

Each batch is a `process scans` span linked to the scans it holds; while
tracing exports, each scan whose event carries a sampled trace context also
gets a `count scan` span in that trace, so one trace runs from the scan at
the edge to its count here. The group's lag and pending count and the
stream's length are read every few seconds for /metrics (`readings`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qrmesh.platform import tasks
from qrmesh.platform.errors import InvalidArgument
from qrmesh.platform.metrics import READINGS
from qrmesh.platform.telemetry import extract_context, tracing_enabled
from qrmesh.qr import names, store
from qrmesh.scans.v1 import scan_event_pb2

log = logging.getLogger("qrmesh.qr.scan_totals")

STREAM = "scans"
GROUP = "qr-scan-totals"
BATCH = 500
BLOCK_MS = 2000
CLAIM_IDLE_MS = 30_000
CLAIM_EVERY = 10.0
KEEP_COUNTED = timedelta(days=7)
PRUNE_EVERY = 3600.0
PRUNE_BATCH = 10_000
RETRY_MAX = 30.0
WATCH_EVERY = 5.0
"""Seconds between two readings of the group's lag and pending count."""
MAX_LINKS = 128
"""Links a batch span keeps (OpenTelemetry's default limit)."""

Entry = tuple[str, dict[bytes, bytes]]
Event = scan_event_pb2.ScanEvent
_tracer = trace.get_tracer("qrmesh.qr.scan_totals")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode(entries: Sequence[Entry]) -> list[tuple[str, Event]]:
    """The ScanEvents of these stream entries, with their entry ids; entries that hold none are
    skipped (and logged)."""
    events: list[tuple[str, Event]] = []
    for entry_id, fields in entries:
        raw = fields.get(b"event")
        if raw is None:
            log.warning("scan entry without an event field", extra={"entry": entry_id})
            continue
        try:
            events.append((entry_id, Event.FromString(raw)))
        except DecodeError:
            log.warning("scan entry is not a ScanEvent", extra={"entry": entry_id})
    return events


def counts_for(entries: Sequence[Entry]) -> list[store.ScanCount]:
    """The scans these stream entries add, per code: redirected, not bots, of a known code.

    An entry without an event id is counted by its stream id; an entry that is not a
    ScanEvent is skipped (and logged).
    """
    return _counts(decode(entries))


def _counts(events: Sequence[tuple[str, Event]]) -> list[store.ScanCount]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for entry_id, event in events:
        if event.outcome != scan_event_pb2.ScanEvent.REDIRECTED or event.bot or not event.qr_code:
            continue
        try:
            organization, code = names.qr_code_ids(event.qr_code, field="qr_code")
        except InvalidArgument:
            log.warning("scan event names no QR code", extra={"entry": entry_id})
            continue
        grouped.setdefault((organization, code), []).append(event.event_id or f"stream:{entry_id}")
    return [store.ScanCount(organization, code, tuple(events)) for (organization, code), events in grouped.items()]


class ScanTotals:
    """The consumer; `start` and `close` run it in the background."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: redis.Redis,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        consumer: str | None = None,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.sessions = sessions
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"qr-{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._unwatch: Callable[[], None] | None = None
        self._claimed_at = -1e18
        self._pruned_at = -1e18
        self.lag: int | None = None
        """Entries not yet delivered to the group, as last read (None: unknown)."""
        self.pending: int | None = None
        """Entries delivered to the group's consumers and not yet acknowledged, as last read."""
        self.length: int | None = None
        """Entries in the stream, as last read."""
        self.processed = 0
        """Entries this consumer acknowledged."""
        self.added = 0
        """Scans this consumer added to codes' counts."""
        self.failures = 0
        """Batches that failed (and were retried)."""

    async def start(self) -> None:
        """Start consuming in the background, and reading the group's lag for /metrics."""
        self._unwatch = READINGS.add(self.readings)
        self._task = asyncio.create_task(self._run(), name="qr-scan-totals")
        self._watcher = asyncio.create_task(self._watch(), name="qr-scan-totals-lag")

    async def close(self) -> None:
        """Stop consuming; entries read but not yet acknowledged are delivered again later."""
        for task in (self._task, self._watcher):
            await tasks.stop(task)
        self._task = self._watcher = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    async def ensure_group(self) -> None:
        """Create the stream and group if missing; a new group starts at the stream's first entry."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.ensure_group()
                while True:
                    await self.step()
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep consuming once Redis and the database answer
                failures += 1
                self.failures += 1
                log.warning("counting scans failed", extra={"attempt": failures, "error": repr(exc)})
                await asyncio.sleep(min(0.5 * 2 ** (failures - 1), RETRY_MAX))

    async def step(self) -> int:
        """Count one batch: idle pending entries of dead consumers first (now and then), else new ones."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = loop.time()
            await self.prune()
        if loop.time() - self._claimed_at >= CLAIM_EVERY:
            claimed = await self._claim_idle()
            if claimed:
                return await self.count(claimed)
            self._claimed_at = loop.time()
        answer: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=BATCH, block=self.block_ms
        )
        entries: list[Entry] = []
        for _, items in answer or []:
            entries.extend((_text(entry_id), fields) for entry_id, fields in items if fields is not None)
        return await self.count(entries)

    async def _claim_idle(self) -> list[Entry]:
        answer: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=BATCH
        )
        items = answer[1] if answer else []
        return [(_text(entry_id), fields) for entry_id, fields in items if fields is not None]

    async def count(self, entries: Sequence[Entry]) -> int:
        """Count a batch in one transaction, then acknowledge it; how many scans were added."""
        if not entries:
            return 0
        events = decode(entries)
        traced = _traced(events) if tracing_enabled() else []
        messaging = {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.destination.name": self.stream,
            "messaging.consumer.group.name": self.group,
        }
        with _tracer.start_as_current_span(
            f"process {self.stream}",
            kind=SpanKind.CONSUMER,
            links=[Link(trace.get_current_span(parent).get_span_context()) for _, _, parent in traced[:MAX_LINKS]],
            attributes={**messaging, "messaging.batch.message_count": len(entries)},
        ) as batch:
            link = [Link(batch.get_span_context())]
            spans = [
                _tracer.start_span(
                    "count scan",
                    context=parent,
                    kind=SpanKind.CONSUMER,
                    links=link,
                    attributes={
                        **messaging,
                        "messaging.message.id": entry_id,
                        "qrmesh.scan.event_id": event.event_id,
                        "qrmesh.scan.outcome": Event.Outcome.Name(event.outcome),
                    },
                )
                for entry_id, event, parent in traced
            ]
            try:
                counts = _counts(events)
                added = 0
                if counts:
                    async with self.sessions.begin() as session:
                        added = await store.count_scans(counts, session=session, now=datetime.now(UTC))
                await self.redis.xack(self.stream, self.group, *(entry_id for entry_id, _ in entries))
                batch.set_attribute("qrmesh.scans.added", added)
            finally:
                for span in spans:
                    span.end()
        self.processed += len(entries)
        self.added += added
        return added

    async def _watch(self) -> None:
        while True:
            try:
                await self.observe()
            except (RedisError, OSError) as exc:
                self.lag = self.pending = self.length = None
                log.debug("cannot read the scan stream's lag", extra={"error": repr(exc)})
            await asyncio.sleep(WATCH_EVERY)

    async def observe(self) -> None:
        """Read the group's lag and pending count and the stream's length (shown by `readings`)."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            self.lag, self.pending, self.length = 0, 0, 0
            return
        length = await self.redis.xlen(self.stream)
        for group in groups:
            if _text(group["name"]) == self.group:
                lag = group.get("lag")
                self.lag = None if lag is None else int(lag)
                self.pending = int(group["pending"])
                break
        else:
            self.lag, self.pending = None, None
        self.length = int(length)

    def readings(self) -> Iterator[Metric]:
        """Metrics of this consumer and its group (for `READINGS.add`)."""
        labels = [self.stream, self.group]
        for name, documentation, value in (
            ("qrmesh_stream_lag", "Entries of the stream not yet delivered to the group.", self.lag),
            ("qrmesh_stream_pending", "Entries delivered to the group's consumers, not acknowledged.", self.pending),
        ):
            if value is not None:
                family = GaugeMetricFamily(name, documentation, labels=["stream", "group"])
                family.add_metric(labels, value)
                yield family
        if self.length is not None:
            length = GaugeMetricFamily("qrmesh_stream_length", "Entries in the stream.", labels=["stream"])
            length.add_metric([self.stream], self.length)
            yield length
        processed = CounterMetricFamily(
            "qrmesh_stream_processed", "Entries this process acknowledged.", labels=["stream", "group"]
        )
        processed.add_metric(labels, self.processed)
        yield processed
        failures = CounterMetricFamily(
            "qrmesh_stream_failures", "Batches this process failed to process (retried).", labels=["stream", "group"]
        )
        failures.add_metric(labels, self.failures)
        yield failures
        added = CounterMetricFamily(
            "qrmesh_qr_scans_counted", "Scans this process added to codes' scan counts.", labels=["stream", "group"]
        )
        added.add_metric(labels, self.added)
        yield added

    async def prune(self) -> None:
        """Forget counted event ids older than 7 days (an event is never delivered that late)."""
        before = datetime.now(UTC) - KEEP_COUNTED
        while True:
            async with self.sessions.begin() as session:
                removed = await store.prune_counted_scans(session=session, before=before, limit=PRUNE_BATCH)
            if removed < PRUNE_BATCH:
                return


def _traced(events: Sequence[tuple[str, Event]]) -> list[tuple[str, Event, otel_context.Context]]:
    """The events whose trace context is valid and sampled, with that context."""
    traced = []
    for entry_id, event in events:
        if event.traceparent:
            parent = extract_context(event.traceparent, event.tracestate)
            if parent is not None and trace.get_current_span(parent).get_span_context().trace_flags.sampled:
                traced.append((entry_id, event, parent))
    return traced
