"""Login failure counters in Redis, per account and per client address."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from qrmesh.identity.domain.throttle import ThrottlePolicy
from qrmesh.platform.errors import ResourceExhausted, Unavailable

KEY_PREFIX = "qrmesh:identity:login:"


def subject_key(kind: str, subject: str) -> str:
    """The Redis key of a subject's counters (hashed, so no address or email is stored in clear)."""
    digest = hashlib.sha256(f"{kind}:{subject}".encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}{kind}:{digest}"


@dataclass(frozen=True, slots=True)
class Admission:
    """A login attempt let through: its subjects' keys and their failure counts, this attempt included."""

    keys: tuple[str, ...]
    failures: tuple[int, ...]


# Many people can share one address (offices, NAT, mobile carriers): it gets more room than an account.
ADDRESS_POLICY = ThrottlePolicy(delay_after=20, lock_after=50)


class LoginThrottle:
    """Slows down and then locks subjects (an account, a client address) that keep failing to log in."""

    def __init__(
        self, client: redis.Redis, policy: ThrottlePolicy | None = None, address_policy: ThrottlePolicy | None = None
    ) -> None:
        self.redis = client
        self.policy = policy or ThrottlePolicy()
        self.address_policy = address_policy or ADDRESS_POLICY

    def _is_address(self, key: str) -> bool:
        return key.startswith(f"{KEY_PREFIX}address:")

    def _policy(self, key: str) -> ThrottlePolicy:
        return self.address_policy if self._is_address(key) else self.policy

    async def attempt(self, keys: Sequence[str], now: float) -> Admission:
        """Count a login attempt against every subject, then let it through or raise ResourceExhausted.

        Reading a subject's counters and counting the attempt happen in one transaction, so concurrent
        attempts each see those before them and no more get through than the policies allow. The
        attempt counts as a failure (and restarts the delay) until `succeeded` says otherwise; refused
        attempts count too, so hammering a throttled subject only makes it wait longer. The answer
        (reason LOGIN_THROTTLED) tells how long the next attempt must wait.
        """
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hmget(key, "failures", "last")
                    pipe.get(f"{key}:lock")
                    pipe.hincrby(key, "failures", 1)
                    pipe.hset(key, "last", repr(now))
                    pipe.expire(key, self._policy(key).window_seconds, nx=True)
                answers = await pipe.execute()
        except RedisError as exc:
            raise _unavailable() from exc
        refused = False
        longest = 0.0
        counts: list[int] = []
        for index, key in enumerate(keys):
            (failures, last), locked, count = answers[index * 5 : index * 5 + 3]
            policy = self._policy(key)
            locked_until = float(locked) if locked is not None else None
            wait = policy.retry_after(
                failures=int(failures or 0),
                last_failure_at=float(last) if last is not None else None,
                locked_until=locked_until,
                now=now,
            )
            # What the next attempt faces, this one counted.
            after = policy.retry_after(failures=int(count), last_failure_at=now, locked_until=locked_until, now=now)
            refused = refused or wait is not None
            longest = max(longest, wait or 0.0, after or 0.0)
            counts.append(int(count))
        if refused:
            raise ResourceExhausted(
                "too many failed logins; wait before trying again",
                retry_after=round(longest, 3),
                reason="LOGIN_THROTTLED",
            )
        return Admission(tuple(keys), tuple(counts))

    async def failed(self, admission: Admission, now: float) -> None:
        """The admitted attempt failed (it is counted already): lock the subjects it brought to the limit."""
        try:
            for key, failures in zip(admission.keys, admission.failures, strict=True):
                policy = self._policy(key)
                if policy.locks(failures):
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.set(f"{key}:lock", repr(now + policy.lock_seconds), ex=policy.lock_seconds)
                        pipe.delete(key)
                        await pipe.execute()
        except RedisError as exc:
            raise _unavailable() from exc

    async def succeeded(self, admission: Admission) -> None:
        """The admitted attempt logged in: forget the account's failures, take the attempt back from addresses."""
        addresses = [key for key in admission.keys if self._is_address(key)]
        accounts = [key for key in admission.keys if not self._is_address(key)]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in addresses:
                    pipe.hincrby(key, "failures", -1)
                    pipe.expire(key, self.address_policy.window_seconds, nx=True)
                if accounts:
                    pipe.delete(*accounts)
                answers = await pipe.execute()
            # Below 0 only if the counters went away (a lock) after the attempt: give back what was taken.
            for index, key in enumerate(addresses):
                if (counted := int(answers[index * 2])) < 0:
                    await self.redis.hincrby(key, "failures", -counted)
        except RedisError as exc:
            raise _unavailable() from exc


def _unavailable() -> Unavailable:
    return Unavailable("login is unavailable for a moment; try again")
