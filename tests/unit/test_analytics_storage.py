"""Monthly partitions, retention decisions and rollup aggregation of the analytics service."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from qrmesh.analytics import store_write
from qrmesh.analytics.domain.aggregate import (
    COUNTED,
    DIMENSION_COLUMNS,
    DIMENSIONS,
    QR_CODE,
    SCAN_COLUMNS,
    TOTAL,
    Columns,
    aggregate,
)
from qrmesh.analytics.domain.retention import Deletion, deletions, longest, partitions_to_drop
from qrmesh.analytics.partitions import Month, create_statement, month_of_partition, months_ahead, months_for
from qrmesh.analytics.v1.analytics_pb2 import Dimension


def test_month_names_and_bounds() -> None:
    month = Month.of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert month.name == "scans_202612"
    assert month.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert month.end == datetime(2027, 1, 1, tzinfo=UTC)
    assert month_of_partition("scans_202612") == month
    assert month_of_partition("scans_202613") is None
    assert month_of_partition("scans_default") is None
    statement = create_statement(month)
    assert "scans_202612" in statement
    assert "FROM ('2026-12-01T00:00:00+00:00') TO ('2027-01-01T00:00:00+00:00')" in statement


def test_a_month_is_the_utc_one() -> None:
    stockholm_new_year = datetime(2027, 1, 1, 0, 30, tzinfo=UTC) + timedelta(hours=1)
    assert Month.of(stockholm_new_year.astimezone(UTC)) == Month(2027, 1)
    east = datetime.fromisoformat("2027-01-01T00:30:00+01:00")  # still December in UTC
    assert Month.of(east) == Month(2026, 12)


def test_months_ahead_cross_the_year() -> None:
    assert months_ahead(datetime(2026, 11, 24, tzinfo=UTC)) == [Month(2026, 11), Month(2026, 12), Month(2027, 1)]
    assert months_ahead(datetime(2026, 12, 1, tzinfo=UTC), ahead=0) == [Month(2026, 12)]
    assert Month(2026, 1).plus(-1) == Month(2025, 12)
    assert Month(2026, 1).plus(-13) == Month(2024, 12)


def test_months_for_event_times() -> None:
    times = [datetime(2026, 3, 31, 23, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 9, tzinfo=UTC)]
    assert months_for(times) == {Month(2026, 3), Month(2026, 4)}


def test_a_month_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="not a month"):
        Month(2026, 13)


NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_partitions_go_only_when_wholly_older_than_the_longest_retention() -> None:
    months = [Month(2025, 10), Month(2025, 11), Month(2025, 12), Month(2026, 11)]
    # 365 days before NOW is 2025-11-24: October 2025 is wholly older, November 2025 is not.
    assert partitions_to_drop(months, NOW, 365) == [Month(2025, 10)]
    assert partitions_to_drop(months, NOW, 30) == [Month(2025, 10), Month(2025, 11), Month(2025, 12)]
    assert partitions_to_drop(months, NOW, 3650) == []


def test_the_longest_retention_rules_partitions() -> None:
    assert longest(365, {}) == 365
    assert longest(365, {"a": 30, "b": 730}) == 730
    assert longest(365, {"a": 30}) == 365


def test_shorter_retentions_delete_rows() -> None:
    assert deletions(365, {}, NOW) == []
    assert deletions(365, {"a": 30, "b": 365}, NOW) == [Deletion(NOW - timedelta(days=30), ("a",), exclude=False)]
    # b keeps two years: everyone else on the default loses rows past a year, a past 30 days.
    assert deletions(365, {"a": 30, "b": 730}, NOW) == [
        Deletion(NOW - timedelta(days=30), ("a",), exclude=False),
        Deletion(NOW - timedelta(days=365), ("a", "b"), exclude=True),
    ]


def row(code: str, minute: int, visitor: str, *, bot: bool = False, country: str = "SE") -> tuple[object, ...]:
    """A raw row (SCAN_COLUMNS order) of a scan at 10:00 + `minute` on 2026-11-24."""
    values: dict[str, object] = dict.fromkeys(SCAN_COLUMNS, "")
    values.update(
        event_id=f"e-{code}-{minute}",
        time=datetime(2026, 11, 24, 10, tzinfo=UTC) + timedelta(minutes=minute),
        organization_id="org",
        qr_code_id=code,
        outcome=1,
        country=country,
        bot=bot,
        visitor_id=visitor,
    )
    return tuple(values[column] for column in SCAN_COLUMNS)


def test_aggregate_counts_scans_and_first_visits() -> None:
    scans = Columns.of(
        [
            row("a", 70, "v1", country="DE"),  # the next hour
            row("a", 5, "v1"),
            row("b", 1, "v1"),
            row("a", 2, "v2", bot=True),
            row("a", 3, ""),
        ]
    )
    # v1 was seen on b earlier today; its first scan of a is at 10:05; the organization first saw it at 10:01.
    code_unique = [False, True, False, True, False]
    org_unique = [False, False, True, True, False]
    rollups = aggregate(scans, code_unique, org_unique)
    ten, eleven = datetime(2026, 11, 24, 10, tzinfo=UTC), datetime(2026, 11, 24, 11, tzinfo=UTC)
    day = date(2026, 11, 24)
    hourly = {key: tuple(value) for key, value in rollups.hourly.items()}
    assert hourly[("org", "a", ten, TOTAL, "", False)] == (2, 1)
    assert hourly[("org", "a", eleven, TOTAL, "", False)] == (1, 0)
    assert hourly[("org", "a", ten, TOTAL, "", True)] == (1, 1)
    assert hourly[("org", "b", ten, TOTAL, "", False)] == (1, 0)
    assert hourly[("org", "", ten, TOTAL, "", False)] == (3, 1)
    assert hourly[("org", "", ten, QR_CODE, "b", False)] == (1, 0)  # a code's own uniques
    assert hourly[("org", "", ten, QR_CODE, "a", False)] == (2, 1)
    assert hourly[("org", "a", eleven, DIMENSIONS[0], "DE", False)] == (1, 0)
    assert hourly[("org", "a", ten, DIMENSIONS[0], "SE", False)] == (2, 1)
    assert hourly[("org", "", ten, DIMENSIONS[0], "SE", False)] == (3, 1)
    assert ("org", "a", ten, QR_CODE, "a", False) not in hourly  # QR_CODE rows only for the organization
    daily = {key: tuple(value) for key, value in rollups.daily.items()}
    assert daily[("org", "", day, TOTAL, "", False)] == (4, 1)
    assert daily[("org", "a", day, TOTAL, "", False)] == (3, 1)
    assert daily[("org", "", day, TOTAL, "", True)] == (1, 1)
    assert daily[("org", "", day, DIMENSIONS[0], "SE", False)] == (3, 1)
    assert sorted(rollups.hourly_rows()) == sorted((*key, *value) for key, value in rollups.hourly.items())
    every_dimension = {key[3] for key in rollups.daily if key[1] == ""}
    assert every_dimension == {TOTAL, QR_CODE, *DIMENSIONS}
    assert len(rollups.daily) == len({(k[0], k[1], k[2].date(), *k[3:]) for k in rollups.hourly})


def test_aggregate_of_nothing() -> None:
    rollups = aggregate(Columns.of([]), [], [])
    assert rollups.hourly == {}
    assert rollups.daily == {}


def test_the_stored_dimensions_are_the_contract_s() -> None:
    assert {number for _, number in Dimension.items() if number} == {*DIMENSIONS, QR_CODE}
    assert f"outcome = {COUNTED} " in store_write.INSERT_FROM_STAGING
    assert {column for _, column in DIMENSION_COLUMNS} <= set(SCAN_COLUMNS)
