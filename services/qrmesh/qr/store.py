"""PostgreSQL access for the qr schema: every query the service runs, nothing else.

Each function takes the caller's `session` (keyword-only) and never commits: the
caller's transaction decides what goes together (a code and its short code, an
edit and its link version).

A short code's row in `short_codes` is kept after its code is deleted
(`retired_at`), so no code can ever get it again. Its `version` grows with
every change of the link; `published_version` is the highest version known to
be in Redis, so links a crash or a Redis outage left behind can be found and
written again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from qrmesh.qr.domain.listing import Cursor, Filters, Order, from_micros, like_pattern, micros

SCHEMA = "qr"
metadata = sa.MetaData(schema=SCHEMA)
_TS = sa.DateTime(timezone=True)

short_codes = sa.Table(
    "short_codes",
    metadata,
    sa.Column("short_code", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("qr_code_id", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("published_version", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("retired_at", _TS),
)

qr_codes = sa.Table(
    "qr_codes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("design", sa.LargeBinary, nullable=False),
    sa.Column("folder", sa.Text, nullable=False),
    sa.Column("tags", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("tag_keys", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("short_code", sa.Text, sa.ForeignKey("short_codes.short_code")),
    sa.Column("rules", sa.LargeBinary, nullable=False),
    sa.Column("password_hash", sa.Text),
    sa.Column("max_scans", sa.BigInteger, nullable=False),
    sa.Column("claimed_scans", sa.BigInteger, nullable=False),
    sa.Column("redirect_type", sa.Text, nullable=False),
    sa.Column("scan_count", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
)

create_requests = sa.Table(
    "create_requests",
    metadata,
    sa.Column("organization_id", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("qr_code_id", sa.Text, sa.ForeignKey("qr_codes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)

scan_settings = sa.Table(
    "scan_settings",
    metadata,
    sa.Column("organization_id", sa.Text, primary_key=True),
    sa.Column("store_full_ip_addresses", sa.Boolean, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
)

counted_scans = sa.Table(
    "counted_scans",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("counted_at", _TS, nullable=False),
)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class QrCodeRecord:
    """A row of `qr_codes`. `content`, `design` and `rules` are serialized protos."""

    id: str
    organization_id: str
    display_name: str
    kind: str
    content: bytes
    design: bytes
    folder: str
    tags: tuple[str, ...]
    status: str
    short_code: str | None
    rules: bytes
    password_hash: str | None
    max_scans: int
    claimed_scans: int
    redirect_type: str
    scan_count: int
    revision: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScanSettingsRecord:
    """A row of `scan_settings`."""

    organization_id: str
    store_full_ip_addresses: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LinkRow:
    """What a link is made of: its short code's version and, unless deleted, its code and the org's choice."""

    short_code: str
    version: int
    code: QrCodeRecord | None
    store_full_ip_addresses: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of counting a scan against a code's limit."""

    allowed: bool
    claimed: int
    max_scans: int


@dataclass(frozen=True, slots=True)
class ScanCount:
    """Scans of one code to add, by the events' ids."""

    organization_id: str
    qr_code_id: str
    event_ids: tuple[str, ...]


def _code(row: Any) -> QrCodeRecord:
    return QrCodeRecord(
        id=row.id,
        organization_id=row.organization_id,
        display_name=row.display_name,
        kind=row.kind,
        content=bytes(row.content),
        design=bytes(row.design),
        folder=row.folder,
        tags=tuple(row.tags),
        status=row.status,
        short_code=row.short_code,
        rules=bytes(row.rules),
        password_hash=row.password_hash,
        max_scans=row.max_scans,
        claimed_scans=row.claimed_scans,
        redirect_type=row.redirect_type,
        scan_count=row.scan_count,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def advisory_lock(name: str, *, session: AsyncSession) -> None:
    """Hold a transaction-scoped advisory lock on `name` (released at commit or rollback)."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"qr:{name}", 0))))


# ---------------------------------------------------------------- request ids


async def find_request(organization_id: str, request_id: str, *, session: AsyncSession, since: datetime) -> str | None:
    """The id of the code an earlier CreateQrCode with this request id made after `since` (if it still exists)."""
    statement = sa.select(create_requests.c.qr_code_id).where(
        create_requests.c.organization_id == organization_id,
        create_requests.c.request_id == request_id,
        create_requests.c.created_at >= since,
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def remember_request(
    *, session: AsyncSession, organization_id: str, request_id: str, qr_code_id: str, now: datetime, stale: datetime
) -> None:
    """Record which code a request id made (replacing a record older than `stale`); drops old records."""
    await session.execute(sa.delete(create_requests).where(create_requests.c.created_at < stale))
    await session.execute(
        pg.insert(create_requests)
        .values(organization_id=organization_id, request_id=request_id, qr_code_id=qr_code_id, created_at=now)
        .on_conflict_do_update(
            index_elements=[create_requests.c.organization_id, create_requests.c.request_id],
            set_={"qr_code_id": qr_code_id, "created_at": now},
        )
    )


# ---------------------------------------------------------------- codes


async def claim_short_code(
    short_code: str, *, session: AsyncSession, organization_id: str, qr_code_id: str, now: datetime
) -> bool:
    """Reserve a short code for a new code (version 1); False if any code, live or deleted, ever had it."""
    statement = (
        pg.insert(short_codes)
        .values(
            short_code=short_code,
            organization_id=organization_id,
            qr_code_id=qr_code_id,
            version=1,
            published_version=0,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(short_codes.c.short_code)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def insert_qr_code(*, session: AsyncSession, values: dict[str, Any]) -> QrCodeRecord:
    """Store a new code; `values` are its columns."""
    row = (await session.execute(sa.insert(qr_codes).values(**values).returning(*qr_codes.c))).one()
    return _code(row)


async def get_qr_code(
    organization_id: str, qr_code_id: str, *, session: AsyncSession, for_update: bool = False
) -> QrCodeRecord | None:
    """A code of this organization (another organization's code is simply not found)."""
    statement = sa.select(qr_codes).where(qr_codes.c.organization_id == organization_id, qr_codes.c.id == qr_code_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _code(row)


async def update_qr_code(qr_code_id: str, *, session: AsyncSession, values: dict[str, Any]) -> QrCodeRecord:
    """Change a code's columns (lock it first); its revision moves on."""
    statement = (
        sa.update(qr_codes)
        .where(qr_codes.c.id == qr_code_id)
        .values(**values, revision=qr_codes.c.revision + 1)
        .returning(*qr_codes.c)
    )
    return _code((await session.execute(statement)).one())


async def delete_qr_code(qr_code_id: str, *, session: AsyncSession) -> None:
    """Delete a code (lock it first); its short code stays taken."""
    await session.execute(sa.delete(qr_codes).where(qr_codes.c.id == qr_code_id))


async def bump_link(short_code: str, *, session: AsyncSession, now: datetime, retire: bool = False) -> int:
    """Move a link to its next version (retiring its short code if asked); the new version."""
    values: dict[str, Any] = {"version": short_codes.c.version + 1}
    if retire:
        values["retired_at"] = now
    statement = (
        sa.update(short_codes)
        .where(short_codes.c.short_code == short_code)
        .values(**values)
        .returning(short_codes.c.version)
    )
    return int((await session.execute(statement)).scalar_one())


async def bump_organization_links(organization_id: str, *, session: AsyncSession) -> list[str]:
    """Move every live link of an organization to its next version; their short codes."""
    statement = (
        sa.update(short_codes)
        .where(short_codes.c.organization_id == organization_id, short_codes.c.retired_at.is_(None))
        .values(version=short_codes.c.version + 1)
        .returning(short_codes.c.short_code)
    )
    return list((await session.execute(statement)).scalars())


def _sort_expression(order: Order) -> tuple[sa.ColumnElement[Any], sa.types.TypeEngine[Any]]:
    if order.key == "scan_count":
        return qr_codes.c.scan_count, sa.BigInteger()
    if order.key == "display_name":
        return sa.func.lower(qr_codes.c.display_name), sa.Text()
    return qr_codes.c.created_at, _TS


def _in_folder(folder: str) -> sa.ColumnElement[bool]:
    """Codes in `folder` or any folder below it."""
    below = like_pattern(folder)[1:-1] + "/%"
    return sa.or_(qr_codes.c.folder == folder, qr_codes.c.folder.like(below, escape="\\"))


def _filtered(organization_id: str, filters: Filters) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [qr_codes.c.organization_id == organization_id]
    if filters.folder:
        conditions.append(_in_folder(filters.folder))
    if filters.tag:
        conditions.append(qr_codes.c.tag_keys.contains([filters.tag]))
    if filters.kind is not None:
        conditions.append(qr_codes.c.kind == filters.kind)
    if filters.status is not None:
        conditions.append(qr_codes.c.status == filters.status)
    else:
        conditions.append(qr_codes.c.status != "ARCHIVED")
    if filters.search:
        pattern = like_pattern(filters.search)
        conditions.append(
            sa.or_(
                qr_codes.c.display_name.ilike(pattern, escape="\\"),
                qr_codes.c.short_code.ilike(pattern, escape="\\"),
            )
        )
    return conditions


async def list_qr_codes(
    organization_id: str,
    *,
    session: AsyncSession,
    filters: Filters,
    order: Order,
    after: Cursor | None,
    limit: int,
) -> list[tuple[QrCodeRecord, Cursor]]:
    """Codes matching `filters` in `order` (ties by id), after `after`; each with its cursor."""
    key, key_type = _sort_expression(order)
    conditions = _filtered(organization_id, filters)
    if after is not None:
        value: Any = after.value
        if order.key == "create_time" and isinstance(value, int):
            value = from_micros(value)
        point = sa.tuple_(sa.literal(value, key_type), sa.literal(after.id, sa.Text()))
        row_key = sa.tuple_(key, qr_codes.c.id)
        conditions.append(row_key < point if order.descending else row_key > point)
    ordering = (key.desc(), qr_codes.c.id.desc()) if order.descending else (key.asc(), qr_codes.c.id.asc())
    statement = sa.select(qr_codes, key.label("sort_key")).where(*conditions).order_by(*ordering).limit(limit)
    out = []
    for row in await session.execute(statement):
        sort_value = micros(row.sort_key) if order.key == "create_time" else row.sort_key
        out.append((_code(row), Cursor(value=sort_value, id=row.id)))
    return out


async def count_qr_codes(organization_id: str, *, session: AsyncSession, filters: Filters) -> int:
    """How many codes match `filters`."""
    statement = sa.select(sa.func.count()).select_from(qr_codes).where(*_filtered(organization_id, filters))
    return int((await session.execute(statement)).scalar_one())


async def count_dynamic_codes(organization_id: str, *, session: AsyncSession) -> int:
    """How many dynamic codes the organization has (any status; deleted ones are gone), counting the codes
    unfinished DYNAMIC batches are still to create (they were promised when the batch was accepted)."""
    from qrmesh.qr import batch_store

    # One statement, so one snapshot: counted as two under READ COMMITTED, a batch chunk committing in between
    # (rows turning CREATED, their codes appearing) would be counted in neither.
    stored = (
        sa.select(sa.func.count())
        .where(qr_codes.c.organization_id == organization_id, qr_codes.c.kind == "DYNAMIC")
        .scalar_subquery()
    )
    statement = sa.select(stored + batch_store.reserved_dynamic_rows_query(organization_id).scalar_subquery())
    return int((await session.execute(statement)).scalar_one())


@dataclass(frozen=True, slots=True)
class CodeInScope:
    """A code as other services scope by it; a deleted code keeps only its id and short code."""

    id: str
    display_name: str
    short_code: str | None
    deleted: bool


async def codes_in_scope(
    organization_id: str, *, session: AsyncSession, folder: str, tag: str, ids: Sequence[str], limit: int
) -> list[CodeInScope]:
    """The organization's codes in `folder` (and below) with the tag key `tag`, only `ids` when given, any
    status, oldest first, at most `limit`. Deleted codes (their retired short codes) are added only when
    neither folder nor tag is set: their folders and tags were deleted with them."""
    conditions: list[sa.ColumnElement[bool]] = [qr_codes.c.organization_id == organization_id]
    if folder:
        conditions.append(_in_folder(folder))
    if tag:
        conditions.append(qr_codes.c.tag_keys.contains([tag]))
    if ids:
        conditions.append(qr_codes.c.id.in_(list(ids)))
    live = sa.select(
        qr_codes.c.id,
        qr_codes.c.display_name,
        qr_codes.c.short_code,
        sa.false().label("deleted"),
        qr_codes.c.created_at,
    ).where(*conditions)
    statement: sa.Select[Any] | sa.CompoundSelect[Any] = live
    if not folder and not tag:
        gone = [short_codes.c.organization_id == organization_id, short_codes.c.retired_at.is_not(None)]
        if ids:
            gone.append(short_codes.c.qr_code_id.in_(list(ids)))
        live_ids = sa.select(qr_codes.c.id).where(qr_codes.c.organization_id == organization_id)
        gone.append(short_codes.c.qr_code_id.not_in(live_ids))
        deleted = sa.select(
            short_codes.c.qr_code_id,
            sa.literal("", sa.Text()),
            short_codes.c.short_code,
            sa.true(),
            short_codes.c.created_at,
        ).where(*gone)
        statement = sa.union_all(live, deleted)
    ordered = statement.subquery()
    rows = await session.execute(sa.select(ordered).order_by(ordered.c.created_at, ordered.c.id).limit(limit))
    return [CodeInScope(row.id, row.display_name, row.short_code, bool(row.deleted)) for row in rows]


# ---------------------------------------------------------------- links


async def links_for(codes: Sequence[str], *, session: AsyncSession) -> list[LinkRow]:
    """The links of these short codes as stored now (unknown codes are left out)."""
    statement = (
        sa.select(
            short_codes.c.short_code.label("link_short_code"),
            short_codes.c.version.label("link_version"),
            short_codes.c.retired_at.label("link_retired_at"),
            sa.func.coalesce(scan_settings.c.store_full_ip_addresses, sa.false()).label("link_full_ip"),
            qr_codes,
        )
        .select_from(
            short_codes.outerjoin(qr_codes, qr_codes.c.short_code == short_codes.c.short_code).outerjoin(
                scan_settings, scan_settings.c.organization_id == short_codes.c.organization_id
            )
        )
        .where(short_codes.c.short_code.in_(list(codes)))
    )
    return [
        LinkRow(
            short_code=row.link_short_code,
            version=row.link_version,
            code=_code(row) if row.id is not None and row.link_retired_at is None else None,
            store_full_ip_addresses=bool(row.link_full_ip),
        )
        for row in await session.execute(statement)
    ]


async def unpublished_links(*, session: AsyncSession, limit: int) -> list[str]:
    """Short codes whose newest version may not be in Redis yet."""
    statement = (
        sa.select(short_codes.c.short_code)
        .where(short_codes.c.published_version < short_codes.c.version)
        .order_by(short_codes.c.short_code)
        .limit(limit)
    )
    return list((await session.execute(statement)).scalars())


async def mark_published(versions: Sequence[tuple[str, int]], *, session: AsyncSession) -> None:
    """Record that these (short code, version) pairs are in Redis (or something newer is)."""
    if not versions:
        return
    await session.execute(
        sa.text(
            "UPDATE qr.short_codes AS s SET published_version = v.version "
            "FROM unnest(CAST(:codes AS text[]), CAST(:versions AS bigint[])) AS v(short_code, version) "
            "WHERE s.short_code = v.short_code AND s.published_version < v.version"
        ),
        {"codes": [code for code, _ in versions], "versions": [version for _, version in versions]},
    )


async def claim_scan(short_code: str, *, session: AsyncSession) -> Claim | None:
    """Count one scan against the limit of the live code with this short code, atomically; None if none."""
    counted = (
        sa.update(qr_codes)
        .where(
            qr_codes.c.short_code == short_code,
            sa.or_(qr_codes.c.max_scans == 0, qr_codes.c.claimed_scans < qr_codes.c.max_scans),
        )
        .values(claimed_scans=qr_codes.c.claimed_scans + 1)
        .returning(qr_codes.c.claimed_scans, qr_codes.c.max_scans)
    )
    row = (await session.execute(counted)).one_or_none()
    if row is not None:
        return Claim(allowed=True, claimed=row.claimed_scans, max_scans=row.max_scans)
    current = sa.select(qr_codes.c.claimed_scans, qr_codes.c.max_scans).where(qr_codes.c.short_code == short_code)
    row = (await session.execute(current)).one_or_none()
    if row is None:
        return None
    return Claim(allowed=False, claimed=row.claimed_scans, max_scans=row.max_scans)


# ---------------------------------------------------------------- scan settings


async def get_scan_settings(organization_id: str, *, session: AsyncSession) -> ScanSettingsRecord | None:
    """An organization's scan settings, None while it has never changed them."""
    statement = sa.select(scan_settings).where(scan_settings.c.organization_id == organization_id)
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        return None
    return ScanSettingsRecord(row.organization_id, row.store_full_ip_addresses, row.updated_at)


async def put_scan_settings(
    organization_id: str, *, session: AsyncSession, store_full_ip_addresses: bool, now: datetime
) -> ScanSettingsRecord:
    """Store an organization's scan settings."""
    statement = (
        pg.insert(scan_settings)
        .values(organization_id=organization_id, store_full_ip_addresses=store_full_ip_addresses, updated_at=now)
        .on_conflict_do_update(
            index_elements=[scan_settings.c.organization_id],
            set_={"store_full_ip_addresses": store_full_ip_addresses, "updated_at": now},
        )
        .returning(*scan_settings.c)
    )
    row = (await session.execute(statement)).one()
    return ScanSettingsRecord(row.organization_id, row.store_full_ip_addresses, row.updated_at)


async def lock_scan_settings(organization_id: str, *, session: AsyncSession) -> None:
    """Serialize changes of one organization's scan settings until the transaction ends."""
    await advisory_lock(f"scan-settings:{organization_id}", session=session)


# ---------------------------------------------------------------- scan totals


async def count_scans(counts: Sequence[ScanCount], *, session: AsyncSession, now: datetime) -> int:
    """Add each code's scans whose event ids were never counted before; how many were added."""
    # Sorted, as are the rows below: two consumers always lock in the same order (no deadlocks).
    event_ids = sorted(set(event for count in counts for event in count.event_ids))
    if not event_ids:
        return 0
    fresh_rows = await session.execute(
        sa.text(
            "INSERT INTO qr.counted_scans (event_id, counted_at) "
            "SELECT e, :now FROM unnest(CAST(:ids AS text[])) AS e "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        ),
        {"ids": event_ids, "now": now},
    )
    fresh = {row.event_id for row in fresh_rows}
    totals: dict[tuple[str, str], int] = {}
    for count in counts:
        for event in count.event_ids:
            if event in fresh:
                fresh.discard(event)
                code = (count.organization_id, count.qr_code_id)
                totals[code] = totals.get(code, 0) + 1
    ordered = sorted(totals.items())
    organizations = [organization for (organization, _), _ in ordered]
    ids = [code for (_, code), _ in ordered]
    amounts = [amount for _, amount in ordered]
    if ids:
        await session.execute(
            sa.text(
                "SELECT 1 FROM qr.qr_codes AS q "
                "JOIN unnest(CAST(:organizations AS text[]), CAST(:ids AS text[])) AS v(organization_id, id) "
                "ON q.id = v.id AND q.organization_id = v.organization_id "
                "ORDER BY q.organization_id, q.id FOR UPDATE OF q"
            ),
            {"organizations": organizations, "ids": ids},
        )
        await session.execute(
            sa.text(
                "UPDATE qr.qr_codes AS q SET scan_count = q.scan_count + v.amount "
                "FROM unnest(CAST(:organizations AS text[]), CAST(:ids AS text[]), CAST(:amounts AS bigint[])) "
                "AS v(organization_id, id, amount) "
                "WHERE q.id = v.id AND q.organization_id = v.organization_id"
            ),
            {"organizations": organizations, "ids": ids, "amounts": amounts},
        )
    return sum(amounts)


async def prune_counted_scans(*, session: AsyncSession, before: datetime, limit: int) -> int:
    """Forget up to `limit` counted event ids older than `before`; how many."""
    result = await session.execute(
        sa.text(
            "DELETE FROM qr.counted_scans WHERE event_id IN "
            "(SELECT event_id FROM qr.counted_scans WHERE counted_at < :before LIMIT :limit)"
        ),
        {"before": before, "limit": limit},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
