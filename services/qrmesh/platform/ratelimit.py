"""Rate limits per API key, per user (and organization) and per client address: GCRA in Redis.

Every call that the `Guard` admits is charged once (streams once, at their first
message) right after the caller is known:

- an API key: one bucket per key; a user: one bucket per user and organization
  (calls naming no organization share the user's own bucket). Their rates come
  from the service's `RatePolicy` (plans plug in here; without one, settings);
- nobody signed in (public RPCs): one bucket per client address (IPv6 per /64),
  at the anonymous rate from settings. Behind the edge the address is the
  `x-qrmesh-client-ip` header Envoy sets from the connection and its trusted
  X-Forwarded-For hops (any value a client sends is overwritten); the header is
  believed only from a private or loopback peer, as the redirect does;
- other services (a valid service token) are never limited, nor are health
  checks and reflection (the guard does not guard them).

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp): each request moves the bucket's "theoretical arrival time" (TAT)
one emission interval (1 / rate) ahead; a request is refused while the TAT would
run more than `burst` intervals ahead of now. One Lua script reads and writes the
TAT atomically (EVALSHA, loading the script when Redis lacks it), on Redis's own
clock unless a caller passes `now`; the key expires once the bucket is full again,
so it never outlives the burst window. `decide` is the same arithmetic in Python.

Over the limit a call fails with RESOURCE_EXHAUSTED, ErrorInfo reason
`RATE_LIMITED` (metadata: limit, per_second, retry_after_seconds, key_kind), a
`google.rpc.RetryInfo` and a `retry-after` header (whole seconds, at least 1); the
edge turns it into HTTP 429 with `Retry-After`. Calls that pass carry
`x-ratelimit-limit` and `x-ratelimit-remaining` headers.

The limiter fails open: when Redis cannot answer within `timeout` (or the policy
fails), the call is allowed, a warning is logged (at most every few seconds) and
`qrmesh_rate_limiter_failures_total` counts it; Redis is then left alone for a
second. Rate limiting protects the API; it must not take it down.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import grpc
import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import NoScriptError

from qrmesh.platform.auth import (
    SERVICE_TOKEN_HEADER,
    Principal,
    PrincipalKind,
    optional_principal,
    verify_service_token,
)
from qrmesh.platform.errors import ResourceExhausted
from qrmesh.platform.metrics import REGISTRY
from qrmesh.platform.settings import Settings

log = logging.getLogger("qrmesh.ratelimit")

CLIENT_IP_HEADER = "x-qrmesh-client-ip"
"""The caller's address as the edge saw it (set by Envoy, never by clients)."""
RETRY_AFTER_HEADER = "retry-after"
LIMIT_HEADER = "x-ratelimit-limit"
REMAINING_HEADER = "x-ratelimit-remaining"
KEY_PREFIX = "qrmesh:ratelimit:"
MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate with a burst: `burst` calls at once, then `per_second` calls a second."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError(f"a rate needs per_second > 0, got {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"a rate needs burst >= 1, got {self.burst}")

    @property
    def interval(self) -> int:
        """Microseconds between two calls at the sustained rate (the GCRA emission interval)."""
        return max(1, round(MICROS / self.per_second))


class RatePolicy(Protocol):
    """Which rate applies to a caller (a user or an API key) in an organization."""

    async def rate_for(self, principal: Principal, organization: str | None) -> Rate | None:
        """The caller's rate; None: unlimited."""
        ...


def rate_or_none(per_second: float, burst: int) -> Rate | None:
    """A rate from settings; 0 per second means unlimited."""
    return Rate(per_second, burst) if per_second > 0 else None


class SettingsRatePolicy:
    """One rate for every user and one for every API key (QRMESH_RATE_USER_* / QRMESH_RATE_API_KEY_*)."""

    def __init__(self, *, user: Rate | None, api_key: Rate | None) -> None:
        self.user = user
        self.api_key = api_key

    @classmethod
    def from_settings(cls, settings: Settings) -> SettingsRatePolicy:
        return cls(
            user=rate_or_none(settings.rate_user_per_second, settings.rate_user_burst),
            api_key=rate_or_none(settings.rate_api_key_per_second, settings.rate_api_key_burst),
        )

    async def rate_for(self, principal: Principal, organization: str | None) -> Rate | None:
        return self.api_key if principal.kind is PrincipalKind.API_KEY else self.user


class KeyKind(enum.StrEnum):
    """Who a bucket belongs to."""

    API_KEY = "api_key"
    USER = "user"
    ADDRESS = "address"


# -- the arithmetic --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One call's verdict. Times are in microseconds."""

    allowed: bool
    remaining: int
    """Calls that could still be made right now."""
    retry_after: int
    """How long until this call would be allowed (0 when it is)."""
    reset_after: int
    """How long until the bucket is full again."""
    tat: int | None = None
    """The theoretical arrival time to store (None: nothing changes, as for a refused call)."""

    @property
    def retry_after_seconds(self) -> int:
        """`retry_after` as the whole seconds of a Retry-After header (at least 1)."""
        return max(1, math.ceil(self.retry_after / MICROS))


def decide(rate: Rate, tat: int | None, now: int) -> Decision:
    """GCRA for one call at `now` on a bucket whose stored TAT is `tat` (None: a fresh bucket).

    Mirrors `SCRIPT` exactly. A TAT further ahead than this rate's whole burst window (left by a
    stricter rate before a plan change) is brought back to an empty bucket of this rate, and stored
    so, rather than making the caller wait out the old rate's window.
    """
    interval = rate.interval
    window = rate.burst * interval
    clamped = tat is not None and tat > now + window
    current = now if tat is None else min(max(tat, now), now + window)
    new_tat = current + interval
    allow_at = new_tat - window
    if allow_at > now:
        return Decision(False, 0, allow_at - now, current - now, current if clamped else None)
    return Decision(True, (now - allow_at) // interval, 0, new_tat - now, new_tat)


SCRIPT = """
-- GCRA: KEYS[1] the bucket; ARGV: emission interval (us), burst, now (us; empty: the server's clock).
-- Answers {allowed, remaining, retry_after_us, reset_after_us}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local window = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if tat > now + window then
  -- left by a stricter rate: an empty bucket of this one
  tat = now + window
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil(window / 1000))
end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
"""What EVALSHA names the script by."""


# -- who the caller is -----------------------------------------------------------------------------

_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _peer_address(peer: str) -> str:
    """The IP in a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`); other peers (unix sockets) as given."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]")
    return peer


@lru_cache(maxsize=4096)
def _trusted(peer: str) -> bool:
    """Whether a peer may tell us the client's address: loopback, private networks, unix sockets."""
    if peer.startswith("unix:"):
        return True
    try:
        address = ipaddress.ip_address(_peer_address(peer))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _PRIVATE)


def client_address(peer: str, forwarded: str | None) -> str:
    """The client's address: what the edge says (`x-qrmesh-client-ip`) when the peer is trusted, else the peer."""
    if forwarded and _trusted(peer):
        return forwarded.strip()[:64]
    return _peer_address(peer)


@lru_cache(maxsize=4096)
def address_bucket(address: str) -> str:
    """The unit an address is limited as: an IPv4 address, or an IPv6 /64 (one subscriber)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def bucket_key(kind: KeyKind, identity: str, *, prefix: str = KEY_PREFIX) -> str:
    """The Redis key of a bucket, e.g. `qrmesh:ratelimit:user:users/u:organizations/o`."""
    return f"{prefix}{kind.value}:{identity}"


def user_identity(user: str) -> str:
    """A user's bucket identity: the user, whatever organization a call names. The rate comes from
    the organization of the call, but the bucket is one, so creating organizations does not
    multiply what a person may send."""
    return user


# -- metrics ---------------------------------------------------------------------------------------

LIMITED = Counter(
    "qrmesh_rate_limited",
    "Calls refused with RATE_LIMITED, by gRPC service and key kind (api_key, user, address).",
    ["grpc_service", "key_kind"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "qrmesh_rate_limiter_failures",
    "Calls let through unchecked because the limiter could not decide (cause: redis, policy).",
    ["grpc_service", "cause"],
    registry=REGISTRY,
)


# -- the limiter -----------------------------------------------------------------------------------


class RateLimited(ResourceExhausted):
    """The caller's bucket is empty."""

    def __init__(self, kind: KeyKind, rate: Rate, decision: Decision) -> None:
        seconds = decision.retry_after_seconds
        who = {KeyKind.API_KEY: "this API key", KeyKind.USER: "you", KeyKind.ADDRESS: "your address"}[kind]
        super().__init__(
            f"too many requests from {who}: {rate.burst} at once, then {rate.per_second:g} per second;"
            f" retry in {seconds} s",
            retry_after=decision.retry_after / MICROS,
            reason="RATE_LIMITED",
            metadata={
                "limit": str(rate.burst),
                "per_second": f"{rate.per_second:g}",
                "retry_after_seconds": str(seconds),
                "key_kind": kind.value,
            },
        )
        self.headers: tuple[tuple[str, str], ...] = (
            (RETRY_AFTER_HEADER, str(seconds)),
            (LIMIT_HEADER, str(rate.burst)),
            (REMAINING_HEADER, "0"),
        )


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call that was charged: what its response headers report."""

    rate: Rate
    decision: Decision

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return ((LIMIT_HEADER, str(self.rate.burst)), (REMAINING_HEADER, str(self.decision.remaining)))


_LOG_EVERY = 10.0
"""Seconds between two warnings about the limiter failing open."""
_BACKOFF = 1.0
"""Seconds Redis is left alone after it failed to answer."""


class RateLimiter:
    """Charges each admitted call to its caller's bucket; raises `RateLimited` when it is empty."""

    def __init__(
        self,
        *,
        policy: RatePolicy,
        anonymous: Rate | None,
        client: redis.Redis | None,
        service_secret: str,
        timeout: float = 0.2,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.policy = policy
        self.anonymous = anonymous
        self.service_secret = service_secret
        self.timeout = timeout
        self.prefix = prefix
        self.clock: Callable[[], int] | None = None
        """Microseconds now, for tests; None: Redis's own clock (the same for every replica)."""
        self.backoff = _BACKOFF
        """Seconds Redis is left alone after it failed to answer."""
        self._client = client
        self._resume_at = 0.0
        self._warned_at = -_LOG_EVERY

    @property
    def client(self) -> redis.Redis | None:
        """The Redis the buckets live in; None turns the limiter off."""
        return self._client

    @client.setter
    def client(self, client: redis.Redis | None) -> None:
        self._client = client
        self._resume_at = 0.0

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Admitted | None:
        """Charge this call (the guard has set its principal); None when it is not limited."""
        if self._client is None or time.monotonic() < self._resume_at:
            return None
        principal = optional_principal()
        if principal is not None and principal.kind is PrincipalKind.SERVICE:
            return None
        metadata = _metadata(context, (SERVICE_TOKEN_HEADER, CLIENT_IP_HEADER))
        token = metadata.get(SERVICE_TOKEN_HEADER)
        if token and verify_service_token(self.service_secret, token) is not None:
            return None  # another service calling a public RPC
        service = method.lstrip("/").partition("/")[0]
        if principal is None:
            kind, rate = KeyKind.ADDRESS, self.anonymous
            identity = address_bucket(client_address(context.peer() or "", metadata.get(CLIENT_IP_HEADER)))
        else:
            if principal.kind is PrincipalKind.API_KEY:
                kind, identity = KeyKind.API_KEY, principal.api_key or ""
            else:
                kind, identity = KeyKind.USER, user_identity(principal.user or "")
            try:
                rate = await self.policy.rate_for(principal, principal.organization)
            except Exception:  # noqa: BLE001 - fail open: a broken policy must not refuse every call
                self._failed(service, "policy")
                return None
        if rate is None:
            return None
        decision = await self.charge(bucket_key(kind, identity, prefix=self.prefix), rate, service=service)
        if decision is None:
            return None
        if not decision.allowed:
            LIMITED.labels(service, kind.value).inc()
            raise RateLimited(kind, rate, decision)
        return Admitted(rate, decision)

    async def admit_failed_credentials(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Charge a call whose credentials were refused to its address's bucket, so guessing tokens or
        API keys is as limited as any anonymous call; raises `RateLimited` once the bucket is empty."""
        if self._client is None or self.anonymous is None or time.monotonic() < self._resume_at:
            return
        service = method.lstrip("/").partition("/")[0]
        metadata = _metadata(context, (CLIENT_IP_HEADER,))
        identity = address_bucket(client_address(context.peer() or "", metadata.get(CLIENT_IP_HEADER)))
        decision = await self.charge(bucket_key(KeyKind.ADDRESS, identity, prefix=self.prefix), self.anonymous)
        if decision is not None and not decision.allowed:
            LIMITED.labels(service, KeyKind.ADDRESS.value).inc()
            raise RateLimited(KeyKind.ADDRESS, self.anonymous, decision)

    async def charge(self, key: str, rate: Rate, *, service: str = "") -> Decision | None:
        """Run the script for one call on `key`; None when Redis could not answer (fail open)."""
        client = self._client
        if client is None or time.monotonic() < self._resume_at:
            return None
        now = "" if self.clock is None else str(self.clock())
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await client.evalsha(SCRIPT_SHA, 1, key, rate.interval, rate.burst, now)
                except NoScriptError:  # a restarted or flushed Redis: load it once, go on with EVALSHA
                    await client.script_load(SCRIPT)
                    reply = await client.evalsha(SCRIPT_SHA, 1, key, rate.interval, rate.burst, now)
        except Exception:  # noqa: BLE001 - fail open on any Redis trouble (refused, timeout, OOM, ...)
            self._resume_at = time.monotonic() + self.backoff
            self._failed(service, "redis")
            return None
        allowed, remaining, retry_after, reset_after = (int(value) for value in reply)
        return Decision(bool(allowed), remaining, retry_after, reset_after)

    def _failed(self, service: str, cause: str) -> None:
        FAILURES.labels(service, cause).inc()
        now = time.monotonic()
        if now - self._warned_at >= _LOG_EVERY:
            self._warned_at = now
            log.warning("rate limiter failing open (%s); calls are not limited", cause, exc_info=True)


def _metadata(context: grpc.aio.ServicerContext[Any, Any], names: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in names and isinstance(value, str):
            found[key] = value
    return found


def limiter_for(settings: Settings, client: redis.Redis | None, policy: RatePolicy | None = None) -> RateLimiter:
    """A limiter with the settings' rates (or `policy` for users and API keys)."""
    return RateLimiter(
        policy=policy or SettingsRatePolicy.from_settings(settings),
        anonymous=rate_or_none(settings.rate_anonymous_per_second, settings.rate_anonymous_burst),
        client=client,
        service_secret=settings.service_secret,
        timeout=settings.rate_timeout,
    )


__all__ = [
    "CLIENT_IP_HEADER",
    "Admitted",
    "Decision",
    "KeyKind",
    "Rate",
    "RateLimited",
    "RateLimiter",
    "RatePolicy",
    "SettingsRatePolicy",
    "address_bucket",
    "bucket_key",
    "client_address",
    "decide",
    "limiter_for",
    "rate_or_none",
    "user_identity",
]
