"""Weekly opening hours in a time zone, compiled to sorted second-of-week intervals."""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qrmesh.qr.v1 import stored_qr_code_pb2

DAY = 86_400
WEEK = 7 * DAY
_MONDAY, _SUNDAY = 1, 7
"""google.type.DayOfWeek numbers; DAY_OF_WEEK_UNSPECIFIED (0) is ignored."""


def zone(name: str) -> tzinfo:
    """The IANA zone `name`; UTC when empty or unknown (the qr service validates names on input)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _seconds(time_of_day: Any) -> int:
    # A google.type.TimeOfDay; 24:00:00 is allowed as an end of day, fractions of a second are ignored.
    return min(int(time_of_day.hours) * 3600 + int(time_of_day.minutes) * 60 + int(time_of_day.seconds), DAY)


class WeeklySchedule:
    """Open during any of its windows, read on the local wall clock of its zone.

    A window runs from its start (inclusive) to its end (exclusive) on each of
    its days (every day when none); an end not after the start runs into the
    next day (so equal times mean 24 hours). On DST days the wall clock rules:
    a window inside the skipped spring-forward hour never opens that day, one
    inside the repeated fall-back hour is open both times round.
    """

    __slots__ = ("_ends", "_starts", "always_open", "zone")

    def __init__(self, zone_info: tzinfo, intervals: list[tuple[int, int]]) -> None:
        self.zone = zone_info
        merged: list[tuple[int, int]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._starts = tuple(start for start, _ in merged)
        self._ends = tuple(end for _, end in merged)
        self.always_open = merged == [(0, WEEK)]

    @property
    def intervals(self) -> tuple[tuple[int, int], ...]:
        """Merged [start, end) seconds since Monday 00:00 local time."""
        return tuple(zip(self._starts, self._ends, strict=True))

    def is_open(self, now: datetime) -> bool:
        """Whether the aware datetime `now` falls in a window."""
        local = now.astimezone(self.zone)
        second = local.weekday() * DAY + local.hour * 3600 + local.minute * 60 + local.second
        index = bisect_right(self._starts, second) - 1
        return index >= 0 and second < self._ends[index]


def compile_schedule(schedule: stored_qr_code_pb2.Schedule) -> WeeklySchedule | None:
    """The compiled schedule; None when it has no windows (then it does not restrict anything)."""
    if not schedule.windows:
        return None
    intervals: list[tuple[int, int]] = []
    for window in schedule.windows:
        days = sorted({day - 1 for day in window.days if _MONDAY <= day <= _SUNDAY})
        start = _seconds(window.start_time)
        end = _seconds(window.end_time)
        if end <= start:
            end += DAY
        for day in days or range(7):
            first, last = day * DAY + start, day * DAY + end
            if last <= WEEK:
                intervals.append((first, last))
                continue
            # Sunday night into Monday morning wraps around the week.
            if first < WEEK:
                intervals.append((first, WEEK))
            intervals.append((max(first - WEEK, 0), last - WEEK))
    return WeeklySchedule(zone(schedule.time_zone), intervals)
