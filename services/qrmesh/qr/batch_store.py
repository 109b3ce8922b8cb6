"""PostgreSQL access for batches: the batch, its rows (content, file name, code, rendered image), its row errors
and batch templates. Functions take the caller's `session` (keyword-only) and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from qrmesh.qr.store import metadata, qr_codes, short_codes

_TS = sa.DateTime(timezone=True)

ACTIVE_STATES = ("VALIDATING", "RUNNING")
TERMINAL_STATES = ("DONE", "FAILED", "CANCELED")
PENDING, CREATED = "PENDING", "CREATED"

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("spec", sa.LargeBinary, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("total_rows", sa.Integer, nullable=False),
    sa.Column("valid_rows", sa.Integer, nullable=False),
    sa.Column("invalid_rows", sa.Integer, nullable=False),
    sa.Column("processed_rows", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("ended_at", _TS),
    sa.Column("expires_at", _TS, nullable=False),
    sa.Column("enqueued_at", _TS),
    sa.Column("purged", sa.Boolean, nullable=False),
    sa.Column("stream", sa.Text, nullable=False),
)

batch_rows = sa.Table(
    "batch_rows",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("row", sa.Integer, nullable=False),
    sa.Column("qr_code_id", sa.Text, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("short_code", sa.Text),
    sa.Column("image", sa.LargeBinary),
)

batch_row_errors = sa.Table(
    "batch_row_errors",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("row", sa.Integer, nullable=False),
    sa.Column("column", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("code", sa.Text, nullable=False),
)

batch_templates = sa.Table(
    "batch_templates",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("spec", sa.LargeBinary, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A row of `batches`; `spec` is a serialized BatchSpec."""

    id: str
    organization_id: str
    display_name: str
    spec: bytes
    template: str
    kind: str
    state: str
    total_rows: int
    valid_rows: int
    invalid_rows: int
    processed_rows: int
    error: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    expires_at: datetime
    purged: bool


@dataclass(frozen=True, slots=True)
class RowRecord:
    """A row of `batch_rows` without its image."""

    seq: int
    row: int
    qr_code_id: str
    content: bytes
    payload: str
    display_name: str
    file_name: str
    status: str
    short_code: str | None


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A row of `batch_row_errors`."""

    row: int
    column: str
    field: str
    reason: str
    code: str


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """A row of `batch_templates`."""

    id: str
    organization_id: str
    display_name: str
    spec: bytes
    revision: int
    created_at: datetime
    updated_at: datetime


_BATCH_COLUMNS = [c for c in batches.c if c.name not in ("request_id", "enqueued_at", "stream")]
_ROW_COLUMNS = [c for c in batch_rows.c if c.name not in ("batch_id", "image")]


def _batch(row: Any) -> BatchRecord:
    return BatchRecord(**{c.name: getattr(row, c.name) for c in _BATCH_COLUMNS} | {"spec": bytes(row.spec)})


def _row(row: Any) -> RowRecord:
    return RowRecord(**{c.name: getattr(row, c.name) for c in _ROW_COLUMNS} | {"content": bytes(row.content)})


def _template(row: Any) -> TemplateRecord:
    return TemplateRecord(**{c.name: getattr(row, c.name) for c in batch_templates.c} | {"spec": bytes(row.spec)})


# ---------------------------------------------------------------- batches


async def insert_batch(
    *,
    session: AsyncSession,
    values: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    errors: Sequence[dict[str, Any]],
    page: int = 1000,
) -> BatchRecord:
    """Store a batch with its rows and row errors (multi-row inserts of `page` rows)."""
    record = _batch((await session.execute(sa.insert(batches).values(**values).returning(*batches.c))).one())
    for start in range(0, len(rows), page):
        await session.execute(sa.insert(batch_rows), list(rows[start : start + page]))
    for start in range(0, len(errors), page):
        await session.execute(sa.insert(batch_row_errors), list(errors[start : start + page]))
    return record


async def find_batch_request(organization_id: str, request_id: str, *, session: AsyncSession, since: datetime) -> str:
    """The id of the batch an earlier CreateBatch with this request id made after `since`; "" if none."""
    statement = sa.select(batches.c.id).where(
        batches.c.organization_id == organization_id,
        batches.c.request_id == request_id,
        batches.c.created_at >= since,
    )
    return (await session.execute(statement)).scalar_one_or_none() or ""


async def forget_stale_request(organization_id: str, request_id: str, *, session: AsyncSession) -> None:
    """Free a request id an older batch (over a day old) still holds."""
    await session.execute(
        sa.update(batches)
        .where(batches.c.organization_id == organization_id, batches.c.request_id == request_id)
        .values(request_id=None)
    )


async def get_batch(
    organization_id: str, batch_id: str, *, session: AsyncSession, for_update: bool = False
) -> BatchRecord | None:
    """A batch of this organization, optionally locked."""
    statement = sa.select(*_BATCH_COLUMNS).where(batches.c.organization_id == organization_id, batches.c.id == batch_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return _batch(row) if row is not None else None


async def get_batch_by_id(batch_id: str, *, session: AsyncSession, for_update: bool = False) -> BatchRecord | None:
    """A batch by id alone (workers), optionally locked."""
    statement = sa.select(*_BATCH_COLUMNS).where(batches.c.id == batch_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return _batch(row) if row is not None else None


async def list_batches(
    organization_id: str, *, session: AsyncSession, limit: int, after: tuple[datetime, str] | None
) -> list[BatchRecord]:
    """The organization's batches, newest first, after a (created_at, id) cursor."""
    statement = sa.select(*_BATCH_COLUMNS).where(batches.c.organization_id == organization_id)
    if after is not None:
        statement = statement.where(sa.tuple_(batches.c.created_at, batches.c.id) < sa.tuple_(*after))
    statement = statement.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
    return [_batch(row) for row in await session.execute(statement)]


async def set_state(
    batch_id: str, state: str, *, session: AsyncSession, now: datetime, only_from: Sequence[str], error: str = ""
) -> BatchRecord | None:
    """Move a batch to `state` if it is in one of `only_from`; the batch as changed, None when it was not."""
    values: dict[str, Any] = {"state": state, "updated_at": now}
    if state in TERMINAL_STATES:
        values["ended_at"] = now
    if error:
        values["error"] = error
    statement = (
        sa.update(batches)
        .where(batches.c.id == batch_id, batches.c.state.in_(only_from))
        .values(**values)
        .returning(*_BATCH_COLUMNS)
    )
    row = (await session.execute(statement)).one_or_none()
    return _batch(row) if row is not None else None


async def add_processed(batch_id: str, count: int, *, session: AsyncSession, now: datetime) -> BatchRecord:
    """Count `count` more rows done; the batch as changed."""
    statement = (
        sa.update(batches)
        .where(batches.c.id == batch_id)
        .values(processed_rows=batches.c.processed_rows + count, updated_at=now)
        .returning(*_BATCH_COLUMNS)
    )
    return _batch((await session.execute(statement)).one())


async def mark_enqueued(batch_id: str, *, session: AsyncSession, now: datetime) -> None:
    """Record that the batch's chunks are on the queue (again)."""
    await session.execute(sa.update(batches).where(batches.c.id == batch_id).values(enqueued_at=now, updated_at=now))


async def stalled_batches(
    *, session: AsyncSession, stream: str, unqueued_before: datetime, idle_before: datetime
) -> list[tuple[str, bool]]:
    """Running batches of `stream` whose chunks never reached it (id, True), or that made no progress for long
    (id, False)."""
    unqueued = sa.and_(batches.c.enqueued_at.is_(None), batches.c.created_at < unqueued_before)
    statement = sa.select(batches.c.id, unqueued).where(
        batches.c.state == "RUNNING",
        batches.c.stream == stream,
        sa.or_(
            unqueued,
            batches.c.updated_at < idle_before,
        ),
    )
    return [(row[0], bool(row[1])) for row in await session.execute(statement)]


async def pending_seqs(batch_id: str, *, session: AsyncSession) -> list[int]:
    """Positions of the rows that have no code yet."""
    statement = (
        sa.select(batch_rows.c.seq)
        .where(batch_rows.c.batch_id == batch_id, batch_rows.c.status == PENDING)
        .order_by(batch_rows.c.seq)
    )
    return list((await session.execute(statement)).scalars())


async def next_expired_batch(*, session: AsyncSession, now: datetime) -> str | None:
    """The batch whose outputs expired first and are not purged yet, locked (one another sweeper holds is
    skipped)."""
    statement = (
        sa.select(batches.c.id)
        .where(batches.c.expires_at < now, batches.c.purged.is_(False), batches.c.state.in_(TERMINAL_STATES))
        .order_by(batches.c.expires_at, batches.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def purge_outputs(batch_id: str, *, session: AsyncSession, now: datetime) -> None:
    """Delete a batch's rows (images, file names) and row errors; the batch and its codes stay."""
    await session.execute(sa.delete(batch_rows).where(batch_rows.c.batch_id == batch_id))
    await session.execute(sa.delete(batch_row_errors).where(batch_row_errors.c.batch_id == batch_id))
    await session.execute(sa.update(batches).where(batches.c.id == batch_id).values(purged=True, updated_at=now))


async def count_reserved_dynamic_rows(organization_id: str, *, session: AsyncSession) -> int:
    """Rows of the organization's unfinished DYNAMIC batches that have no code yet (their codes are promised)."""
    return int((await session.execute(reserved_dynamic_rows_query(organization_id))).scalar_one())


def reserved_dynamic_rows_query(organization_id: str) -> sa.Select[Any]:
    """The count of `count_reserved_dynamic_rows` as a statement (to combine with another count in one)."""
    return (
        sa.select(sa.func.count())
        .select_from(batch_rows.join(batches, batches.c.id == batch_rows.c.batch_id))
        .where(
            batches.c.organization_id == organization_id,
            batches.c.kind == "DYNAMIC",
            batches.c.state.in_(ACTIVE_STATES),
            batch_rows.c.status == PENDING,
        )
    )


# ---------------------------------------------------------------- rows


async def chunk_rows(
    batch_id: str, start: int, end: int, *, session: AsyncSession, pending_only: bool, for_update: bool = False
) -> list[RowRecord]:
    """Rows at positions [start, end), in order (only those without a code when `pending_only`)."""
    statement = sa.select(*_ROW_COLUMNS).where(
        batch_rows.c.batch_id == batch_id, batch_rows.c.seq >= start, batch_rows.c.seq < end
    )
    if pending_only:
        statement = statement.where(batch_rows.c.status == PENDING)
    statement = statement.order_by(batch_rows.c.seq)
    if for_update:
        statement = statement.with_for_update()
    return [_row(row) for row in await session.execute(statement)]


async def claim_short_codes(
    candidates: Sequence[tuple[str, str]], *, session: AsyncSession, organization_id: str, now: datetime
) -> set[str]:
    """Reserve (short code, qr code id) pairs at version 1; the short codes that were free (and are now the
    given code's: a code named twice in `candidates` is its first pair's only)."""
    if not candidates:
        return set()
    statement = (
        pg.insert(short_codes)
        .values(
            [
                {
                    "short_code": code,
                    "organization_id": organization_id,
                    "qr_code_id": qr_code_id,
                    "version": 1,
                    "published_version": 0,
                    "created_at": now,
                }
                for code, qr_code_id in candidates
            ]
        )
        .on_conflict_do_nothing(index_elements=["short_code"])
        .returning(short_codes.c.short_code, short_codes.c.qr_code_id)
    )
    wanted = set(candidates)
    return {row.short_code for row in await session.execute(statement) if (row.short_code, row.qr_code_id) in wanted}


async def insert_codes(values: Sequence[dict[str, Any]], *, session: AsyncSession) -> None:
    """Store new codes (multi-row inserts); ids that exist already are left alone. A conflict on any other unique
    index (a short code) raises: the row must not be marked CREATED without its code."""
    if values:
        await session.execute(pg.insert(qr_codes).on_conflict_do_nothing(index_elements=["id"]), list(values))


async def finish_rows(done: Sequence[dict[str, Any]], *, session: AsyncSession, batch_id: str) -> None:
    """Mark rows CREATED with their short code and image (`seq`, `short_code`, `image` per row)."""
    if not done:
        return
    statement = (
        sa.update(batch_rows)
        .where(batch_rows.c.batch_id == batch_id, batch_rows.c.seq == sa.bindparam("b_seq"))
        .values(status=CREATED, short_code=sa.bindparam("b_short_code"), image=sa.bindparam("b_image"))
    )
    conn = await session.connection()
    await conn.execute(
        statement,
        [{"b_seq": d["seq"], "b_short_code": d["short_code"], "b_image": d["image"]} for d in done],
    )


async def output_rows(
    batch_id: str, *, session: AsyncSession, after: int, limit: int, images: bool
) -> list[tuple[RowRecord, bytes | None]]:
    """Created rows after position `after`, in order, with their image when asked."""
    columns: list[Any] = list(_ROW_COLUMNS)
    if images:
        columns.append(batch_rows.c.image)
    statement = (
        sa.select(*columns)
        .where(batch_rows.c.batch_id == batch_id, batch_rows.c.seq > after, batch_rows.c.status == CREATED)
        .order_by(batch_rows.c.seq)
        .limit(limit)
    )
    out: list[tuple[RowRecord, bytes | None]] = []
    for row in await session.execute(statement):
        image = bytes(row.image) if images and row.image is not None else None
        out.append((_row(row), image))
    return out


async def created_codes(batch_id: str, *, session: AsyncSession) -> list[str]:
    """Ids of the codes the batch created so far."""
    statement = sa.select(batch_rows.c.qr_code_id).where(
        batch_rows.c.batch_id == batch_id, batch_rows.c.status == CREATED
    )
    return list((await session.execute(statement)).scalars())


# ---------------------------------------------------------------- row errors


async def row_errors(batch_id: str, *, session: AsyncSession, offset: int, limit: int) -> list[ErrorRecord]:
    """A page of a batch's row errors, in row order."""
    statement = (
        sa.select(
            batch_row_errors.c.row,
            batch_row_errors.c.column,
            batch_row_errors.c.field,
            batch_row_errors.c.reason,
            batch_row_errors.c.code,
        )
        .where(batch_row_errors.c.batch_id == batch_id)
        .order_by(batch_row_errors.c.seq)
        .offset(offset)
        .limit(limit)
    )
    return [ErrorRecord(r.row, r.column, r.field, r.reason, r.code) for r in await session.execute(statement)]


async def count_row_errors(batch_id: str, *, session: AsyncSession) -> int:
    """How many row errors a batch has."""
    statement = sa.select(sa.func.count()).where(batch_row_errors.c.batch_id == batch_id)
    return int((await session.execute(statement)).scalar_one())


# ---------------------------------------------------------------- templates


async def insert_template(*, session: AsyncSession, values: dict[str, Any]) -> TemplateRecord:
    """Store a new template."""
    return _template(
        (await session.execute(sa.insert(batch_templates).values(**values).returning(*batch_templates.c))).one()
    )


async def get_template(
    organization_id: str, template_id: str, *, session: AsyncSession, for_update: bool = False
) -> TemplateRecord | None:
    """A template of this organization."""
    statement = sa.select(*batch_templates.c).where(
        batch_templates.c.organization_id == organization_id, batch_templates.c.id == template_id
    )
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return _template(row) if row is not None else None


async def list_templates(
    organization_id: str, *, session: AsyncSession, limit: int, after: tuple[str, str] | None
) -> list[TemplateRecord]:
    """The organization's templates by display name, after a (display_name, id) cursor."""
    statement = sa.select(*batch_templates.c).where(batch_templates.c.organization_id == organization_id)
    if after is not None:
        statement = statement.where(sa.tuple_(batch_templates.c.display_name, batch_templates.c.id) > sa.tuple_(*after))
    statement = statement.order_by(batch_templates.c.display_name, batch_templates.c.id).limit(limit)
    return [_template(row) for row in await session.execute(statement)]


async def update_template(template_id: str, *, session: AsyncSession, values: dict[str, Any]) -> TemplateRecord:
    """Change a template; `values` are its new columns."""
    statement = (
        sa.update(batch_templates)
        .where(batch_templates.c.id == template_id)
        .values(**values)
        .returning(*batch_templates.c)
    )
    return _template((await session.execute(statement)).one())


async def delete_template(template_id: str, *, session: AsyncSession) -> None:
    """Delete a template."""
    await session.execute(sa.delete(batch_templates).where(batch_templates.c.id == template_id))
