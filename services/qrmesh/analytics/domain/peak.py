"""Peak times: scans folded onto a week of local hours (7 x 24 cells, Monday 0:00 first)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

CELLS = 7 * 24


def cell_of(moment: datetime, zone: ZoneInfo) -> int:
    """The cell of an instant: weekday (Monday 0) times 24 plus the local hour."""
    local = moment.astimezone(zone)
    return local.weekday() * 24 + local.hour


def cells_of(bounds: Sequence[datetime], zone: ZoneInfo) -> list[int]:
    """The cell of each local-hour bucket whose starts are `bounds` (the last bound ends the last bucket)."""
    return [cell_of(start, zone) for start in bounds[:-1]]
