"""Scans summed into rollup rows: per (organization, code, UTC hour or day, dimension, value, bot).

A scan adds 1 to `scans` of its total row (dimension 0, value '') and of one row
per dimension, once for its code and once for the organization (code ''); the
organization's rows also get dimension QR_CODE with the code's id as value. A
scan that is its visitor's first that UTC day adds 1 to `uniques` of the same rows:
of the code's rows when first for the code, of the organization's rows when first
for the organization (its QR_CODE row of a code counts the code's own uniques).
Only REDIRECTED scans count.

Scans come as columns (`Columns`, one list per field, from raw rows) and are counted with
`collections.Counter` over zipped columns, one pass per dimension, so the counting
loops run in C (see `aggregate`).

Pure: the caller says which scans are a visitor's first of the day (the `daily_visitors` table knows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import repeat
from typing import Any

from qrmesh.analytics.v1 import analytics_pb2
from qrmesh.scans.v1 import scan_event_pb2

TOTAL = 0
"""The dimension number of a code's (or organization's) total row."""
ORGANIZATION = ""
"""The code id of an organization's rows."""
D = analytics_pb2.Dimension
DIMENSION_COLUMNS: tuple[tuple[int, str], ...] = (
    (D.COUNTRY, "country"),
    (D.REGION, "region"),
    (D.CITY, "city"),
    (D.DEVICE_TYPE, "device_type"),
    (D.OS, "os"),
    (D.BROWSER, "browser"),
    (D.LANGUAGE, "language"),
    (D.REFERRER, "referrer"),
    (D.MATCHED_RULE, "matched_rule"),
    (D.DESTINATION, "destination_url"),
    (D.DEVICE_BRAND, "device_brand"),
)
"""Each stored dimension and the `analytics.scans` column holding its value."""
DIMENSIONS: tuple[int, ...] = tuple(dimension for dimension, _ in DIMENSION_COLUMNS)
QR_CODE = D.QR_CODE
COUNTED = scan_event_pb2.ScanEvent.REDIRECTED
"""The only outcome rollups count."""

RollupRow = tuple[str, str, Any, int, str, bool, int, int]
"""(organization id, code id or '', hour or day, dimension, value, bot, scans, uniques)."""


SCAN_COLUMNS = (
    "event_id",
    "time",
    "organization_id",
    "qr_code_id",
    "short_code",
    "outcome",
    "destination_url",
    "matched_rule",
    "country",
    "region",
    "city",
    "device_type",
    "device_brand",
    "os",
    "browser",
    "language",
    "referrer",
    "bot",
    "visitor_id",
    "ip_address",
    "user_agent",
)
"""The columns of `analytics.scans`, in the order of a row tuple."""
_INDEX = {column: index for index, column in enumerate(SCAN_COLUMNS)}
Key = tuple[str, str, Any, int, str, bool]
"""(organization id, code id or '', hour or day, dimension, value, bot)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """Counted scans, one list per field (all the same length), from rows of SCAN_COLUMNS."""

    event_id: list[str]
    time: list[datetime]
    """UTC."""
    organization_id: list[str]
    qr_code_id: list[str]
    bot: list[bool]
    visitor_id: list[str]
    values: dict[str, list[str]]
    """Per dimension column, the scans' values."""

    @classmethod
    def of(cls, rows: Sequence[Sequence[Any]]) -> Columns:
        """The columns of raw rows (each in the order of SCAN_COLUMNS)."""
        columns: list[list[Any]] = (
            [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in SCAN_COLUMNS]
        )
        return cls(
            event_id=columns[_INDEX["event_id"]],
            time=columns[_INDEX["time"]],
            organization_id=columns[_INDEX["organization_id"]],
            qr_code_id=columns[_INDEX["qr_code_id"]],
            bot=columns[_INDEX["bot"]],
            visitor_id=columns[_INDEX["visitor_id"]],
            values={column: columns[_INDEX[column]] for _, column in DIMENSION_COLUMNS},
        )

    def __len__(self) -> int:
        return len(self.event_id)


def _days(times: list[datetime]) -> list[date]:
    return [moment.date() for moment in times]


def _hours(times: list[datetime]) -> list[datetime]:
    return [moment.replace(minute=0, second=0, microsecond=0) for moment in times]


@dataclass(slots=True)
class Rollups:
    """Rollup increments: key (organization, code, bucket, dimension, value, bot) -> [scans, uniques]."""

    hourly: dict[Key, list[int]]
    """Keys whose bucket is the UTC hour (a datetime)."""
    daily: dict[Key, list[int]]
    """Keys whose bucket is the UTC day (a date)."""

    def hourly_rows(self) -> list[RollupRow]:
        """The hourly rows, in no order (the database sorts them before taking row locks)."""
        return [(*key, counts[0], counts[1]) for key, counts in self.hourly.items()]

    def daily_rows(self) -> list[RollupRow]:
        """The daily rows, in no order."""
        return [(*key, counts[0], counts[1]) for key, counts in self.daily.items()]


def aggregate(scans: Columns, code_unique: Sequence[bool], org_unique: Sequence[bool]) -> Rollups:
    """The rollup increments of these scans (each stored for the first time), given which of them are their
    visitor's first scan that UTC day of the code (`code_unique`) and of the organization (`org_unique`).

    One Counter pass per dimension over (organization, code, hour, bot, value, unique flags) gives the
    codes' and the organization's hourly rows; daily rows are sums of hourly rows (a visitor's unique lands
    in one hour of the day)."""
    count = len(scans)
    organizations, codes, bots = scans.organization_id, scans.qr_code_id, scans.bot
    hours = _hours(scans.time)
    blank = list(repeat("", count))
    columns = [(TOTAL, blank), *((dimension, scans.values[column]) for dimension, column in DIMENSION_COLUMNS)]

    hourly: dict[Key, list[int]] = {}
    get = hourly.get
    for dimension, values in columns:
        for (organization, code, hour, bot, value, code_first, org_first), number in Counter(
            zip(organizations, codes, hours, bots, values, code_unique, org_unique, strict=True)
        ).items():
            for owner, unique in ((code, code_first), (ORGANIZATION, org_first)):
                key = (organization, owner, hour, dimension, value, bot)
                counts = get(key)
                if counts is None:
                    hourly[key] = [number, number if unique else 0]
                else:
                    counts[0] += number
                    if unique:
                        counts[1] += number
            if dimension == TOTAL:
                key = (organization, ORGANIZATION, hour, QR_CODE, code, bot)
                counts = get(key)
                if counts is None:
                    hourly[key] = [number, number if code_first else 0]
                else:
                    counts[0] += number
                    if code_first:
                        counts[1] += number

    daily: dict[Key, list[int]] = {}
    days: dict[datetime, date] = {}
    for (organization, code, hour, dimension, value, bot), (number, uniques) in hourly.items():
        day = days.get(hour)
        if day is None:
            day = days[hour] = hour.date()
        key = (organization, code, day, dimension, value, bot)
        counts = daily.get(key)
        if counts is None:
            daily[key] = [number, uniques]
        else:
            counts[0] += number
            counts[1] += uniques
    return Rollups(hourly, daily)
