"""Bulk generation: a table's rows become stored QR codes in the background, with a ZIP of their images.

CreateBatch checks every row in a worker process (the rules of single creation, `domain/bulk_rows.py`),
stores the batch and its valid rows in one transaction (each row already has the id its code will get),
and puts one message per chunk of rows on a Redis stream. Workers (QRMESH_QR_BATCH_WORKERS asyncio
tasks in every qr process, all replicas in one consumer group) take chunks: render the rows' images in
the process pool, then in one transaction lock the batch and the chunk's rows, insert the codes of the
rows still without one (and their short codes, for DYNAMIC), store the images and count the rows. A
chunk that runs again (its worker died before XACK, and another one claimed it with XAUTOCLAIM) finds
its rows done and does nothing, so a code is never made twice nor lost. The transaction that counts the
last row marks the batch DONE and queues `batch.completed` in the events outbox. Progress goes out on
Redis pub/sub (`qrmesh:qr:batch:{id}`), which WatchBatch follows. A sweeper re-queues batches whose
chunks never reached the stream or stalled, and deletes outputs past their retention.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from google.protobuf import json_format, timestamp_pb2
from redis.exceptions import RedisError, ResponseError

from qrmesh.billing.client import require_room
from qrmesh.billing.domain.entitlements import BULK_ROWS, DYNAMIC_CODES
from qrmesh.platform import tasks
from qrmesh.platform.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from qrmesh.platform.events import new_event
from qrmesh.platform.settings import Settings, int_setting
from qrmesh.qr import batch_store, design_proto, events, names, store
from qrmesh.qr.batch_render import Pool, Prepared, default_processes, prepare_batch, render_chunk
from qrmesh.qr.convert import timestamp
from qrmesh.qr.domain import batch_files, bulk_rows, ids, labels, shortcodes
from qrmesh.qr.domain.plan_features import required_features
from qrmesh.qr.rendering import check_renderable, prefixed
from qrmesh.qr.service import QrCodes
from qrmesh.qr.v1 import batch_pb2, qr_code_pb2, qr_code_service_pb2, stored_qr_code_pb2

log = logging.getLogger("qrmesh.qr.batches")

Spec = batch_pb2.BatchSpec
REQUEST_ID_TTL = timedelta(days=1)
MAX_VIOLATIONS = 100
"""Rows whose problems a refused CreateBatch names."""
CHANNEL = "qrmesh:qr:batch:{}"
HEARTBEAT = 15.0
"""Seconds WatchBatch waits without change before sending the batch again."""
ZIP_FLUSH = 1 << 20
"""Bytes of archive gathered before a chunk is sent."""
IMAGE_PAGE = 100
MAX_DELIVERIES = 10
"""Times a chunk is tried (once per `claim_idle_ms` after a failure) before its batch FAILS."""
MANIFEST_PAGE = 2000
MAX_PREVIEW_ERRORS = 1000
"""Row errors a validate_only answer lists at most (`invalid_rows` counts them all; ListBatchRowErrors does not
apply to an unstored batch), so the reply stays far below message size limits."""
PURGE_PER_SWEEP = 100


def utcnow() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """QRMESH_QR_BATCH_* settings."""

    stream: str = "qr-batches"
    """QRMESH_QR_BATCH_STREAM: the Redis stream of chunks (default `qr-batches.{database name}`, so
    installations sharing a Redis never take each other's work)."""
    group: str = "qr-batch-workers"
    workers: int = 4
    """QRMESH_QR_BATCH_WORKERS: chunk workers (asyncio tasks) per qr process; 0: this process takes none."""
    chunk_rows: int = 250
    """QRMESH_QR_BATCH_CHUNK_ROWS: rows per chunk (one queue message, one transaction)."""
    block_ms: int = 2000
    """QRMESH_QR_BATCH_BLOCK_MS: how long a worker waits for a chunk in one read."""
    claim_idle_ms: int = 60_000
    """QRMESH_QR_BATCH_CLAIM_IDLE_MS: a chunk taken this long ago and not finished (its worker died) is
    taken over by another worker."""
    retention_days: int = 7
    """QRMESH_QR_BATCH_RETENTION_DAYS: days a batch's archive and manifest are kept (its codes stay)."""
    render_processes: int = 2
    """QRMESH_QR_BATCH_RENDER_PROCESSES: worker processes that check tables and render images."""
    sweep_interval: float = 30.0
    """QRMESH_QR_BATCH_SWEEP_INTERVAL: seconds between sweeps (re-queue stalled batches, expire outputs)."""
    stall_seconds: int = 600
    """QRMESH_QR_BATCH_STALL_SECONDS: a running batch without progress this long has its chunks queued again."""
    max_rows: int = 100_000
    """QRMESH_QR_BATCH_MAX_ROWS: rows a batch may have at most, whatever the plan allows."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchConfig:
        env = {f"QRMESH_QR_{k}": v for k, v in settings.extra.items()}

        def number(name: str, default: int, low: int, high: int) -> int:
            return int_setting(env, f"QRMESH_QR_BATCH_{name}", default, low=low, high=high)

        database = urlsplit(settings.database_url).path.strip("/") or "qrmesh"
        return cls(
            stream=env.get("QRMESH_QR_BATCH_STREAM", "").strip() or f"qr-batches.{database}",
            workers=number("WORKERS", 4, 0, 64),
            chunk_rows=number("CHUNK_ROWS", 250, 1, 10_000),
            block_ms=number("BLOCK_MS", 2000, 10, 60_000),
            claim_idle_ms=number("CLAIM_IDLE_MS", 60_000, 100, 86_400_000),
            retention_days=number("RETENTION_DAYS", 7, 1, 3650),
            render_processes=number("RENDER_PROCESSES", default_processes(), 1, 64),
            sweep_interval=float(number("SWEEP_INTERVAL", 30, 1, 86_400)),
            stall_seconds=number("STALL_SECONDS", 600, 1, 86_400),
            max_rows=number("MAX_ROWS", 100_000, 1, 10_000_000),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What CreateBatch answers: the batch (not stored for validate_only) and its first row errors."""

    batch: batch_store.BatchRecord
    errors: list[batch_store.ErrorRecord]


class Batches:
    """Every batch operation and the chunk workers, over the qr service's `QrCodes`."""

    def __init__(self, codes: QrCodes, config: BatchConfig) -> None:
        self.codes = codes
        self.config = config
        self.sessions = codes.sessions
        self.redis = codes.redis
        self.plans = codes.plans
        self.pool = Pool(config.render_processes)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the consumer group and start the workers and the sweeper."""
        await self._ensure_group()
        for index in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._work(f"{self._consumer}-{index}"), name="qr-batch-worker"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="qr-batch-sweeper"))

    async def stopping(self) -> None:
        """End WatchBatch streams so the server need not wait for them."""
        self._closing.set()

    async def close(self) -> None:
        """Stop workers (chunks they held are taken over after `claim_idle_ms`) and the render processes."""
        self._closing.set()
        for task in self._tasks:
            await tasks.stop(task)
        self._tasks.clear()
        await self.pool.close()

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # ------------------------------------------------------------ create

    async def create(
        self,
        organization: str,
        batch: batch_pb2.Batch,
        source: bytes | list[dict[str, str]],
        *,
        validate_only: bool,
        skip_invalid_rows: bool,
        request_id: str,
    ) -> Outcome:
        """Check every row; refuse invalid rows (unless skipped), else store the batch and queue its chunks."""
        org_name = names.organization_name(organization)
        if request_id and not validate_only:
            async with self.sessions.begin() as session:
                earlier = await batch_store.find_batch_request(
                    organization, request_id, session=session, since=utcnow() - REQUEST_ID_TTL
                )
            if earlier:
                found = await self.get(organization, earlier)
                return Outcome(found, [])
        spec, template = await self._spec(organization, batch)
        display_name = labels.normalize_display_name(batch.display_name, field="batch.displayName")
        folder = labels.normalize_folder(spec.folder, field="batch.spec.folder")
        tags = labels.normalize_tags(list(spec.tags), field="batch.spec.tags")
        dynamic = spec.mode == stored_qr_code_pb2.QrCode.DYNAMIC
        if dynamic and spec.payload_kind != Spec.URL:
            raise InvalidArgument.field(
                "batch.spec.payloadKind",
                "a DYNAMIC batch needs URL rows: each code's short link redirects to its row's URL",
                reason="DYNAMIC_NEEDS_URL",
            )
        await self._require_features(organization, spec)
        entitlements = await self.plans.entitlements(org_name)
        plan_limit = entitlements.limit(BULK_ROWS)
        if plan_limit is not None and plan_limit < 1:
            await require_room(self.plans, org_name, BULK_ROWS, usage=0, requested=1)
        limit = self.config.max_rows if plan_limit is None else min(plan_limit, self.config.max_rows)
        if dynamic:
            await self._check_dynamic_design(spec)
        else:
            _check_design(spec)
        try:
            prepared: Prepared = await self.pool.run(
                prepare_batch, source, spec.SerializeToString(deterministic=True), limit
            )
        except bulk_rows.BulkInputError as error:
            if error.reason == "TOO_MANY_ROWS" and plan_limit is not None and plan_limit <= self.config.max_rows:
                await require_room(self.plans, org_name, BULK_ROWS, usage=0, requested=plan_limit + 1)
            if error.reason == "TOO_MANY_ROWS":
                raise InvalidArgument.field(
                    error.field,
                    f"a batch may have at most {limit:,} rows; split the table into several batches",
                    reason="TOO_MANY_ROWS",
                ) from None
            raise InvalidArgument.field(error.field, str(error), reason=error.reason) from None
        if prepared.unknown_placeholders:
            raise InvalidArgument.field(
                "batch.spec.fileNameTemplate",
                f"names columns the table does not have: {', '.join(sorted(set(prepared.unknown_placeholders)))}",
                reason="UNKNOWN_COLUMN",
            )
        if prepared.total_rows == 0:
            raise InvalidArgument.field("source", "the table has no data rows", reason="EMPTY_TABLE")
        await require_room(self.plans, org_name, BULK_ROWS, usage=0, requested=prepared.total_rows)
        errors = [batch_store.ErrorRecord(e.row, e.column, e.field, e.reason, e.code) for e in prepared.errors]
        invalid = len({e.row for e in errors})
        now = utcnow()
        if errors and not skip_invalid_rows and not validate_only:
            raise _invalid_rows(errors, invalid)
        values: dict[str, Any] = {
            "id": ids.new_id(),
            "organization_id": organization,
            "display_name": display_name,
            "spec": _stored_spec(spec, folder, tags),
            "template": template,
            "kind": "DYNAMIC" if dynamic else "STATIC",
            "state": "RUNNING" if prepared.rows else "DONE",
            "total_rows": prepared.total_rows,
            "valid_rows": len(prepared.rows),
            "invalid_rows": invalid,
            "processed_rows": 0,
            "error": "",
            "request_id": request_id or None,
            "created_at": now,
            "updated_at": now,
            "ended_at": None if prepared.rows else now,
            "expires_at": now + timedelta(days=self.config.retention_days),
            "purged": False,
            "stream": self.config.stream,
        }
        if validate_only:
            preview = {k: v for k, v in values.items() if k not in ("request_id", "stream")}
            preview.update(id="", state="VALIDATING", ended_at=None)
            return Outcome(batch_store.BatchRecord(**preview), errors[:MAX_PREVIEW_ERRORS])
        rows = [
            {
                "batch_id": values["id"],
                "seq": seq,
                "row": row.row,
                "qr_code_id": ids.new_id(),
                "content": row.content,
                "payload": row.payload,
                "display_name": row.display_name,
                "file_name": row.file_name,
                "status": batch_store.PENDING,
                "short_code": None,
                "image": None,
            }
            for seq, row in enumerate(prepared.rows)
        ]
        error_rows = [{"batch_id": values["id"], "seq": seq, **vars_of(error)} for seq, error in enumerate(errors)]
        async with self.sessions.begin() as session:
            if request_id:
                await store.advisory_lock(f"batch-request:{organization}:{request_id}", session=session)
                earlier = await batch_store.find_batch_request(
                    organization, request_id, session=session, since=now - REQUEST_ID_TTL
                )
                if earlier:
                    again = await batch_store.get_batch(organization, earlier, session=session)
                    if again is not None:
                        return Outcome(again, [])
                await batch_store.forget_stale_request(organization, request_id, session=session)
            if dynamic and rows and entitlements.limit(DYNAMIC_CODES) is not None:
                await store.advisory_lock(f"dynamic-codes:{organization}", session=session)
                used = await store.count_dynamic_codes(organization, session=session)
                await require_room(self.plans, org_name, DYNAMIC_CODES, usage=used, requested=len(rows))
            record = await batch_store.insert_batch(session=session, values=values, rows=rows, errors=error_rows)
            if record.state == "DONE":
                await events.record(session, [self._completed_event(record)])
        if record.state == "DONE":
            self.codes.events.wake()
        else:
            await self._enqueue(record.id, [row["seq"] for row in rows])
        return Outcome(record, errors[:MAX_VIOLATIONS])

    async def _spec(self, organization: str, batch: batch_pb2.Batch) -> tuple[Spec, str]:
        if batch.template:
            if batch.HasField("spec"):
                raise InvalidArgument.field(
                    "batch.spec", "give a spec or a template, not both", reason="SPEC_AND_TEMPLATE"
                )
            template_org, template_id = template_ids(batch.template, field="batch.template")
            if template_org != organization:
                raise InvalidArgument.field(
                    "batch.template", "must be a template of the same organization", reason="INVALID_NAME"
                )
            found = await self.get_template(organization, template_id)
            return Spec.FromString(found.spec), batch.template
        if not batch.HasField("spec"):
            raise InvalidArgument.field("batch.spec", "is required (or name a template)", reason="SPEC_REQUIRED")
        return batch.spec, ""

    async def _require_features(self, organization: str, spec: Spec) -> None:
        features = required_features(
            old_design=None, new_design=spec.design, old_rules=None, new_rules=None, password_set=False
        )
        await self.codes._require_features(organization, features)

    async def _check_dynamic_design(self, spec: Spec) -> None:
        """A DYNAMIC code encodes its short URL: the design must render the longest one."""
        placeholder = self.codes.short_url("x" * shortcodes.MAX_RANDOM_LENGTH)
        request = qr_code_service_pb2.RenderQrCodeRequest(
            content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=placeholder)), design=spec.design
        )
        try:
            await asyncio.to_thread(check_renderable, request)
        except InvalidArgument as error:
            raise prefixed(error, "batch.spec.") from None

    async def _enqueue(self, batch_id: str, seqs: Sequence[int]) -> None:
        """Queue the chunks holding `seqs`; on failure the sweeper queues them later."""
        size = self.config.chunk_rows
        starts = sorted({seq // size * size for seq in seqs})
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in starts:
                    pipe.xadd(self.config.stream, {"batch": batch_id, "start": start, "end": start + size})
                await pipe.execute()
            async with self.sessions.begin() as session:
                await batch_store.mark_enqueued(batch_id, session=session, now=utcnow())
        except (RedisError, OSError) as error:
            log.warning("batch chunks not queued; the sweeper retries", extra={"batch": batch_id, "error": repr(error)})

    # ------------------------------------------------------------ reads

    async def get(self, organization: str, batch_id: str) -> batch_store.BatchRecord:
        """A batch of this organization."""
        async with self.sessions.begin() as session:
            found = await batch_store.get_batch(organization, batch_id, session=session)
        if found is None:
            raise NotFound(
                f"no batch {batch_name(organization, batch_id)}",
                reason="BATCH_NOT_FOUND",
                metadata={"name": batch_name(organization, batch_id)},
            )
        return found

    async def first_errors(self, batch_id: str) -> list[batch_store.ErrorRecord]:
        """The first row errors of a batch (what GetBatch shows)."""
        async with self.sessions.begin() as session:
            return await batch_store.row_errors(batch_id, session=session, offset=0, limit=MAX_VIOLATIONS)

    async def list_batches(self, organization: str, size: int, token: str) -> tuple[list[batch_store.BatchRecord], str]:
        """A page of the organization's batches, newest first, and the next page's token."""
        limit = size or 50
        after = _decode_batch_token(token) if token else None
        async with self.sessions.begin() as session:
            found = await batch_store.list_batches(organization, session=session, limit=limit + 1, after=after)
        page = found[:limit]
        next_token = _encode_batch_token(page[-1]) if len(found) > limit else ""
        return page, next_token

    async def row_errors(
        self, organization: str, batch_id: str, size: int, token: str
    ) -> tuple[list[batch_store.ErrorRecord], str, int]:
        """A page of a batch's row errors, the next page's token and how many there are."""
        await self.get(organization, batch_id)
        limit = size or 100
        offset = _decode_offset(token)
        async with self.sessions.begin() as session:
            found = await batch_store.row_errors(batch_id, session=session, offset=offset, limit=limit + 1)
            total = await batch_store.count_row_errors(batch_id, session=session)
        next_token = _encode_offset(offset + limit) if len(found) > limit else ""
        return found[:limit], next_token, total

    # ------------------------------------------------------------ cancel and watch

    async def cancel(self, organization: str, batch_id: str) -> batch_store.BatchRecord:
        """Stop a running batch; a finished one is answered as it is."""
        found = await self.get(organization, batch_id)
        async with self.sessions.begin() as session:
            changed = await batch_store.set_state(
                batch_id, "CANCELED", session=session, now=utcnow(), only_from=batch_store.ACTIVE_STATES
            )
        if changed is None:
            return await self.get(organization, found.id)
        await self._announce(batch_id)
        return changed

    async def watch(self, organization: str, batch_id: str) -> AsyncIterator[batch_store.BatchRecord]:
        """The batch now, then whenever it changes (or every HEARTBEAT s), until it ends."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL.format(batch_id))
            last: batch_store.BatchRecord | None = None
            quiet = 0.0
            while True:
                current = await self.get(organization, batch_id)
                if last is None or _changed(last, current) or quiet >= HEARTBEAT:
                    yield current
                    quiet = 0.0
                last = current
                if current.state in batch_store.TERMINAL_STATES or self._closing.is_set():
                    return
                started = asyncio.get_running_loop().time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        while await pubsub.get_message(timeout=2.0) is None:
                            pass
                quiet += asyncio.get_running_loop().time() - started
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _announce(self, batch_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.publish(CHANNEL.format(batch_id), "1")

    # ------------------------------------------------------------ downloads

    async def _outputs(self, organization: str, batch_id: str) -> tuple[batch_store.BatchRecord, Spec]:
        found = await self.get(organization, batch_id)
        if found.purged:
            raise NotFound(
                "this batch's archive and manifest expired (its codes are kept)", reason="BATCH_OUTPUTS_EXPIRED"
            )
        if found.state in batch_store.ACTIVE_STATES:
            raise FailedPrecondition(
                f"the batch is still {found.state.lower()} ({found.processed_rows} of {found.valid_rows} rows);"
                " download it once it is done (WatchBatch says when)",
                reason="BATCH_NOT_DONE",
            )
        return found, Spec.FromString(found.spec)

    async def archive(self, organization: str, batch_id: str) -> AsyncIterator[bytes]:
        """The batch's images and manifest as a ZIP, in chunks of about ZIP_FLUSH bytes."""
        found, spec = await self._outputs(organization, batch_id)
        fmt = Spec.Format.Name(spec.format or Spec.PNG)
        extension = batch_files.EXTENSIONS[fmt]
        archive = batch_files.ZipStream(found.created_at)
        pending = 0
        after = -1
        while True:
            async with self.sessions.begin() as session:
                page = await batch_store.output_rows(
                    batch_id, session=session, after=after, limit=IMAGE_PAGE, images=True
                )
            if not page:
                break
            for row, image in page:
                archive.add(f"{row.file_name}.{extension}", image or b"")
                pending += len(image or b"")
                after = row.seq
            if pending >= ZIP_FLUSH:
                yield archive.take()
                pending = 0
        entry = archive.open("manifest.csv")
        async for line in self._manifest_lines(found, extension):
            entry.write(line)
            pending += len(line)
            if pending >= ZIP_FLUSH:
                yield archive.take()
                pending = 0
        entry.close()
        yield archive.close()

    async def manifest(self, organization: str, batch_id: str) -> AsyncIterator[bytes]:
        """The manifest CSV alone, in chunks."""
        found, spec = await self._outputs(organization, batch_id)
        extension = batch_files.EXTENSIONS[Spec.Format.Name(spec.format or Spec.PNG)]
        buffer: list[bytes] = []
        size = 0
        async for line in self._manifest_lines(found, extension):
            buffer.append(line)
            size += len(line)
            if size >= ZIP_FLUSH:
                yield b"".join(buffer)
                buffer, size = [], 0
        yield b"".join(buffer)

    async def _manifest_lines(self, found: batch_store.BatchRecord, extension: str) -> AsyncIterator[bytes]:
        yield batch_files.manifest_header()
        after = -1
        while True:
            async with self.sessions.begin() as session:
                page = await batch_store.output_rows(
                    found.id, session=session, after=after, limit=MANIFEST_PAGE, images=False
                )
            if not page:
                return
            for row, _ in page:
                short_url = self.codes.short_url(row.short_code) if row.short_code else ""
                code = names.qr_code_name(found.organization_id, row.qr_code_id)
                yield batch_files.manifest_line([row.row, code, short_url, row.payload, f"{row.file_name}.{extension}"])
                after = row.seq

    # ------------------------------------------------------------ templates

    async def create_template(self, organization: str, display_name: str, spec: Spec) -> batch_store.TemplateRecord:
        """Save a template."""
        name = labels.normalize_display_name(display_name, field="batchTemplate.displayName")
        if not name:
            raise InvalidArgument.field("batchTemplate.displayName", "is required", reason="DISPLAY_NAME_REQUIRED")
        _check_template_spec(spec, "batchTemplate.spec")
        now = utcnow()
        async with self.sessions.begin() as session:
            return await batch_store.insert_template(
                session=session,
                values={
                    "id": ids.new_id(),
                    "organization_id": organization,
                    "display_name": name,
                    "spec": spec.SerializeToString(deterministic=True),
                    "revision": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )

    async def get_template(self, organization: str, template_id: str) -> batch_store.TemplateRecord:
        """A template of this organization."""
        async with self.sessions.begin() as session:
            found = await batch_store.get_template(organization, template_id, session=session)
        if found is None:
            raise NotFound(
                f"no batch template {template_name(organization, template_id)}",
                reason="BATCH_TEMPLATE_NOT_FOUND",
                metadata={"name": template_name(organization, template_id)},
            )
        return found

    async def list_templates(
        self, organization: str, size: int, token: str
    ) -> tuple[list[batch_store.TemplateRecord], str]:
        """A page of templates by display name and the next page's token."""
        limit = size or 50
        after = _decode_pair(token) if token else None
        async with self.sessions.begin() as session:
            found = await batch_store.list_templates(organization, session=session, limit=limit + 1, after=after)
        page = found[:limit]
        next_token = _encode_pair(page[-1].display_name, page[-1].id) if len(found) > limit else ""
        return page, next_token

    async def update_template(
        self, organization: str, template_id: str, template: batch_pb2.BatchTemplate, paths: Sequence[str]
    ) -> batch_store.TemplateRecord:
        """Change the fields in `paths` (`display_name`, `spec`, `spec.*`); ABORTED on a stale etag."""
        async with self.sessions.begin() as session:
            found = await batch_store.get_template(organization, template_id, session=session, for_update=True)
            if found is None:
                raise NotFound(
                    f"no batch template {template_name(organization, template_id)}", reason="BATCH_TEMPLATE_NOT_FOUND"
                )
            if template.etag and template.etag != template_etag(found):
                raise Aborted("the template changed since it was read; read it again", reason="ETAG_MISMATCH")
            display_name = found.display_name
            spec = Spec.FromString(found.spec)
            changes: Any = template.spec
            target: Any = spec
            for path in paths or ("display_name", "spec"):
                if path == "display_name":
                    display_name = labels.normalize_display_name(
                        template.display_name, field="batchTemplate.displayName"
                    )
                elif path == "spec":
                    spec.CopyFrom(template.spec)
                elif path.startswith("spec.") and path[5:] in Spec.DESCRIPTOR.fields_by_name:
                    name = path[5:]
                    target.ClearField(name)
                    field_descriptor = Spec.DESCRIPTOR.fields_by_name[name]
                    if (
                        field_descriptor.message_type is not None
                        and not field_descriptor.message_type.GetOptions().map_entry
                    ):
                        if changes.HasField(name):
                            getattr(target, name).CopyFrom(getattr(changes, name))
                    elif field_descriptor.is_repeated:
                        source = getattr(changes, name)
                        if field_descriptor.message_type is not None:
                            getattr(target, name).update(source)
                        else:
                            getattr(target, name).extend(source)
                    else:
                        setattr(target, name, getattr(changes, name))
                else:
                    raise InvalidArgument.field(
                        "updateMask", f"{path!r} cannot be changed (display_name, spec, spec.*)", reason="INVALID_MASK"
                    )
            _check_template_spec(spec, "batchTemplate.spec")
            return await batch_store.update_template(
                template_id,
                session=session,
                values={
                    "display_name": display_name,
                    "spec": spec.SerializeToString(deterministic=True),
                    "revision": found.revision + 1,
                    "updated_at": utcnow(),
                },
            )

    async def delete_template(self, organization: str, template_id: str, etag: str) -> None:
        """Delete a template; ABORTED on a stale etag."""
        async with self.sessions.begin() as session:
            found = await batch_store.get_template(organization, template_id, session=session, for_update=True)
            if found is None:
                raise NotFound(
                    f"no batch template {template_name(organization, template_id)}", reason="BATCH_TEMPLATE_NOT_FOUND"
                )
            if etag and etag != template_etag(found):
                raise Aborted("the template changed since it was read; read it again", reason="ETAG_MISMATCH")
            await batch_store.delete_template(template_id, session=session)

    # ------------------------------------------------------------ workers

    async def _work(self, consumer: str) -> None:
        """Take chunks until cancelled: first ones a dead worker left (XAUTOCLAIM), then new ones."""
        failures = 0
        last_claim = 0.0
        claim_from = "0-0"  # XAUTOCLAIM's cursor: each call goes on where the last one stopped
        loop = asyncio.get_running_loop()
        while True:
            try:
                if failures:
                    await asyncio.sleep(min(0.25 * 2 ** (failures - 1), 10.0))
                entries: list[tuple[Any, dict[Any, Any]]] = []
                if loop.time() - last_claim >= min(self.config.claim_idle_ms / 2000, 5.0):
                    last_claim = loop.time()
                    claimed = await self.redis.xautoclaim(
                        self.config.stream,
                        self.config.group,
                        consumer,
                        min_idle_time=self.config.claim_idle_ms,
                        start_id=claim_from,
                        count=1,
                    )
                    cursor = claimed[0]
                    claim_from = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
                    entries = list(claimed[1])
                if not entries:
                    answer = await self.redis.xreadgroup(
                        self.config.group,
                        consumer,
                        {self.config.stream: ">"},
                        count=1,
                        block=self.config.block_ms,
                    )
                    read = cast(list[tuple[Any, list[tuple[Any, dict[Any, Any]]]]], answer or [])
                    entries = [entry for _, items in read for entry in items]
                for entry_id, fields in entries:
                    if fields:
                        await self._take(entry_id, fields)
                    await self.redis.xack(self.config.stream, self.config.group, entry_id)
                    await self.redis.xdel(self.config.stream, entry_id)
                failures = 0
            except asyncio.CancelledError:
                raise
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    with contextlib.suppress(Exception):
                        await self._ensure_group()
                failures += 1
                log.warning("batch worker failed; retrying", extra={"error": repr(error)})
            except Exception as error:  # noqa: BLE001 - the chunk stays pending and is retried
                failures += 1
                log.warning("batch worker failed; retrying", extra={"error": repr(error), "attempt": failures})

    async def _take(self, entry_id: Any, fields: dict[Any, Any]) -> None:
        """Run one chunk; a chunk that failed MAX_DELIVERIES times fails its batch instead of looping."""
        batch_id = _text(fields, "batch")
        try:
            await self.run_chunk(batch_id, int(_text(fields, "start")), int(_text(fields, "end")))
        except Exception as error:
            pending = await self.redis.xpending_range(
                self.config.stream, self.config.group, min=entry_id, max=entry_id, count=1
            )
            if not pending or int(pending[0]["times_delivered"]) < MAX_DELIVERIES:
                raise  # left pending: taken over again after claim_idle_ms
            async with self.sessions.begin() as session:
                found = await batch_store.get_batch_by_id(batch_id, session=session)
            if found is not None:
                await self._fail(found, f"a chunk of rows failed {MAX_DELIVERIES} times: {error!r}")

    async def run_chunk(self, batch_id: str, start: int, end: int) -> int:
        """Create the codes of the rows at [start, end) that have none yet; how many were created."""
        async with self.sessions.begin() as session:
            found = await batch_store.get_batch_by_id(batch_id, session=session)
            rows = (
                await batch_store.chunk_rows(batch_id, start, end, session=session, pending_only=True)
                if found is not None and found.state == "RUNNING"
                else []
            )
        if found is None or not rows:
            return 0
        spec = Spec.FromString(found.spec)
        dynamic = found.kind == "DYNAMIC"
        short = _distinct_short_codes([row.seq for row in rows]) if dynamic else {}
        try:
            images = dict(zip((row.seq for row in rows), await self._render(spec, rows, short), strict=True))
        except InvalidArgument as error:
            await self._fail(found, f"a row could not be rendered: {error.message}")
            return 0
        now = utcnow()
        design = spec.design.SerializeToString(deterministic=True)
        rules = stored_qr_code_pb2.LinkRules().SerializeToString(deterministic=True)
        tags = list(spec.tags)
        completed: batch_store.BatchRecord | None = None
        async with self.sessions.begin() as session:
            locked = await batch_store.get_batch_by_id(batch_id, session=session, for_update=True)
            if locked is None or locked.state != "RUNNING":
                return 0
            still = await batch_store.chunk_rows(
                batch_id, start, end, session=session, pending_only=True, for_update=True
            )
            todo = [row for row in still if row.seq in images]
            if not todo:
                return 0
            if dynamic:
                free = await batch_store.claim_short_codes(
                    [(short[row.seq], row.qr_code_id) for row in todo],
                    session=session,
                    organization_id=found.organization_id,
                    now=now,
                )
                for row in todo:
                    if short[row.seq] not in free:  # a collision: rare, so one at a time
                        short[row.seq] = await self.codes._claim_short_code(
                            session, found.organization_id, row.qr_code_id, "", now
                        )
                        images[row.seq] = (await self._render(spec, [row], short))[0]
            await batch_store.insert_codes(
                [
                    {
                        "id": row.qr_code_id,
                        "organization_id": found.organization_id,
                        "display_name": row.display_name,
                        "kind": found.kind,
                        "content": row.content,
                        "design": design,
                        "folder": spec.folder,
                        "tags": tags,
                        "tag_keys": [labels.tag_key(tag) for tag in tags],
                        "status": "ACTIVE",
                        "short_code": short.get(row.seq),
                        "rules": rules,
                        "password_hash": None,
                        "max_scans": 0,
                        "claimed_scans": 0,
                        "redirect_type": "FOUND",
                        "scan_count": 0,
                        "revision": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for row in todo
                ],
                session=session,
            )
            await batch_store.finish_rows(
                [{"seq": row.seq, "short_code": short.get(row.seq), "image": images[row.seq]} for row in todo],
                session=session,
                batch_id=batch_id,
            )
            counted = await batch_store.add_processed(batch_id, len(todo), session=session, now=now)
            if counted.processed_rows >= counted.valid_rows:
                completed = await batch_store.set_state(
                    batch_id, "DONE", session=session, now=now, only_from=("RUNNING",)
                )
                if completed is not None:
                    await events.record(session, [self._completed_event(completed)])
        if dynamic:
            await self.codes.publisher.publish([short[row.seq] for row in todo])
        if completed is not None:
            self.codes.events.wake()
        await self._announce(batch_id)
        return len(todo)

    async def _render(self, spec: Spec, rows: Sequence[batch_store.RowRecord], short: dict[int, str]) -> list[bytes]:
        if short:
            contents = [
                qr_code_pb2.Content(
                    url=qr_code_pb2.UrlPayload(url=self.codes.short_url(short[row.seq]))
                ).SerializeToString()
                for row in rows
            ]
        else:
            contents = [row.content for row in rows]
        return await self.pool.run(
            render_chunk,
            spec.design.SerializeToString(deterministic=True),
            spec.format or Spec.PNG,
            spec.size or 512,
            contents,
        )

    async def _fail(self, found: batch_store.BatchRecord, error: str) -> None:
        async with self.sessions.begin() as session:
            await batch_store.set_state(
                found.id, "FAILED", session=session, now=utcnow(), only_from=batch_store.ACTIVE_STATES, error=error
            )
        log.error("batch failed", extra={"batch": found.id, "error": error})
        await self._announce(found.id)

    def _completed_event(self, record: batch_store.BatchRecord) -> Any:
        view = batch_to_proto(record, [])
        view.ClearField("spec")
        data = json_format.MessageToDict(view)
        return new_event(events.BATCH_COMPLETED, names.organization_name(record.organization_id), view.name, data)

    # ------------------------------------------------------------ sweeper

    async def _sweep(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - try again next round
                log.warning("batch sweep failed", extra={"error": repr(error)})
            await asyncio.sleep(self.config.sweep_interval)

    async def sweep_once(self) -> None:
        """Queue again the chunks of this stream's stalled batches; delete outputs past their retention. One
        replica sweeps a stream at a time (a transaction-scoped advisory lock; the others skip the round)."""
        now = utcnow()
        async with self.sessions.begin() as guard:
            key = sa.func.hashtextextended(f"qr:batch-sweep:{self.config.stream}", 0)
            if not (await guard.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key)))).scalar_one():
                return
            async with self.sessions.begin() as session:
                stalled = await batch_store.stalled_batches(
                    session=session,
                    stream=self.config.stream,
                    unqueued_before=now - timedelta(seconds=10),
                    idle_before=now - timedelta(seconds=self.config.stall_seconds),
                )
            queued = await self._queued_batches() if any(not unqueued for _, unqueued in stalled) else set()
            for batch_id, unqueued in stalled:
                if not unqueued and batch_id in queued:
                    continue  # its chunks are still on the stream (or held by a worker): no second copy
                async with self.sessions.begin() as session:
                    seqs = await batch_store.pending_seqs(batch_id, session=session)
                log.info("queueing a stalled batch again", extra={"batch": batch_id, "rows": len(seqs)})
                await self._enqueue(batch_id, seqs)
            for _ in range(PURGE_PER_SWEEP):
                async with self.sessions.begin() as session:
                    expired = await batch_store.next_expired_batch(session=session, now=now)
                    if expired is None:
                        break
                    await batch_store.purge_outputs(expired, session=session, now=now)

    async def _queued_batches(self) -> set[str]:
        """Batches with a chunk on the stream: waiting, or taken and not finished (entries are deleted once
        done, so the stream holds only those)."""
        found: set[str] = set()
        start = "-"
        while True:
            page = await self.redis.xrange(self.config.stream, min=start, count=1000) or []
            for _, fields in page:
                found.add(_text(fields or {}, "batch"))
            if len(page) < 1000:
                return found
            last = page[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


# ---------------------------------------------------------------- helpers


def _distinct_short_codes(seqs: Sequence[int]) -> dict[int, str]:
    """A random short code candidate for each row, no two alike (two rows of a chunk must never be given the
    same code: only one of them could have it)."""
    out: dict[int, str] = {}
    taken: set[str] = set()
    for seq in seqs:
        code = shortcodes.random_short_code()
        while code in taken:
            code = shortcodes.random_short_code()
        taken.add(code)
        out[seq] = code
    return out


def vars_of(error: batch_store.ErrorRecord) -> dict[str, Any]:
    """An error record's columns."""
    return {"row": error.row, "column": error.column, "field": error.field, "reason": error.reason, "code": error.code}


def _text(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored_spec(spec: Spec, folder: str, tags: Sequence[str]) -> bytes:
    stored = Spec()
    stored.CopyFrom(spec)
    stored.folder = folder
    del stored.tags[:]
    stored.tags.extend(tags)
    return stored.SerializeToString(deterministic=True)


def _check_design(spec: Spec) -> None:
    """A design that is wrong in itself (a bad color, a logo that is no image) is the request's fault, not
    every row's."""
    try:
        design_proto.design_from_proto(qr_code_service_pb2.RenderQrCodeRequest(design=spec.design))
    except InvalidArgument as error:
        raise prefixed(error, "batch.spec.") from None


def _check_template_spec(spec: Spec, field: str) -> None:
    if spec.mode == stored_qr_code_pb2.QrCode.DYNAMIC and spec.payload_kind != Spec.URL:
        raise InvalidArgument.field(
            f"{field}.payloadKind", "a DYNAMIC batch needs URL rows", reason="DYNAMIC_NEEDS_URL"
        )
    if not spec.mapping:
        raise InvalidArgument.field(f"{field}.mapping", "must map at least one column", reason="MAPPING_REQUIRED")


def _invalid_rows(errors: Sequence[batch_store.ErrorRecord], invalid: int) -> InvalidArgument:
    """INVALID_ROWS naming the problems of the first MAX_VIOLATIONS rows."""
    violations: list[FieldViolation] = []
    rows: set[int] = set()
    for error in errors:
        if error.row not in rows and len(rows) >= MAX_VIOLATIONS:
            break
        rows.add(error.row)
        where = f"rows[{error.row}]" + (f".{error.column}" if error.column else "")
        violations.append(FieldViolation(where, f"{error.reason} ({error.code})"))
    first = errors[0]
    column = f", column {first.column!r}" if first.column else ""
    return InvalidArgument(
        f"{invalid} row(s) are invalid (row {first.row}{column}: {first.reason}); fix them, or set"
        " skip_invalid_rows to create the valid rows only",
        violations=violations,
        reason="INVALID_ROWS",
        metadata={"count": str(invalid)},
    )


def _changed(old: batch_store.BatchRecord, new: batch_store.BatchRecord) -> bool:
    return (old.state, old.processed_rows) != (new.state, new.processed_rows)


def _encode_batch_token(record: batch_store.BatchRecord) -> str:
    return _encode_pair(record.created_at.isoformat(), record.id)


def _decode_batch_token(token: str) -> tuple[datetime, str]:
    created, batch_id = _decode_pair(token)
    try:
        return datetime.fromisoformat(created), batch_id
    except ValueError:
        raise InvalidArgument.field("pageToken", "is not a token this API gave", reason="INVALID_PAGE_TOKEN") from None


def _encode_pair(first: str, second: str) -> str:
    return base64.urlsafe_b64encode(f"{first}\x1f{second}".encode()).decode()


def _decode_pair(token: str) -> tuple[str, str]:
    try:
        first, second = base64.urlsafe_b64decode(token.encode()).decode().split("\x1f")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("pageToken", "is not a token this API gave", reason="INVALID_PAGE_TOKEN") from None
    return first, second


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode()


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("o"):
            raise ValueError(text)
        return max(0, int(text[1:]))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("pageToken", "is not a token this API gave", reason="INVALID_PAGE_TOKEN") from None


# ---------------------------------------------------------------- names and protos

_BATCH = re.compile(r"organizations/([a-z2-7]{16})/batches/([a-z2-7]{16})")
_TEMPLATE = re.compile(r"organizations/([a-z2-7]{16})/batchTemplates/([a-z2-7]{16})")


def batch_ids(name: str, *, field: str) -> tuple[str, str]:
    """(organization id, batch id) in `organizations/{id}/batches/{id}`."""
    match = _BATCH.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/batches/{batch}", reason="INVALID_NAME"
        )
    return match.group(1), match.group(2)


def template_ids(name: str, *, field: str) -> tuple[str, str]:
    """(organization id, template id) in `organizations/{id}/batchTemplates/{id}`."""
    match = _TEMPLATE.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field,
            "must be a resource name like organizations/{organization}/batchTemplates/{template}",
            reason="INVALID_NAME",
        )
    return match.group(1), match.group(2)


def batch_name(organization: str, batch_id: str) -> str:
    """`organizations/{id}/batches/{id}`."""
    return f"organizations/{organization}/batches/{batch_id}"


def template_name(organization: str, template_id: str) -> str:
    """`organizations/{id}/batchTemplates/{id}`."""
    return f"organizations/{organization}/batchTemplates/{template_id}"


def template_etag(record: batch_store.TemplateRecord) -> str:
    """A template's etag: it changes with every update."""
    return hashlib.sha256(f"{record.id}:{record.revision}".encode()).hexdigest()[:20]


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    return timestamp(moment)


def error_to_proto(error: batch_store.ErrorRecord) -> batch_pb2.RowError:
    """The API's view of a row error."""
    return batch_pb2.RowError(
        row=error.row, column=error.column, field=error.field, reason=error.reason, code=error.code
    )


def batch_to_proto(record: batch_store.BatchRecord, errors: Sequence[batch_store.ErrorRecord]) -> batch_pb2.Batch:
    """The API's view of a batch."""
    view = batch_pb2.Batch(
        name=batch_name(record.organization_id, record.id) if record.id else "",
        display_name=record.display_name,
        spec=Spec.FromString(record.spec),
        template=record.template,
        state=batch_pb2.Batch.State.Value(record.state),
        total_rows=record.total_rows,
        valid_rows=record.valid_rows,
        invalid_rows=record.invalid_rows,
        processed_rows=record.processed_rows,
        row_errors=[error_to_proto(error) for error in errors],
        error=record.error,
    )
    if record.id:
        view.create_time.CopyFrom(_timestamp(record.created_at))
        view.update_time.CopyFrom(_timestamp(record.updated_at))
        view.expire_time.CopyFrom(_timestamp(record.expires_at))
    if record.ended_at is not None:
        view.end_time.CopyFrom(_timestamp(record.ended_at))
    return view


def template_to_proto(record: batch_store.TemplateRecord) -> batch_pb2.BatchTemplate:
    """The API's view of a template."""
    view = batch_pb2.BatchTemplate(
        name=template_name(record.organization_id, record.id),
        display_name=record.display_name,
        spec=Spec.FromString(record.spec),
        etag=template_etag(record),
    )
    view.create_time.CopyFrom(_timestamp(record.created_at))
    view.update_time.CopyFrom(_timestamp(record.updated_at))
    return view
