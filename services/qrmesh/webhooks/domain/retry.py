"""When a failed delivery is tried again: an exponential schedule with equal jitter."""

from __future__ import annotations

import random
from collections.abc import Sequence

DEFAULT_SCHEDULE: tuple[float, ...] = (5, 60, 300, 1800, 7200, 18000, 36000, 36000)
"""Seconds before each retry (about 26 hours in all): 5 s, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""


def retry_delay(schedule: Sequence[float], retry: int, *, rng: random.Random | None = None) -> float | None:
    """Seconds to wait before retry number `retry` (0 = the first retry), or None when the schedule is used up.

    Equal jitter: a uniform draw in [step / 2, step], so replicas that failed together spread out while the
    whole schedule still spans about as long as configured."""
    if retry < 0 or retry >= len(schedule):
        return None
    step = float(schedule[retry])
    return (rng or random).uniform(step / 2, step)


def outcome(status: int) -> str:
    """What an HTTP answer means for a delivery: "success" (2xx), "gone" (410: stop for good) or "retry"."""
    if 200 <= status < 300:
        return "success"
    if status == 410:
        return "gone"
    return "retry"
