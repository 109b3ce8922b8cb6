"""Login throttling arithmetic: after a few failures each attempt waits longer, after more the subject is locked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How failures (counted per account and per client address within `window`) slow logins down."""

    delay_after: int = 5
    """From this many failures on, each attempt must wait a growing delay after the last failure."""
    lock_after: int = 10
    """At this many failures, the subject is locked for `lock_seconds`."""
    window_seconds: int = 15 * 60
    """Failures older than this are forgotten."""
    lock_seconds: int = 15 * 60
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds an attempt must wait after the last of `failures` failures (0 below `delay_after`)."""
        if failures < self.delay_after:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** (failures - self.delay_after))

    def retry_after(
        self, *, failures: int, last_failure_at: float | None, locked_until: float | None, now: float
    ) -> float | None:
        """Seconds until another attempt is allowed, or None if one is allowed now (times in epoch seconds)."""
        if locked_until is not None and now < locked_until:
            return locked_until - now
        wait = self.delay(failures)
        if wait and last_failure_at is not None and now < last_failure_at + wait:
            return last_failure_at + wait - now
        return None

    def locks(self, failures: int) -> bool:
        """Whether reaching `failures` failures locks the subject."""
        return failures >= self.lock_after
