"""Time ranges, buckets in time zones (DST, :30 zones, ISO weeks, months), the plan over rollups and
raw scans, breakdown ranking, peak folding and export cells."""

from __future__ import annotations

import bisect
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from qrmesh.analytics.domain import breakdown, buckets, peak
from qrmesh.analytics.domain.buckets import Granularity, Piece, Source
from qrmesh.platform import cells
from qrmesh.platform.errors import InvalidArgument

STOCKHOLM = ZoneInfo("Europe/Stockholm")
KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def wall(bounds: list[datetime], zone: ZoneInfo) -> list[str]:
    return [moment.astimezone(zone).isoformat() for moment in bounds]


def lengths(bounds: list[datetime]) -> list[float]:
    return [(later - earlier) / timedelta(hours=1) for earlier, later in itertools.pairwise(bounds)]


# ---------------------------------------------------------------- zones and ranges


def test_zones() -> None:
    assert buckets.parse_zone("").key == "UTC"
    assert buckets.parse_zone(" Europe/Stockholm ").key == "Europe/Stockholm"
    for bad in ("Mars/Olympus", "../etc/passwd", "/etc/localtime", "Europe/", "Europe\\Stockholm"):
        with pytest.raises(InvalidArgument) as caught:
            buckets.parse_zone(bad)
        assert caught.value.reason == "INVALID_TIME_ZONE"
        assert caught.value.violations[0].field == "timeZone"
        assert "IANA" in caught.value.message


def test_ranges_default_to_the_last_30_days() -> None:
    now = utc(2026, 11, 24, 12, 34, 56)
    assert buckets.resolve_range(None, None, now) == (now - timedelta(days=30), now)
    assert buckets.resolve_range(utc(2026, 1, 1), None, now) == (utc(2026, 1, 1), now)
    assert buckets.resolve_range(None, utc(2026, 2, 1), now) == (utc(2026, 1, 2), utc(2026, 2, 1))
    for start, end in ((now, now), (now, now - timedelta(seconds=1)), (utc(1969, 12, 31), now)):
        with pytest.raises(InvalidArgument) as caught:
            buckets.resolve_range(start, end, now)
        assert caught.value.reason == "INVALID_TIME_RANGE"


# ---------------------------------------------------------------- buckets


def test_days_of_23_and_25_hours_in_stockholm() -> None:
    spring = buckets.bucket_bounds(utc(2026, 3, 28, 12), utc(2026, 3, 30, 12), STOCKHOLM, Granularity.DAY)
    assert wall(spring, STOCKHOLM) == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        "2026-03-31T00:00:00+02:00",
    ]
    assert lengths(spring) == [24, 23, 24]
    autumn = buckets.bucket_bounds(utc(2026, 10, 25), utc(2026, 10, 25, 23), STOCKHOLM, Granularity.DAY)
    assert lengths(autumn) == [25]


def test_hours_across_clock_changes() -> None:
    spring = buckets.bucket_bounds(utc(2026, 3, 28, 23), utc(2026, 3, 29, 3), STOCKHOLM, Granularity.HOUR)
    assert [moment[11:] for moment in wall(spring, STOCKHOLM)] == [
        "00:00:00+01:00",
        "01:00:00+01:00",
        "03:00:00+02:00",
        "04:00:00+02:00",
        "05:00:00+02:00",
    ]
    autumn = buckets.bucket_bounds(utc(2026, 10, 24, 23), utc(2026, 10, 25, 3), STOCKHOLM, Granularity.HOUR)
    assert [moment[11:] for moment in wall(autumn, STOCKHOLM)] == [
        "01:00:00+02:00",
        "02:00:00+02:00",
        "02:00:00+01:00",
        "03:00:00+01:00",
        "04:00:00+01:00",
    ]
    assert set(lengths(autumn)) == {1.0}
    # Lord Howe Island moves its clocks by 30 minutes: the local hour of the change lasts 90 minutes.
    howe = buckets.bucket_bounds(utc(2026, 10, 3, 13), utc(2026, 10, 3, 17), LORD_HOWE, Granularity.HOUR)
    assert all(moment.astimezone(LORD_HOWE).minute == 0 for moment in howe)
    assert lengths(howe) == [1, 1, 1.5, 1]


def test_a_midnight_the_clocks_skip_starts_its_day_at_one() -> None:
    # Chile moves its clocks forward at midnight: 2026-09-06 begins at 01:00.
    days = buckets.bucket_bounds(utc(2026, 9, 5, 12), utc(2026, 9, 7, 12), SANTIAGO, Granularity.DAY)
    assert wall(days, SANTIAGO)[1:3] == ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"]
    assert lengths(days)[1] == 23


def test_half_hour_zones_weeks_and_months() -> None:
    days = buckets.bucket_bounds(utc(2026, 1, 1), utc(2026, 1, 3), KOLKATA, Granularity.DAY)
    assert [moment.isoformat() for moment in days] == [
        "2025-12-31T18:30:00+00:00",
        "2026-01-01T18:30:00+00:00",
        "2026-01-02T18:30:00+00:00",
        "2026-01-03T18:30:00+00:00",
    ]
    weeks = buckets.bucket_bounds(utc(2026, 3, 25), utc(2026, 4, 10), STOCKHOLM, Granularity.WEEK)
    assert all(moment.astimezone(STOCKHOLM).weekday() == 0 for moment in weeks)
    assert wall(weeks, STOCKHOLM)[0] == "2026-03-23T00:00:00+01:00"
    assert lengths(weeks) == [167, 168, 168]
    months = buckets.bucket_bounds(utc(2025, 12, 15), utc(2026, 3, 31, 23), NEW_YORK, Granularity.MONTH)
    assert wall(months, NEW_YORK) == [
        "2025-12-01T00:00:00-05:00",
        "2026-01-01T00:00:00-05:00",
        "2026-02-01T00:00:00-05:00",
        "2026-03-01T00:00:00-05:00",
        "2026-04-01T00:00:00-04:00",
    ]


def test_at_most_10000_buckets() -> None:
    start = utc(2020, 1, 1)
    assert (
        len(buckets.bucket_bounds(start, start + timedelta(hours=10_000), ZoneInfo("UTC"), Granularity.HOUR)) == 10_001
    )
    for end, granularity in (
        (start + timedelta(hours=10_001), Granularity.HOUR),
        (utc(8000, 1, 1), Granularity.DAY),
        (utc(8999, 1, 1), Granularity.MONTH),
    ):
        with pytest.raises(InvalidArgument) as caught:
            buckets.bucket_bounds(start, end, ZoneInfo("UTC"), granularity)
        assert caught.value.reason == "TOO_MANY_BUCKETS"
        assert "10,000" in caught.value.message
    assert len(buckets.bucket_bounds(start, utc(2800, 1, 1), ZoneInfo("UTC"), Granularity.MONTH)) == 780 * 12 + 1


def test_fill_puts_zero_in_empty_buckets() -> None:
    bounds = [utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 4)]
    assert buckets.fill(bounds, {1: (5, 2)}) == [(bounds[0], 0, 0), (bounds[1], 5, 2), (bounds[2], 0, 0)]


# ---------------------------------------------------------------- the plan


def test_split_uses_days_then_hours_then_raw_edges() -> None:
    assert buckets.split(utc(2026, 1, 1, 9, 15), utc(2026, 1, 4, 7, 45)) == [
        Piece(Source.RAW, utc(2026, 1, 1, 9, 15), utc(2026, 1, 1, 10)),
        # 14 hours of the first day: the day minus its first 10 hours.
        Piece(Source.DAILY, utc(2026, 1, 1), utc(2026, 1, 2), bucket=-1),
        Piece(Source.HOURLY, utc(2026, 1, 1), utc(2026, 1, 1, 10), sign=-1, bucket=-1),
        Piece(Source.DAILY, utc(2026, 1, 2), utc(2026, 1, 4)),
        Piece(Source.HOURLY, utc(2026, 1, 4), utc(2026, 1, 4, 7)),
        Piece(Source.RAW, utc(2026, 1, 4, 7), utc(2026, 1, 4, 7, 45)),
    ]
    assert buckets.split(utc(2026, 1, 1, 9, 15), utc(2026, 1, 1, 9, 45)) == [
        Piece(Source.RAW, utc(2026, 1, 1, 9, 15), utc(2026, 1, 1, 9, 45))
    ]
    assert buckets.split(utc(2026, 1, 1), utc(2026, 1, 2)) == [Piece(Source.DAILY, utc(2026, 1, 1), utc(2026, 1, 2))]
    assert buckets.split(utc(2026, 1, 1), utc(2026, 1, 3), daily=False) == [
        Piece(Source.HOURLY, utc(2026, 1, 1), utc(2026, 1, 3))
    ]


def test_plan_reads_few_rollup_rows() -> None:
    def rows(pieces: list[Piece]) -> int:
        size = {Source.DAILY: timedelta(days=1), Source.HOURLY: timedelta(hours=1)}
        return sum((p.end - p.start) // size[p.source] for p in pieces if p.source is not Source.RAW)

    # Stockholm days start at 23:00 (summer: 22:00) UTC: each is its UTC day plus the hours before it,
    # minus its last hours.
    start, end = utc(2025, 12, 31, 23), utc(2026, 12, 31, 23)
    bounds = buckets.bucket_bounds(start, end, STOCKHOLM, Granularity.DAY)
    pieces = buckets.plan(bounds, start, end)
    assert not any(p.source is Source.RAW for p in pieces)
    assert rows(pieces) <= 5 * 365
    # UTC days: the daily rollups only.
    utc_bounds = buckets.bucket_bounds(utc(2026, 1, 1), utc(2027, 1, 1), ZoneInfo("UTC"), Granularity.DAY)
    assert buckets.plan(utc_bounds, utc(2026, 1, 1), utc(2027, 1, 1)) == [
        Piece(Source.DAILY, utc(2026, 1, 1), utc(2027, 1, 1))
    ]
    # Kolkata days end at 18:30 UTC: the hour around each bound comes from the raw scans.
    kolkata = buckets.bucket_bounds(utc(2026, 1, 1), utc(2026, 1, 3), KOLKATA, Granularity.DAY)
    pieces = buckets.plan(kolkata, utc(2026, 1, 1), utc(2026, 1, 3))
    raw = [(p.start.isoformat(), p.end.isoformat()) for p in pieces if p.source is Source.RAW]
    assert raw == [
        ("2026-01-01T18:00:00+00:00", "2026-01-01T19:00:00+00:00"),
        ("2026-01-02T18:00:00+00:00", "2026-01-02T19:00:00+00:00"),
    ]
    # Hours of a year: one hourly piece.
    hours = buckets.bucket_bounds(start, end, STOCKHOLM, Granularity.HOUR)
    assert buckets.plan(hours, start, end) == [Piece(Source.HOURLY, start, end)]


def test_plan_counts_every_scan_once_in_its_own_bucket() -> None:
    """Scans on every minute (varied weights), rollups derived from them: reading the plan's pieces as the
    store does (raw by minute, hours and days as sums, signs, buckets by time or given) gives each
    bucket exactly its own scans, in every zone and granularity."""
    base = utc(2026, 3, 1)
    minutes = 60 * 24 * 70
    weights = [(index * 7919) % 13 + 1 for index in range(minutes)]
    prefix = [0, *itertools.accumulate(weights)]

    def total(start: datetime, end: datetime) -> int:
        return prefix[int((end - base) / timedelta(minutes=1))] - prefix[int((start - base) / timedelta(minutes=1))]

    def bucket_of(bounds: list[datetime], moment: datetime) -> int:
        return bisect.bisect_right(bounds, moment) - 1

    for zone, granularity in itertools.product(
        (STOCKHOLM, KOLKATA, LORD_HOWE, NEW_YORK, ZoneInfo("Asia/Kathmandu")), tuple(Granularity)
    ):
        start, end = utc(2026, 3, 20, 7, 13), utc(2026, 4, 24, 22, 41)
        if granularity is Granularity.MONTH:
            start, end = utc(2026, 3, 2, 5, 1), utc(2026, 5, 8, 20, 59)
        bounds = buckets.bucket_bounds(start, end, zone, granularity)
        expected = [0] * (len(bounds) - 1)
        moment = start
        while moment < end:
            expected[bucket_of(bounds, moment)] += weights[int((moment - base) / timedelta(minutes=1))]
            moment += timedelta(minutes=1)
        got = [0] * (len(bounds) - 1)
        for piece in buckets.plan(bounds, start, end):
            step = {
                Source.RAW: timedelta(minutes=1),
                Source.HOURLY: timedelta(hours=1),
                Source.DAILY: timedelta(days=1),
            }
            row = piece.start
            while row < piece.end:
                bucket = piece.bucket if piece.bucket is not None else bucket_of(bounds, row)
                got[bucket] += piece.sign * total(row, row + step[piece.source])
                row += step[piece.source]
        assert got == expected, (zone, granularity)
    # Most of a UTC day is read as the day minus its other hours.
    stockholm = buckets.bucket_bounds(utc(2026, 1, 4, 23), utc(2026, 1, 5, 23), STOCKHOLM, Granularity.DAY)
    assert buckets.plan(stockholm, utc(2026, 1, 4, 23), utc(2026, 1, 5, 23)) == [
        Piece(Source.HOURLY, utc(2026, 1, 4, 23), utc(2026, 1, 5)),
        Piece(Source.DAILY, utc(2026, 1, 5), utc(2026, 1, 6), bucket=0),
        Piece(Source.HOURLY, utc(2026, 1, 5, 23), utc(2026, 1, 6), sign=-1, bucket=0),
    ]


def test_raw_windows_look_back_to_utc_midnight() -> None:
    pieces = [
        Piece(Source.RAW, utc(2026, 1, 1, 18), utc(2026, 1, 1, 19)),
        Piece(Source.HOURLY, utc(2026, 1, 1, 19), utc(2026, 1, 2, 18)),
        Piece(Source.RAW, utc(2026, 1, 2, 18), utc(2026, 1, 2, 19)),
        Piece(Source.RAW, utc(2026, 1, 2, 20), utc(2026, 1, 2, 20, 30)),
    ]
    assert buckets.raw_windows(pieces) == [
        (utc(2026, 1, 1), utc(2026, 1, 1, 19)),
        (utc(2026, 1, 2), utc(2026, 1, 2, 20, 30)),
    ]


# ---------------------------------------------------------------- breakdowns, peak, cells


def test_breakdown_top_values_and_other() -> None:
    counts = {"SE": (5, 4), "DE": (3, 3), "": (3, 1), "FR": (1, 1), "NO": (0, 0)}
    result = breakdown.top(counts, 2)
    assert [(e.value, e.scans, e.uniques, e.share) for e in result.entries] == [
        ("SE", 5, 4, 5 / 12),
        ("", 3, 1, 3 / 12),
    ]
    assert (result.other_scans, result.total_scans) == (4, 12)
    assert breakdown.top({}, 10) == breakdown.Breakdown([], 0, 0)
    assert [breakdown.limit_of(n) for n in (0, -1, 1, 100, 101)] == [10, 10, 1, 100, 100]


def test_peak_cells_of_local_hours() -> None:
    # Monday 2026-01-05 00:00 to 02:00 in Stockholm, then the autumn night with its repeated hour.
    bounds = buckets.bucket_bounds(utc(2026, 1, 4, 23), utc(2026, 1, 5, 2), STOCKHOLM, Granularity.HOUR)
    assert peak.cells_of(bounds, STOCKHOLM) == [0, 1, 2]
    autumn = buckets.bucket_bounds(utc(2026, 10, 24, 23), utc(2026, 10, 25, 2), STOCKHOLM, Granularity.HOUR)
    sunday = 6 * 24
    assert peak.cells_of(autumn, STOCKHOLM) == [sunday + 1, sunday + 2, sunday + 2]
    assert peak.cell_of(utc(2026, 1, 4, 23, 59), KOLKATA) == 5  # Monday 05:29 in Kolkata


def test_export_cells_cannot_become_formulas() -> None:
    for text in (
        "=1+1",
        "+1",
        "-2",
        "@SUM(A1)",
        "\tx",
        "\rx",
        '=HYPERLINK("http://x")',
        ' =HYPERLINK("http://x")',  # imports may trim leading spaces
        "\u00a0\u00a0=1+1",
        "\uff1dcmd",  # a fullwidth equals sign
    ):
        assert cells.neutralize(text) == "'" + text
    for text in ("", "SE", "1.5", "a=b", "'already"):
        assert cells.neutralize(text) == text
