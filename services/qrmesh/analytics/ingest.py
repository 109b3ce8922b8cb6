"""Scan ingestion: a consumer group on the scans stream, exactly-once in effect.

Each consumer (QRMESH_ANALYTICS_CONSUMERS per process, default 1) reads batches
with XREADGROUP. A batch is made into rows (`enrich`), sorted by (time, event
id), the months it needs get their partitions, and then, in ONE transaction
(`store_write`): the raw rows are COPYed to a staging table and inserted with ON
CONFLICT DO NOTHING; only the events that were new reach `daily_visitors` and
the rollups (summed in memory by `domain.aggregate`, written as one multi-row
upsert per table, in key order); entries set aside go to `dead_letters`. After
the commit the batch is copied to the dead-letter stream (`{stream}:dead`) where
needed and acknowledged, and the new scans are published to the live feed of
organizations someone watches. An event delivered twice (a crash between commit
and XACK, a spool replayed twice) finds its raw row and counts nothing again.

- The group is created at id 0 with MKSTREAM when missing, so events the redirect
  wrote before analytics first ran are counted.
- Pending entries idle longer than QRMESH_ANALYTICS_CLAIM_IDLE_MS (their consumer
  died, or a write failed here) are taken over with XAUTOCLAIM and finished.
- An entry that is not a ScanEvent, or whose event can never be stored (no UUID
  id, no time, a malformed code name, a time outside [now - retention, now + 1
  day]), is dead-lettered at once. A batch that fails for any other reason is
  retried in halves (and halves of what fails) down to the entries that fail
  alone; such an entry is left pending (so it is claimed and tried again) until it
  was delivered QRMESH_ANALYTICS_MAX_DELIVERIES times, then dead-lettered with the
  error. Connection failures (and deadlocks, serialization failures) are not the
  entries' fault: the batch is kept and retried with backoff.
- An event older than its organization's own retention (`organization_retention`,
  read once a minute; QRMESH_ANALYTICS_RETENTION_DAYS otherwise) is acknowledged
  and skipped (`qrmesh_analytics_scans_expired`): the upkeep deletes such rows, and
  a replay of a deleted event would otherwise be counted again. Any other error
  raised for one entry while it is prepared dead-letters that entry.
- Counted scans of a UTC day whose visitors the upkeep already forgot
  (`retention.KEEP_VISITOR_DAYS`) carry no unique.
- Live-feed messages hold at most LIVE_CHUNK scans.
- After the commit and before the acknowledgement, the batch's rows (replays too) go to the alert rules
  (`qrmesh.analytics.alerts`, when `alerts` is set), which fire at most once per rule and window.
- Consumers of the group idle for a day with nothing pending (names of processes
  gone) are deleted now and then.
- `close` lets the batch in hand finish, then stops.

Each batch is a `process {stream}` span linked to the trace contexts its events
carry (at most 128 links).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time as clock
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as redis
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics import partitions, retention, store_write
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.domain import retention as retention_rules
from qrmesh.analytics.domain.aggregate import Columns, aggregate
from qrmesh.analytics.enrich import Enricher, Invalid, Prepared
from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2
from qrmesh.platform import tasks
from qrmesh.platform.metrics import READINGS
from qrmesh.platform.telemetry import extract_context, tracing_enabled

if TYPE_CHECKING:
    from qrmesh.analytics.alerts import AlertEvaluator

log = logging.getLogger("qrmesh.analytics.ingest")

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as Redis answers it: (entry id, fields); ids stay bytes until a person reads them."""
MAX_LINKS = 128
PAYLOAD_KEEP = 4096
"""Bytes of an entry's payload a dead letter keeps."""
DEAD_STREAM_MAXLEN = 100_000
CLAIM_EVERY = 5.0
"""Seconds between two looks for idle pending entries."""
CLEANUP_EVERY = 3600.0
CONSUMER_IDLE_MS = 86_400_000
"""A consumer of the group idle this long with nothing pending is deleted."""
WATCH_EVERY = 5.0
RETRY_MAX = 30.0
WATCHING_TTL = 1.0
"""Seconds a look finding an organization watched is trusted (a look finding it unwatched is not kept: a
watcher that just subscribed is seen by the next batch)."""
LIVE_CHUNK = 200
"""Scans per live-feed message at most (a batch of thousands would make messages of megabytes)."""
RETENTION_EVERY = 60.0
"""Seconds the organizations' own retentions are trusted before they are read again."""
FUTURE = timedelta(days=1)
LIVE_CHANNEL = "qrmesh:analytics:live:{}"
WATCHING_KEY = "qrmesh:analytics:watching:{}"
_TRANSIENT_SQLSTATE = {"08", "40", "53", "55", "57", "58"}
_tracer = trace.get_tracer("qrmesh.analytics.ingest")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector during a batch: a batch allocates a few hundred thousand short-lived
    tuples and lists (freed by reference counting when it ends, no cycles among them) that would otherwise
    set off collections walking the whole heap, a quarter of a batch's CPU (measured with
    bench/analytics_ingest.py). Whatever the batch leaves is collected after it, as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def transient(error: BaseException) -> bool:
    """Whether a failure is the infrastructure's (retry the batch) rather than the entries'."""
    if isinstance(error, asyncpg.PostgresError):
        return str(getattr(error, "sqlstate", "") or "")[:2] in _TRANSIENT_SQLSTATE
    return isinstance(
        error,
        (OSError, TimeoutError, RedisError, asyncpg.InterfaceError, OperationalError, InterfaceError),
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry set aside."""

    entry_id: str
    reason: str
    deliveries: int
    payload: bytes


@dataclass(slots=True)
class BatchResult:
    """What one batch did."""

    entries: int = 0
    stored: list[Prepared] = field(default_factory=list)
    """Rows that were new (stored by this batch)."""
    duplicates: int = 0
    """Events that were already stored (replays)."""
    skipped: int = 0
    """Entries of unknown codes (not stored)."""
    expired: int = 0
    """Events older than their organization's own retention (acknowledged, not stored: the upkeep would
    have deleted them, and a replay of a deleted one would count again)."""
    dead: list[DeadLetter] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """Entries left unacknowledged, to be tried again."""
    failed: int = 0
    """Rows that failed alone when the batch was retried row by row (left pending or dead-lettered)."""

    @property
    def counted(self) -> int:
        return sum(1 for row in self.stored if row.counted)


class Consumer:
    """One consumer of the group; `start` and `close` run it in the background."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        config: AnalyticsConfig,
        enricher: Enricher,
        *,
        name: str | None = None,
        raw_method: str = store_write.RAW_COPY,
    ) -> None:
        self.engine = engine
        self.redis = client
        self.config = config
        self.enricher = enricher
        self.stream = config.stream
        self.group = config.group
        self.dead_stream = f"{config.stream}:dead"
        self.name = name or f"analytics-{socket.gethostname()}-{os.getpid()}"
        self.raw_method = raw_method
        self.consumer_idle_ms = CONSUMER_IDLE_MS
        """Consumers of the group idle longer than this with nothing pending are deleted."""
        self.retention_days = config.retention_days
        """Raw scans older than this are not accepted (the longest retention of any organization)."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._months: set[partitions.Month] = set()
        self._watching: dict[str, float] = {}
        """Organizations found watched, and when."""
        self._claim_cursor = "0-0"
        self._claimed_at = -1e18
        self._cleaned_at = -1e18
        self._retry: list[Entry] = []
        self._retentions: dict[str, int] = {}
        self._retentions_at = -1e18
        self.processed = 0
        """Entries acknowledged."""
        self.stored = 0
        """Scans stored for the first time."""
        self.duplicates = 0
        self.dead_lettered = 0
        self.expired = 0
        """Events skipped as older than their organization's retention."""
        self.failures = 0
        """Batches that failed (retried)."""
        self.alerts: AlertEvaluator | None = None
        """Evaluates alert rules after each batch's commit (`qrmesh.analytics.alerts`), when set."""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the group if missing and consume in the background."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"analytics-consumer-{self.name}")

    async def close(self) -> None:
        """Stop after the batch in hand (read but unfinished entries are claimed later by another consumer)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if not self._busy:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def ensure_group(self) -> None:
        """Create the stream and group if missing; a new group starts at the stream's first entry (or its end,
        with QRMESH_ANALYTICS_GROUP_START=$)."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.config.group_start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self.ensure_group()
                while not self._stopping:
                    await self.step()
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep consuming once Redis and the database answer
                failures += 1
                self.failures += 1
                log.warning("ingesting scans failed", extra={"attempt": failures, "error": repr(exc)})
                self._busy = False
                if self._stopping:
                    return
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), RETRY_MAX))

    # -- one step ----------------------------------------------------------------------------------

    async def read(self) -> list[Entry]:
        """The next batch: one kept after a failure, idle pending entries (now and then), or new ones."""
        if self._retry:
            return self._retry
        now = asyncio.get_running_loop().time()
        if now - self._cleaned_at >= CLEANUP_EVERY:
            self._cleaned_at = now
            await self.delete_idle_consumers()
        if now - self._claimed_at >= CLAIM_EVERY:
            claimed = await self.claim()
            if claimed:
                return claimed
            self._claimed_at = now
        answer: Any = await self.redis.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.config.batch, block=self.config.block_ms
        )
        entries: list[Entry] = []
        for _, items in answer or []:
            entries.extend(items)  # new entries: never deleted ones (those come only from the pending list)
        return entries

    async def claim(self) -> list[Entry]:
        """Take over pending entries idle longer than CLAIM_IDLE_MS (walking the pending list over calls)."""
        answer: Any = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=self.config.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.config.batch,
        )
        if not answer:
            self._claim_cursor = "0-0"
            return []
        self._claim_cursor = _text(answer[0])
        return [(_raw(entry_id), fields) for entry_id, fields in answer[1] if fields is not None]

    async def step(self) -> BatchResult:
        """Read and process one batch."""
        entries = await self.read()
        if self._stopping and not entries:
            return BatchResult()
        self._busy = True
        try:
            self._retry = entries
            result = await self.process(entries)
            self._retry = []
            return result
        finally:
            self._busy = False

    # -- processing --------------------------------------------------------------------------------

    def prepare(self, entries: Sequence[Entry], result: BatchResult) -> list[Prepared]:
        """Rows of the entries, without duplicates, in (time, event id) order; invalid ones go to `result.dead`,
        unknown codes are counted in `result.skipped`."""
        prepared: dict[tuple[datetime, str], Prepared] = {}
        now = datetime.now(UTC)
        oldest = now - timedelta(days=self.retention_days)
        newest = now + FUTURE
        own = self._retentions
        default_days = self.config.retention_days
        decode, make = self.enricher.decode, self.enricher.prepare
        for entry_id, fields in entries:
            payload = fields.get(b"event")
            try:
                row = make(entry_id, decode(payload))
                if row is None:
                    result.skipped += 1
                    continue
                values = row.row
                moment = values[1]
                if not oldest <= moment <= newest:
                    raise Invalid(f"the event's time {moment.isoformat()} is outside [{oldest:%Y-%m-%d}, now + 1 day]")
                if moment < now - timedelta(days=own.get(values[2], default_days)):
                    result.expired += 1
                    continue
            except Invalid as exc:
                result.dead.append(DeadLetter(_text(entry_id), str(exc), 1, (payload or b"")[:PAYLOAD_KEEP]))
                continue
            except Exception as exc:  # noqa: BLE001 - one entry's failure must not hold the batch back forever
                reason = f"the entry cannot be prepared: {exc!r}"[:2000]
                result.dead.append(DeadLetter(_text(entry_id), reason, 1, (payload or b"")[:PAYLOAD_KEEP]))
                continue
            key = (moment, values[0])
            if key in prepared:
                result.duplicates += 1
            else:
                prepared[key] = row
        return [prepared[key] for key in sorted(prepared)]

    async def process(self, entries: Sequence[Entry]) -> BatchResult:
        """Store a batch, set aside what cannot be stored, acknowledge, publish."""
        result = BatchResult(entries=len(entries))
        if not entries:
            return result
        with _collector_paused():
            return await self._process(entries, result)

    async def refresh_retentions(self, *, force: bool = False) -> None:
        """Read the organizations' own retentions (at most once a minute unless forced)."""
        now = clock.monotonic()
        if not force and now - self._retentions_at < RETENTION_EVERY:
            return
        async with self.engine.connect() as connection:
            own = await retention.organization_retention(connection)
        self._retentions = own
        self.retention_days = retention_rules.longest(self.config.retention_days, own)
        self._retentions_at = now

    async def _process(self, entries: Sequence[Entry], result: BatchResult) -> BatchResult:
        await self.refresh_retentions()
        rows = self.prepare(entries, result)
        with self._span(len(entries), rows) as span:
            await self.ensure_partitions(rows)
            try:
                stored = await self.write(rows, result.dead)
            except Exception as exc:
                if transient(exc):
                    raise
                log.warning("a batch of scans failed; retrying it in halves", extra={"error": repr(exc)})
                stored = await self._isolate(rows, result, entries)
            result.stored = stored
            result.duplicates += len(rows) - len(stored) - result.failed
            if self.alerts is not None:
                await self.evaluate_alerts(rows)
            await self.acknowledge(entries, result)
            span.set_attribute("qrmesh.scans.stored", len(stored))
            span.set_attribute("qrmesh.scans.dead_lettered", len(result.dead))
        self.processed += len(entries) - len(result.pending)
        self.stored += len(stored)
        self.duplicates += result.duplicates
        self.dead_lettered += len(result.dead)
        self.expired += result.expired
        if stored:
            with contextlib.suppress(RedisError, OSError):
                await self.publish(stored)
        return result

    async def ensure_partitions(self, rows: Sequence[Prepared]) -> None:
        """Create the partitions these rows need that this consumer has not seen yet (own transaction)."""
        needed = partitions.months_for(row.key[0] for row in rows) - self._months
        if not needed:
            return
        async with self.engine.begin() as connection:
            self._months = await partitions.existing(connection)
            missing = needed - self._months
            if missing:
                created = await partitions.ensure(connection, missing)
                if created:
                    log.info("created scan partitions", extra={"months": ",".join(m.name for m in created)})
        self._months |= needed

    async def write(self, rows: Sequence[Prepared], dead: Sequence[DeadLetter]) -> list[Prepared]:
        """One transaction: raw rows, visitors and rollups of the new ones, dead letters; the rows that were new."""
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            await store_write.ensure_staging(pg)
            async with pg.transaction():
                stored = await self.write_rows(pg, rows)
                await store_write.insert_dead_letters(pg, self._letters(dead))
                await self.before_commit(stored)
        return stored

    async def write_rows(self, pg: Any, rows: Sequence[Prepared]) -> list[Prepared]:
        """Raw rows, then visitors and rollups of the rows that were new, in the caller's transaction."""
        inserted = await store_write.insert_scans(pg, [row.row for row in rows], method=self.raw_method)
        new = inserted.new
        stored = [row for row in rows if row.row[0] in new]
        counted = [row.row for row in stored if row.counted]
        if counted:
            scans = Columns.of(counted)
            code_firsts, organization_firsts = inserted.code_firsts, inserted.organization_firsts
            # Visitors of days older than the upkeep keeps are forgotten: such a late event cannot tell whether
            # its visitor was seen that day, so it carries no unique (rather than a second one).
            forgotten = (datetime.now(UTC) - timedelta(days=retention.KEEP_VISITOR_DAYS)).date()
            late = {row[0] for row in counted if row[1].date() < forgotten}
            if late:
                code_firsts, organization_firsts = code_firsts - late, organization_firsts - late
            rollups = aggregate(
                scans,
                [event_id in code_firsts for event_id in scans.event_id],
                [event_id in organization_firsts for event_id in scans.event_id],
            )
            await store_write.add_rollups(pg, rollups.hourly_rows(), rollups.daily_rows())
        return stored

    async def evaluate_alerts(self, rows: Sequence[Prepared]) -> None:
        """Hand the batch's rows (new and replayed: evaluation is idempotent) to the alert rules, after the
        commit and before the acknowledgement, so a crash in between has the batch evaluated on redelivery.
        Infrastructure failures fail the batch (retried); any other failure is logged, never holds ingestion."""
        if self.alerts is None:
            return
        try:
            await self.alerts.evaluate(rows)
        except Exception as exc:
            if transient(exc):
                raise
            log.exception("evaluating alert rules failed", extra={"error": repr(exc)})

    async def before_commit(self, stored: Sequence[Prepared]) -> None:
        """Runs inside the batch's transaction after everything is written (a hook; nothing by default)."""

    async def after_commit(self, entries: Sequence[Entry]) -> None:
        """Runs after the batch's commit, before it is acknowledged (a hook; nothing by default)."""

    def _letters(self, dead: Sequence[DeadLetter]) -> list[tuple[str, str, str, datetime, int, bytes]]:
        now = datetime.now(UTC)
        return [
            (self.stream, letter.entry_id, letter.reason, now, letter.deliveries, letter.payload) for letter in dead
        ]

    async def _isolate(
        self, rows: Sequence[Prepared], result: BatchResult, entries: Sequence[Entry] = ()
    ) -> list[Prepared]:
        """After a batch failed: halves in transactions of their own, halving again what fails, down to rows
        that fail alone (a few failing rows cost a few dozen transactions, not one per row). A row that fails
        alone stays pending, or is dead-lettered once delivered MAX_DELIVERIES times."""
        stored: list[Prepared] = []
        groups = [rows[: len(rows) // 2], rows[len(rows) // 2 :]] if len(rows) > 1 else [rows]
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            try:
                stored.extend(await self.write(group, []))
                continue
            except Exception as exc:
                if transient(exc):
                    raise
                if len(group) > 1:
                    groups[:0] = [group[: len(group) // 2], group[len(group) // 2 :]]
                    continue
                error = exc
            row = group[0]
            result.failed += 1
            deliveries = await self.deliveries(row.entry_id)
            entry_id = _text(row.entry_id)
            if deliveries >= self.config.max_deliveries:
                payload = next((fields.get(b"event", b"") for key, fields in entries if key == row.entry_id), b"")
                reason = f"processing failed: {error!r}"[:2000]
                result.dead.append(DeadLetter(entry_id, reason, deliveries, payload[:PAYLOAD_KEEP]))
            else:
                result.pending.append(entry_id)
                log.warning(
                    "a scan entry failed; it stays pending",
                    extra={"entry": entry_id, "deliveries": deliveries, "error": repr(error)},
                )
        if result.dead:
            await self.write([], result.dead)
        return stored

    async def deliveries(self, entry_id: bytes | str) -> int:
        """How many times the group delivered this entry (0 when it is not pending)."""
        answer: Any = await self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(answer[0]["times_delivered"]) if answer else 0

    async def acknowledge(self, entries: Sequence[Entry], result: BatchResult) -> None:
        """Copy dead letters to the dead-letter stream, then XACK every entry not left pending."""
        await self.after_commit(entries)
        payloads = {entry_id: fields.get(b"event", b"") for entry_id, fields in entries} if result.dead else {}
        keep = {_raw(entry_id) for entry_id in result.pending}
        async with self.redis.pipeline(transaction=False) as pipe:
            for letter in result.dead:
                pipe.xadd(
                    self.dead_stream,
                    {
                        "stream_id": letter.entry_id,
                        "reason": letter.reason,
                        "deliveries": str(letter.deliveries),
                        "event": payloads.get(_raw(letter.entry_id), b"")[:PAYLOAD_KEEP],
                    },
                    maxlen=DEAD_STREAM_MAXLEN,
                    approximate=True,
                )
            done = [entry_id for entry_id, _ in entries if entry_id not in keep] if keep else [e for e, _ in entries]
            if done:
                pipe.xack(self.stream, self.group, *done)
            await pipe.execute()

    # -- live feed ---------------------------------------------------------------------------------

    async def watched(self, organizations: set[str]) -> set[str]:
        """The organizations someone watches: one found watched is trusted for a second; one found unwatched is
        looked up again by the next batch (a new watcher gets the scans right after it subscribed)."""
        now = clock.monotonic()
        stale = sorted(org for org in organizations if now - self._watching.get(org, -1e18) >= WATCHING_TTL)
        if stale:
            async with self.redis.pipeline(transaction=False) as pipe:
                for org in stale:
                    pipe.exists(WATCHING_KEY.format(org))
                answers = await pipe.execute()
            for org, answer in zip(stale, answers, strict=True):
                if answer:
                    self._watching[org] = now
                else:
                    self._watching.pop(org, None)
            if len(self._watching) > 100_000:
                self._watching = {org: seen for org, seen in self._watching.items() if now - seen < WATCHING_TTL}
        return {org for org in organizations if org in self._watching}

    async def publish(self, stored: Sequence[Prepared]) -> None:
        """Send the new scans of each watched organization, oldest first, in WatchScansResponses of at most
        LIVE_CHUNK scans."""
        watched = await self.watched({row.organization_id for row in stored})
        if not watched:
            return
        by_org: dict[str, list[Prepared]] = {}
        for row in stored:
            if row.organization_id in watched:
                by_org.setdefault(row.organization_id, []).append(row)
        async with self.redis.pipeline(transaction=False) as pipe:
            for org, rows in by_org.items():
                rows.sort(key=lambda row: row.key)
                for start in range(0, len(rows), LIVE_CHUNK):
                    chunk = rows[start : start + LIVE_CHUNK]
                    message = analytics_service_pb2.WatchScansResponse(scans=[scan_message(row) for row in chunk])
                    pipe.publish(LIVE_CHANNEL.format(org), message.SerializeToString())
            await pipe.execute()

    # -- housekeeping ------------------------------------------------------------------------------

    async def delete_idle_consumers(self) -> list[str]:
        """Delete consumers of the group idle for a day with nothing pending; their names."""
        try:
            consumers: Any = await self.redis.xinfo_consumers(self.stream, self.group)
        except ResponseError:
            return []
        deleted = []
        for consumer in consumers:
            name = _text(consumer["name"])
            if name != self.name and int(consumer["pending"]) == 0 and int(consumer["idle"]) > self.consumer_idle_ms:
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)
                deleted.append(name)
        if deleted:
            log.info("deleted idle consumers", extra={"consumers": ",".join(deleted)})
        return deleted

    @contextlib.contextmanager
    def _span(self, entries: int, rows: Sequence[Prepared]) -> Iterator[trace.Span]:
        """The batch's span, linked to the sampled trace contexts its events carry (the redirects' spans)."""
        links: list[Link] = []
        if tracing_enabled():
            for row in rows:
                if len(links) >= MAX_LINKS:
                    break
                context = extract_context(row.traceparent, row.tracestate) if row.traceparent else None
                if context is not None:
                    span_context = trace.get_current_span(context).get_span_context()
                    if span_context.trace_flags.sampled:
                        links.append(Link(span_context))
        with _tracer.start_as_current_span(
            f"process {self.stream}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.stream,
                "messaging.consumer.group.name": self.group,
                "messaging.batch.message_count": entries,
            },
        ) as span:
            yield span


def scan_message(row: Prepared) -> analytics_pb2.Scan:
    """The Scan message of a stored row."""
    values = row.row
    scan = analytics_pb2.Scan(
        event_id=row.event_id,
        qr_code=f"organizations/{values[2]}/qrCodes/{values[3]}",
        short_code=values[4],
        outcome=values[5],
        destination_url=values[6],
        matched_rule=values[7],
        country=values[8],
        region=values[9],
        city=values[10],
        device_type=values[11],
        device_brand=values[12],
        os=values[13],
        browser=values[14],
        language=values[15],
        referrer=values[16],
        bot=values[17],
        visitor_id=values[18],
        ip_address=values[19],
    )
    scan.time.FromDatetime(values[1])
    return scan


class Ingestion:
    """The process's consumers and the readings of their group, started and stopped with the server."""

    def __init__(self, engine: AsyncEngine, client: redis.Redis, config: AnalyticsConfig, enricher: Enricher) -> None:
        self.redis = client
        self.config = config
        base = f"analytics-{socket.gethostname()}-{os.getpid()}"
        self.consumers = [
            Consumer(engine, client, config, enricher, name=f"{base}-{index}" if index else base)
            for index in range(config.consumers)
        ]
        self._watcher: asyncio.Task[None] | None = None
        self._unwatch: Any = None
        self.lag: int | None = None
        self.pending: int | None = None
        self.length: int | None = None

    async def start(self) -> None:
        self._unwatch = READINGS.add(self.readings)
        for consumer in self.consumers:
            await consumer.start()
        self._watcher = asyncio.create_task(self._watch(), name="analytics-stream-lag")

    async def close(self) -> None:
        await asyncio.gather(*(consumer.close() for consumer in self.consumers))
        if self._watcher is not None:
            await tasks.stop(self._watcher)
            self._watcher = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def set_retention(self, days: int) -> None:
        """The longest raw retention of any organization: events older than it are not accepted."""
        for consumer in self.consumers:
            consumer.retention_days = days

    async def _watch(self) -> None:
        while True:
            try:
                await self.observe()
            except (RedisError, OSError) as exc:
                self.lag = self.pending = self.length = None
                log.debug("cannot read the scan stream's lag", extra={"error": repr(exc)})
            await asyncio.sleep(WATCH_EVERY)

    async def observe(self) -> None:
        """Read the group's lag and pending count and the stream's length."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.config.stream)
        except ResponseError:
            self.lag, self.pending, self.length = 0, 0, 0
            return
        self.length = int(await self.redis.xlen(self.config.stream))
        self.lag = self.pending = None
        for group in groups:
            if _text(group["name"]) == self.config.group:
                lag = group.get("lag")
                self.lag = None if lag is None else int(lag)
                self.pending = int(group["pending"])

    def readings(self) -> Iterator[Metric]:
        """Metrics of the consumers and their group (for `READINGS.add`)."""
        labels = [self.config.stream, self.config.group]
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
            length.add_metric([self.config.stream], self.length)
            yield length
        for name, documentation, attribute in (
            ("qrmesh_stream_processed", "Entries this process acknowledged.", "processed"),
            ("qrmesh_stream_failures", "Batches this process failed to process (retried).", "failures"),
            ("qrmesh_analytics_scans_stored", "Scans this process stored for the first time.", "stored"),
            ("qrmesh_analytics_scans_duplicate", "Scan events this process found already stored.", "duplicates"),
            ("qrmesh_analytics_dead_letters", "Entries this process set aside as dead letters.", "dead_lettered"),
            ("qrmesh_analytics_scans_expired", "Scan events older than their organization's retention.", "expired"),
        ):
            counter = CounterMetricFamily(name, documentation, labels=["stream", "group"])
            counter.add_metric(labels, sum(getattr(consumer, attribute) for consumer in self.consumers))
            yield counter
