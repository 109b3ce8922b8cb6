"""Scan analytics queries: the request's scope, range and zone checked, the range planned over rollups
and raw scans (`domain.buckets`), one read per answer (`store_read`), the answer assembled.

Nothing here knows gRPC; the servicer translates protos to these calls and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from qrmesh.analytics import store_read
from qrmesh.analytics.domain import breakdown, buckets, peak
from qrmesh.analytics.domain.aggregate import TOTAL
from qrmesh.analytics.domain.buckets import Granularity
from qrmesh.analytics.scope import Scopes, code_id, code_name, organization_id
from qrmesh.analytics.store_read import Grouping, Scope
from qrmesh.analytics.v1 import analytics_pb2
from qrmesh.platform.errors import InvalidArgument

QR_CODE = analytics_pb2.Dimension.QR_CODE
MAX_COMPARED = 10
"""Series in one comparison (codes and tags together)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Query:
    """What every query covers: whose scans, when, in which zone, bots or not."""

    scope: Scope
    start: datetime
    end: datetime
    zone: ZoneInfo
    include_bots: bool


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals of a range."""

    scans: int
    uniques: int
    bot_scans: int
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket: its first instant, scans and unique visitors."""

    start: datetime
    scans: int
    uniques: int


@dataclass(frozen=True, slots=True)
class Series:
    """One compared code or tag: its key, a name for people, and scans per bucket."""

    key: str
    display_name: str
    scans: list[int]


@dataclass(frozen=True, slots=True)
class Comparison:
    """Several series over the same buckets."""

    starts: list[datetime]
    series: list[Series]
    time_zone: str


class Queries:
    """Every analytics query, over one database engine and the scope resolver."""

    def __init__(self, engine: AsyncEngine, scopes: Scopes, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.engine = engine
        self.scopes = scopes
        self.clock = clock

    async def query(
        self,
        parent: str,
        qr_codes: Sequence[str],
        folder: str,
        tag: str,
        start: datetime | None,
        end: datetime | None,
        time_zone: str,
        include_bots: bool,
    ) -> Query:
        """A request's scope, range and zone, checked (bad input first, then the qr service is asked)."""
        zone = buckets.parse_zone(time_zone)
        begin, finish = buckets.resolve_range(start, end, self.clock())
        scope = await self.scopes.resolve(parent, qr_codes, folder, tag)
        return Query(scope, begin, finish, zone, include_bots)

    async def summary(self, query: Query) -> Summary:
        """Scans, unique visitors and bot scans of the range, with its first and last scan."""
        pieces = buckets.plan([query.start, query.end], query.start, query.end)
        async with self.sessions() as session:
            await store_read.begin_reads(session=session)
            found = await store_read.counts(query.scope, pieces, session=session, grouping=Grouping(by_bot=True))
            first, last = await store_read.scan_times(
                query.scope, query.start, query.end, session=session, include_bots=query.include_bots
            )
        people = found.get((0, "", "", False), (0, 0))
        bots = found.get((0, "", "", True), (0, 0))
        if query.include_bots:
            return Summary(people[0] + bots[0], people[1] + bots[1], bots[0], first, last)
        return Summary(people[0], people[1], bots[0], first, last)

    async def time_series(self, query: Query, granularity: Granularity) -> list[Bucket]:
        """Every bucket of the range (clipped to it), oldest first, zero where nobody scanned."""
        bounds = buckets.bucket_bounds(query.start, query.end, query.zone, granularity)
        pieces = buckets.plan(bounds, query.start, query.end)
        grouping = Grouping(bounds=bounds, include_bots=query.include_bots)
        async with self.sessions() as session:
            await store_read.begin_reads(session=session)
            found = await store_read.counts(query.scope, pieces, session=session, grouping=grouping)
        by_bucket = {k: counts for (k, _, _, _), counts in found.items()}
        return [Bucket(start, scans, uniques) for start, scans, uniques in buckets.fill(bounds, by_bucket)]

    async def values(self, query: Query, dimension: int) -> dict[str, tuple[int, int]]:
        """(scans, unique visitors) per value of `dimension` (codes as resource names)."""
        if dimension not in store_read.RAW_COLUMNS:
            raise InvalidArgument.field("dimension", "must be set to a dimension to group by", reason="NO_DIMENSION")
        pieces = buckets.plan([query.start, query.end], query.start, query.end)
        by_code = dimension == QR_CODE and query.scope.code_ids is not None
        # A set of codes has no QR_CODE rows of its own: their totals, by code, are the same numbers.
        grouping = Grouping(dimension=TOTAL if by_code else dimension, by_code=by_code, include_bots=query.include_bots)
        async with self.sessions() as session:
            await store_read.begin_reads(session=session)
            found = await store_read.counts(query.scope, pieces, session=session, grouping=grouping)
        out: dict[str, tuple[int, int]] = {}
        organization = query.scope.organization_id
        for (_, value, code, _), (scans, uniques) in found.items():
            if dimension == QR_CODE:
                value = code_name(organization, code if by_code else value)
            before = out.get(value, (0, 0))
            out[value] = (before[0] + scans, before[1] + uniques)
        return out

    async def breakdown(self, query: Query, dimension: int, limit: int) -> breakdown.Breakdown:
        """The top `limit` values of `dimension` and the rest as other scans."""
        return breakdown.top(await self.values(query, dimension), breakdown.limit_of(limit))

    async def peak_times(self, query: Query) -> list[int]:
        """Scans per local weekday and hour (168 cells, Monday 0:00 first)."""
        bounds = buckets.bucket_bounds(
            query.start, query.end, query.zone, Granularity.HOUR, limit=buckets.MAX_PEAK_HOURS
        )
        pieces = buckets.plan(bounds, query.start, query.end, daily=False)
        # The database folds the hours into cells: 168 rows come back, not one per hour.
        labels = peak.cells_of(bounds, query.zone)
        grouping = Grouping(bounds=bounds, labels=labels, include_bots=query.include_bots, uniques=False)
        async with self.sessions() as session:
            await store_read.begin_reads(session=session)
            found = await store_read.counts(query.scope, pieces, session=session, grouping=grouping)
        cells = [0] * peak.CELLS
        for (cell, _, _, _), (scans, _) in found.items():
            cells[cell] += scans
        return cells

    async def compare(
        self,
        parent: str,
        qr_codes: Sequence[str],
        tags: Sequence[str],
        start: datetime | None,
        end: datetime | None,
        time_zone: str,
        include_bots: bool,
        granularity: Granularity,
    ) -> Comparison:
        """One series per code, then one per tag (the codes with it), over the same buckets."""
        organization = organization_id(parent)
        ids = [code_id(name, organization, field=f"qrCodes[{index}]") for index, name in enumerate(qr_codes)]
        labels = [tag.strip() for tag in tags]
        for index, tag in enumerate(labels):
            if not tag:
                raise InvalidArgument.field(f"tags[{index}]", "must not be empty", reason="INVALID_TAG")
        if not ids and not labels:
            raise InvalidArgument(
                "name at least one code (qrCodes) or tag (tags) to compare", reason="NOTHING_TO_COMPARE"
            )
        if len(ids) + len(labels) > MAX_COMPARED:
            raise InvalidArgument(
                f"at most {MAX_COMPARED} series can be compared (codes and tags together); "
                f"got {len(ids) + len(labels)}",
                reason="TOO_MANY_SERIES",
            )
        zone = buckets.parse_zone(time_zone)
        begin, finish = buckets.resolve_range(start, end, self.clock())
        bounds = buckets.bucket_bounds(begin, finish, zone, granularity)
        names = (
            {code.id: code.display_name for code in await self.scopes.codes(organization, names=qr_codes)}
            if ids
            else {}
        )
        tagged = [[code.id for code in await self.scopes.codes(organization, tag=tag)] for tag in labels]
        everything = tuple(dict.fromkeys([*ids, *(code for codes in tagged for code in codes)]))
        pieces = buckets.plan(bounds, begin, finish)
        grouping = Grouping(bounds=bounds, by_code=True, include_bots=include_bots, uniques=False)
        async with self.sessions() as session:
            await store_read.begin_reads(session=session)
            found = await store_read.counts(Scope(organization, everything), pieces, session=session, grouping=grouping)
        per_code: dict[str, list[int]] = {}
        width = len(bounds) - 1
        for (k, _, code, _), (scans, _) in found.items():
            per_code.setdefault(code, [0] * width)[k] += scans
        empty = [0] * width
        series = [Series(code_name(organization, code), names.get(code, ""), per_code.get(code, empty)) for code in ids]
        for tag, codes in zip(labels, tagged, strict=True):
            total = [sum(per_code.get(code, empty)[i] for code in codes) for i in range(width)]
            series.append(Series(f"tags/{tag}", tag, total))
        return Comparison(list(bounds[:-1]), series, zone.key)
