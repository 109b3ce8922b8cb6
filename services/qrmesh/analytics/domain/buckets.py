"""Time ranges and buckets in a time zone, and where the scans of each piece of a range are stored.

A query covers `[start, end)`; buckets are intervals of real instants `[start, next start)` whose
starts are where the zone's clock shows a full hour (HOUR), the first instant of a local date (DAY),
of a Monday (WEEK, ISO) or of the first of a month (MONTH). A day on which the clocks change has 23
or 25 hours; a fall-back hour is two HOUR buckets; a local midnight skipped by the clocks starts its
day at the first instant that exists. The first and last buckets are clipped to the range (a
bucket's `start_time` stays the bucket's own start), so buckets always add up to the range's total.

Rollups hold UTC hours and UTC days. `plan` cuts the clipped buckets into pieces: whole UTC days
inside one bucket come from the daily rollups, whole UTC hours inside one bucket from the hourly
ones, and what is left (range edges that are not on a UTC hour, and bucket edges of zones with
:30 or :45 offsets) from the raw scans, so every answer is exact. Most of a day (a Stockholm day is
23:00 to 23:00 UTC) is read as that UTC day minus its hours outside the bucket: rollups add up, and
two rows beat twenty-three. Adjacent pieces of the same source are merged; the rows of a merged
piece are put into buckets by their time, those of a day read whole by the bucket it was read for.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qrmesh.platform.errors import InvalidArgument

MAX_BUCKETS = 10_000
"""At most this many buckets per answer."""
MAX_PEAK_HOURS = 24 * 366 * 5
"""Peak times fold at most this many local hours (about five years)."""
DEFAULT_RANGE = timedelta(days=30)
"""The range when no start is given: the 30 days before the end."""
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
HALF_DAY = timedelta(hours=12)
ZERO = timedelta(0)
_MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class Granularity(enum.Enum):
    """The width of a bucket, in the zone's calendar."""

    HOUR = 1
    DAY = 2
    WEEK = 3
    MONTH = 4


class Source(enum.Enum):
    """Where the scans of a piece are read."""

    RAW = "raw"
    HOURLY = "hourly"
    DAILY = "daily"


class Piece(NamedTuple):
    """`[start, end)` read from one source; every row in it belongs to one bucket."""

    source: Source
    start: datetime
    end: datetime
    sign: int = 1
    """-1: the rows are subtracted (the hours of a day read whole that lie outside the bucket)."""
    bucket: int | None = None
    """The bucket the rows count in; None: the bucket each row's time falls in."""


def parse_zone(name: str, *, field: str = "timeZone") -> ZoneInfo:
    """The IANA zone `name` ("" is UTC); InvalidArgument (INVALID_TIME_ZONE) for a name it does not know."""
    text = name.strip()
    if not text:
        return ZoneInfo("UTC")
    try:
        if text.startswith(("/", ".")) or ".." in text or "\\" in text:
            raise ValueError(text)
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument.field(
            field,
            f"{text!r} is not an IANA time zone; use a name like Europe/Stockholm, America/New_York or UTC",
            reason="INVALID_TIME_ZONE",
        ) from None


def resolve_range(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """`[start, end)`: `end` defaults to now and `start` to 30 days before `end`; InvalidArgument unless
    `end` is after `start` and both lie between 1970 and 9000."""
    end = end or now
    start = start or end - DEFAULT_RANGE
    for field, moment in (("startTime", start), ("endTime", end)):
        if not _MIN_TIME <= moment <= _MAX_TIME:
            raise InvalidArgument.field(field, "must lie between 1970 and 9000", reason="INVALID_TIME_RANGE")
    if end <= start:
        raise InvalidArgument.field(
            "endTime",
            f"must be after startTime ({_iso(start)}); got {_iso(end)}",
            reason="INVALID_TIME_RANGE",
        )
    return start.astimezone(UTC), end.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- local calendar


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) of the local date `day`: its midnight, or the end of a gap that skipped it."""
    # A wall time in a gap resolves with the offset from before the gap (fold=0): midnight then lands
    # exactly on the transition, which is the day's first instant.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The local date of an instant."""
    return moment.astimezone(zone).date()


def _floor_date(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return day


def _next_date(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day + timedelta(days=7)
    if granularity is Granularity.MONTH:
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return day + timedelta(days=1)


def _at_least(start: datetime, end: datetime, granularity: Granularity) -> int:
    """A lower bound of the number of buckets, computed without making them (a local hour lasts at
    most 1.5 real hours, a month at most 31 days)."""
    days = (end - start).days
    if granularity is Granularity.HOUR:
        return int((end - start) / (HOUR * 1.5))
    if granularity is Granularity.DAY:
        return days - 1
    if granularity is Granularity.WEEK:
        return days // 7 - 1
    return days // 31 - 1


def bucket_bounds(
    start: datetime, end: datetime, zone: ZoneInfo, granularity: Granularity, *, limit: int = MAX_BUCKETS
) -> list[datetime]:
    """Bucket starts b0 <= start < b1 < ... < bn with bn >= end (n buckets), as UTC instants.

    InvalidArgument (TOO_MANY_BUCKETS) beyond `limit` buckets."""
    if _at_least(start, end, granularity) > limit:
        raise _too_many(granularity, limit)
    first = _floor_date(local_date(start, zone), granularity)
    days = [first]
    while day_start(days[-1], zone) < end:
        days.append(_next_date(days[-1], granularity))
    bounds = [day_start(day, zone) for day in days]
    if granularity is Granularity.HOUR:
        bounds = _hours(bounds, zone)
        # Keep only the hours around the range: the last start <= start, through the first >= end.
        low = max(i for i, moment in enumerate(bounds) if moment <= start)
        high = min(i for i, moment in enumerate(bounds) if moment >= end)
        bounds = bounds[low : high + 1]
    if len(bounds) - 1 > limit:
        raise _too_many(granularity, limit)
    return bounds


def _too_many(granularity: Granularity, limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"the range holds more than {limit:,} {granularity.name.lower()} buckets; "
        "choose a shorter range or a wider granularity",
        reason="TOO_MANY_BUCKETS",
    )


def _hours(day_bounds: Sequence[datetime], zone: ZoneInfo) -> list[datetime]:
    """Every instant where the local clock shows a full hour, from the first day start to the last."""
    out: list[datetime] = []
    for begin, finish in itertools.pairwise(day_bounds):
        if begin.astimezone(zone).utcoffset() == (finish - timedelta(microseconds=1)).astimezone(zone).utcoffset():
            # One offset all day: the hours follow each other (a day starting after a gap at 01:00 too).
            first_hour = begin
            count = int((finish - begin) / HOUR)
            out.extend(first_hour + i * HOUR for i in range(count))
            continue
        # The clocks change today: walk the local wall hours, each of which may exist once, twice or never.
        wall = begin.astimezone(zone).replace(tzinfo=None)
        last = finish.astimezone(zone).replace(tzinfo=None) + HOUR
        found: set[datetime] = set()
        while wall < last:
            for fold in (0, 1):
                moment = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
                if moment.astimezone(zone).replace(tzinfo=None) == wall and begin <= moment < finish:
                    found.add(moment)
            wall += HOUR
        out.extend(sorted(found))
    out.append(day_bounds[-1])
    return out


# ---------------------------------------------------------------- where the scans are


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """The last multiple of `step` since 1970 at or before `moment`."""
    return _MIN_TIME + (moment - _MIN_TIME) // step * step


def ceil_to(moment: datetime, step: timedelta) -> datetime:
    """The first multiple of `step` since 1970 at or after `moment`."""
    floor = floor_to(moment, step)
    return floor if floor == moment else floor + step


def _on_hour(moment: datetime) -> bool:
    return moment.minute == 0 and moment.second == 0 and moment.microsecond == 0 and moment.utcoffset() == ZERO


def _part_of_day(start: datetime, end: datetime, *, daily: bool) -> list[Piece]:
    """Whole hours `[start, end)` inside one UTC day: those hours, or, when they are most of the day, the
    day minus its other hours (rollups add up: a day's row is the sum of its hours' rows). The pieces of
    a day read whole count in the bucket being split (`bucket` is set by `plan`; -1 marks them here)."""
    if not daily or end - start <= HALF_DAY:
        return [Piece(Source.HOURLY, start, end)]
    day = floor_to(start, DAY)
    out = [Piece(Source.DAILY, day, day + DAY, bucket=-1)]
    if day < start:
        out.append(Piece(Source.HOURLY, day, start, sign=-1, bucket=-1))
    if end < day + DAY:
        out.append(Piece(Source.HOURLY, end, day + DAY, sign=-1, bucket=-1))
    return out


def split(start: datetime, end: datetime, *, daily: bool = True) -> list[Piece]:
    """`[start, end)` as raw edges, whole UTC hours and (when `daily`) whole UTC days, in time order.

    With `daily`, a part of a day longer than 12 hours is read as the day minus the hours outside it;
    those pieces carry bucket -1 until `plan` gives them theirs: read ranges through `plan`."""
    first_hour, last_hour = ceil_to(start, HOUR), floor_to(end, HOUR)
    if first_hour >= last_hour:
        return [Piece(Source.RAW, start, end)]
    out: list[Piece] = []
    if start < first_hour:
        out.append(Piece(Source.RAW, start, first_hour))
    first_day, last_day = ceil_to(first_hour, DAY), floor_to(last_hour, DAY)
    if not daily:
        out.append(Piece(Source.HOURLY, first_hour, last_hour))
    elif first_day < last_day:
        if first_hour < first_day:
            out.extend(_part_of_day(first_hour, first_day, daily=daily))
        out.append(Piece(Source.DAILY, first_day, last_day))
        if last_day < last_hour:
            out.extend(_part_of_day(last_day, last_hour, daily=daily))
    elif first_day == last_day and first_hour < first_day < last_hour:
        out.extend(_part_of_day(first_hour, first_day, daily=daily))
        out.extend(_part_of_day(first_day, last_hour, daily=daily))
    else:
        out.extend(_part_of_day(first_hour, last_hour, daily=daily))
    if last_hour < end:
        out.append(Piece(Source.RAW, last_hour, end))
    return out


def plan(bounds: Sequence[datetime], start: datetime, end: datetime, *, daily: bool = True) -> list[Piece]:
    """The pieces of `[start, end)` cut at every bucket bound, adjacent pieces of one source merged
    (days read whole for one bucket keep that bucket's index and are not merged)."""
    pieces: list[Piece] = []
    free: int | None = None
    """Where in `pieces` the last piece without a bucket of its own is (the one a next piece may extend)."""
    for index, (low, high) in enumerate(itertools.pairwise(bounds)):
        begin, finish = max(low, start), min(high, end)
        if begin >= finish:
            continue
        if (
            free is not None
            and pieces[free].source is Source.HOURLY
            and pieces[free].end == begin
            and finish - begin <= HALF_DAY
            and _on_hour(finish)
        ):
            # The common case of hour buckets: one more whole hour of the same piece.
            pieces[free] = Piece(Source.HOURLY, pieces[free].start, finish)
            continue
        for piece in split(begin, finish, daily=daily):
            if piece.bucket is not None:
                pieces.append(piece._replace(bucket=index))
                continue
            if free is not None and pieces[free].source is piece.source and pieces[free].end == piece.start:
                pieces[free] = Piece(piece.source, pieces[free].start, piece.end)
            else:
                pieces.append(piece)
                free = len(pieces) - 1
    return pieces


def raw_windows(pieces: Sequence[Piece]) -> list[tuple[datetime, datetime]]:
    """Spans of raw scans to read to tell, for every raw piece, which visitors are seen for the first
    time that UTC day: from the UTC midnight before each raw piece to its end, overlapping spans merged."""
    spans: list[tuple[datetime, datetime]] = []
    for piece in pieces:
        if piece.source is not Source.RAW:
            continue
        begin = floor_to(piece.start, DAY)
        if spans and begin <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], piece.end))
        else:
            spans.append((begin, piece.end))
    return spans


def fill(bounds: Sequence[datetime], counts: dict[int, tuple[int, int]]) -> list[tuple[datetime, int, int]]:
    """(bucket start, scans, unique visitors) for every bucket, zero where `counts` (by bucket index) has none."""
    return [(bounds[i], *counts.get(i, (0, 0))) for i in range(len(bounds) - 1)]
