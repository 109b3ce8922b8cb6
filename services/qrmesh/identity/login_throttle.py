"""Login failure counters in Redis, per account and per client address."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from qrmesh.identity.domain.throttle import ThrottlePolicy
from qrmesh.platform.errors import ResourceExhausted, Unavailable

KEY_PREFIX = "qrmesh:identity:login:"


def subject_key(kind: str, subject: str) -> str:
    """The Redis key of a subject's counters (hashed, so no address or email is stored in clear)."""
    digest = hashlib.sha256(f"{kind}:{subject}".encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}{kind}:{digest}"


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

    def _policy(self, key: str) -> ThrottlePolicy:
        return self.address_policy if key.startswith(f"{KEY_PREFIX}address:") else self.policy

    async def check(self, keys: Sequence[str], now: float) -> None:
        """Raise ResourceExhausted (reason LOGIN_THROTTLED) if any subject must wait."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "failures", "last")
                    pipe.get(f"{key}:lock")
                answers = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("login is unavailable for a moment; try again") from exc
        longest = 0.0
        for index in range(0, len(answers), 2):
            failures, last = answers[index]
            locked = answers[index + 1]
            wait = self._policy(keys[index // 2]).retry_after(
                failures=int(failures or 0),
                last_failure_at=float(last) if last is not None else None,
                locked_until=float(locked) if locked is not None else None,
                now=now,
            )
            longest = max(longest, wait or 0.0)
        if longest > 0:
            raise ResourceExhausted(
                "too many failed logins; wait before trying again",
                retry_after=round(longest, 3),
                reason="LOGIN_THROTTLED",
            )

    async def failed(self, keys: Sequence[str], now: float) -> None:
        """Count a failure against each subject; lock those that reach the limit."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hincrby(key, "failures", 1)
                    pipe.hset(key, "last", repr(now))
                    pipe.expire(key, self._policy(key).window_seconds, nx=True)
                answers = await pipe.execute()
            for index, key in enumerate(keys):
                policy = self._policy(key)
                if policy.locks(int(answers[index * 3])):
                    await self.redis.set(f"{key}:lock", repr(now + policy.lock_seconds), ex=policy.lock_seconds)
                    await self.redis.delete(key)
        except RedisError as exc:
            raise Unavailable("login is unavailable for a moment; try again") from exc

    async def succeeded(self, key: str) -> None:
        """Forget an account's failures after a successful login."""
        try:
            await self.redis.delete(key)
        except RedisError as exc:
            raise Unavailable("login is unavailable for a moment; try again") from exc
