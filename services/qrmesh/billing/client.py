"""The billing service's client for other services: every entitlement check goes through here.

`plans_for(resources)` gives a service its `Plans`: one GetEntitlements answer
per organization, kept in process for a few seconds and in Redis for a minute.
Billing forgets the Redis entry (a tombstone: readers cache with SET NX, so a
racing look-up cannot restore the old plan) and announces the organization on a
channel that drops the in-process copy, so a plan change shows at once.

A refusal is never made on a cached answer: `require_feature` and
`require_room` ask billing again before refusing, so an upgrade takes effect
on the very next call; a downgrade shows within the announcement's delay (at
most the in-process TTL while announcements are down).

While billing cannot be reached, the last answer billing gave for an
organization keeps serving for up to an hour (stale-if-error, STALE_IF_ERROR):
a billing outage does not turn every API-key call and code creation into
UNAVAILABLE once the caches expire. Stale answers only ever let a call through;
a refusal still needs a fresh answer (UNAVAILABLE without one). An announced
change of the organization drops its stale answer too.

Without QRMESH_<SERVICE>_BILLING_ADDR, every check fails with UNAVAILABLE
(BILLING_NOT_CONFIGURED): a deployment that forgot billing refuses what needs a
plan instead of silently granting everything. Tests of a single class pass
`FixedPlans`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
import redis.asyncio as redis
from redis.exceptions import RedisError

from qrmesh.billing import convert, signals
from qrmesh.billing.domain.entitlements import (
    API_ACCESS,
    API_BURST,
    API_RATE_PER_SECOND,
    EntitlementSet,
    feature_not_in_plan,
    limit_reached,
)
from qrmesh.billing.v1 import billing_pb2, billing_service_pb2, billing_service_pb2_grpc
from qrmesh.platform import tasks
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, AccessBackend, ApiKeyInfo, Principal, Role, service_token
from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import Unavailable
from qrmesh.platform.ratelimit import Rate, RatePolicy, SettingsRatePolicy
from qrmesh.platform.server import Resources

log = logging.getLogger("qrmesh.billing.client")

TRUSTED_TTL = 5.0
"""Seconds an in-process entry is used while announcements arrive (they drop it sooner)."""
UNTRUSTED_TTL = 1.0
"""Seconds an in-process entry is used while announcements cannot arrive."""
STALE_IF_ERROR = 3600.0
"""Seconds the last answer billing gave is used while billing cannot be reached."""
REDIS_TIMEOUT = 0.25
POLICY_TIMEOUT = 0.5
"""Seconds the rate policy waits for an organization's plan before using the default rates."""


class Plans(Protocol):
    """Where enforcement sites learn what an organization's plan allows."""

    async def entitlements(self, organization: str, *, fresh: bool = False) -> EntitlementSet:
        """The entitlements of `organizations/{id}`; `fresh` skips every cache (before refusing)."""
        ...


async def require_feature(plans: Plans, organization: str, name: str) -> EntitlementSet:
    """PERMISSION_DENIED (FEATURE_NOT_IN_PLAN) unless the plan has feature `name` (confirmed uncached)."""
    found = await plans.entitlements(organization)
    if found.has(name):
        return found
    found = await plans.entitlements(organization, fresh=True)
    if not found.has(name):
        raise feature_not_in_plan(name, found.plan)
    return found


async def require_room(plans: Plans, organization: str, name: str, *, usage: int, requested: int = 1) -> None:
    """RESOURCE_EXHAUSTED (PLAN_LIMIT_REACHED, metadata: limit, usage, plan) unless `requested` more of `name`
    fits on top of `usage` (confirmed uncached)."""
    if (await plans.entitlements(organization)).check(name, usage=usage, requested=requested).allowed:
        return
    found = await plans.entitlements(organization, fresh=True)
    outcome = found.check(name, usage=usage, requested=requested)
    if not outcome.allowed:
        raise limit_reached(name, found.plan, limit=outcome.limit or 0, usage=usage)


class FixedPlans:
    """Every organization on one set of entitlements: for tests of a single class, never a deployment."""

    def __init__(self, entitlements: EntitlementSet) -> None:
        self.fixed = entitlements

    async def entitlements(self, organization: str, *, fresh: bool = False) -> EntitlementSet:
        return self.fixed


class UnconfiguredPlans:
    """A service started without a billing address: every check is UNAVAILABLE, nothing is granted."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    async def entitlements(self, organization: str, *, fresh: bool = False) -> EntitlementSet:
        raise Unavailable(
            f"the billing service is not configured ({self.variable}), so plan limits cannot be checked",
            reason="BILLING_NOT_CONFIGURED",
        )


class BillingClient:
    """Asks the billing service, with answers cached in process and in Redis."""

    def __init__(
        self,
        address: str,
        *,
        service: str,
        service_secret: str,
        client: redis.Redis | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.service = service
        self.service_secret = service_secret
        self.redis = client
        self.clock = clock
        self._entries: dict[str, tuple[EntitlementSet, float]] = {}
        self._last_known: dict[str, tuple[EntitlementSet, float]] = {}
        """organization -> (the last answer billing gave, when it stops serving while billing is away)."""
        self._inflight: dict[str, asyncio.Future[EntitlementSet]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: billing_service_pb2_grpc.EntitlementServiceAsyncStub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = False
        self._closing = False
        self._epoch = 0

    async def entitlements(self, organization: str, *, fresh: bool = False) -> EntitlementSet:
        if not fresh:
            entry = self._entries.get(organization)
            if entry is not None and entry[1] > self.clock():
                return entry[0]
            pending = self._inflight.get(organization)
            if pending is not None:
                return await asyncio.shield(pending)
        future: asyncio.Future[EntitlementSet] = asyncio.get_running_loop().create_future()
        if not fresh:
            self._inflight[organization] = future
        try:
            try:
                found = await self._load(organization, fresh=fresh)
            except Unavailable:
                stale = None if fresh else self._stale(organization)
                if stale is None:
                    raise
                found = stale
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(found)
            return found
        finally:
            if not fresh:
                self._inflight.pop(organization, None)

    def _stale(self, organization: str) -> EntitlementSet | None:
        """The last answer billing gave for `organization`, while it may still serve (billing is away)."""
        known = self._last_known.get(organization)
        if known is None or known[1] <= self.clock():
            return None
        log.warning("billing unavailable: serving the last known entitlements", extra={"organization": organization})
        return known[0]

    async def _load(self, organization: str, *, fresh: bool) -> EntitlementSet:
        epoch = self._epoch
        found = None if fresh else await self._from_redis(organization)
        if found is None:
            answer = await self._from_service(organization)
            found = convert.entitlements_from_proto(answer)
            await self._to_redis(organization, answer)
        now = self.clock()
        ttl = TRUSTED_TTL if self._subscribed and self._epoch == epoch else UNTRUSTED_TTL
        self._entries[organization] = (found, now + ttl)
        if self._epoch == epoch:  # no change of any organization announced meanwhile
            self._last_known[organization] = (found, now + STALE_IF_ERROR)
        for entries in (self._entries, self._last_known):
            if len(entries) > 50_000:
                entries.clear()
        return found

    async def _from_redis(self, organization: str) -> EntitlementSet | None:
        if self.redis is None:
            return None
        try:
            raw = await asyncio.wait_for(self.redis.get(signals.entitlements_key(organization)), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("redis entitlements lookup failed", extra={"error": repr(exc)})
            return None
        if not isinstance(raw, bytes) or raw == signals.TOMBSTONE.encode():
            return None
        try:
            return convert.entitlements_from_proto(billing_pb2.OrganizationEntitlements.FromString(raw))
        except ValueError:
            return None

    async def _to_redis(self, organization: str, answer: billing_pb2.OrganizationEntitlements) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(
                self.redis.set(
                    signals.entitlements_key(organization),
                    answer.SerializeToString(deterministic=True),
                    ex=signals.ENTITLEMENTS_TTL,
                    nx=True,
                ),
                REDIS_TIMEOUT,
            )

    async def _from_service(self, organization: str) -> billing_pb2.OrganizationEntitlements:
        if self._stub is None:
            self._channel = create_channel(self.address, default_deadline=3.0)
            self._stub = billing_service_pb2_grpc.EntitlementServiceStub(self._channel)
        metadata = ((SERVICE_TOKEN_HEADER, service_token(self.service_secret, self.service)),)
        try:
            answer: billing_pb2.OrganizationEntitlements = await self._stub.GetEntitlements(
                billing_service_pb2.GetEntitlementsRequest(organization=organization), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"cannot reach the billing service to check the plan: {exc.code().name}; try again",
                reason="BILLING_UNAVAILABLE",
            ) from None
        return answer

    # -- announcements ----------------------------------------------------------------------

    def forget(self, organization: str) -> None:
        self._epoch += 1
        self._entries.pop(organization, None)
        self._last_known.pop(organization, None)

    async def start(self) -> None:
        """Listen for plan changes (retrying in the background while Redis is away)."""
        if self.redis is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="billing-changes")

    async def _listen(self) -> None:
        while self.redis is not None and not self._closing:
            pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(signals.CHANGED_CHANNEL)
                self._epoch += 1
                self._entries.clear()  # changes announced while away are lost: start from nothing
                self._subscribed = True
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.forget(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:  # noqa: BLE001 - whatever broke the subscription: distrust, retry
                if self._subscribed:
                    log.warning("plan change announcements lost", extra={"error": repr(exc)})
                self._subscribed = False
                self._entries.clear()
                await asyncio.sleep(1.0)
            finally:
                self._subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            await tasks.stop(self._listener)
        if self._channel is not None:
            await self._channel.close()


_INSTANCES: dict[int, tuple[Resources, Plans]] = {}


def plans_for(resources: Resources) -> Plans:
    """The process's one `Plans` (from QRMESH_<SERVICE>_BILLING_ADDR), started and stopped with the server."""
    found = _INSTANCES.get(id(resources))
    if found is not None and found[0] is resources:
        return found[1]
    settings = resources.settings
    address = settings.extra.get("BILLING_ADDR", "").strip()
    plans: Plans
    if not address:
        variable = f"QRMESH_{settings.service.upper()}_BILLING_ADDR"
        log.warning("no billing service configured: plan checks will fail", extra={"variable": variable})
        plans = UnconfiguredPlans(variable)
    else:
        client = BillingClient(
            address, service=settings.service, service_secret=settings.service_secret, client=resources.redis
        )
        resources.on_start.append(client.start)
        resources.on_close.append(client.close)
        plans = client
    _INSTANCES[id(resources)] = (resources, plans)

    async def release() -> None:
        _INSTANCES.pop(id(resources), None)

    resources.on_close.append(release)
    return plans


class PlanGatedAccess:
    """An access backend that refuses API keys of organizations whose plan lacks `api_access`
    (PERMISSION_DENIED, FEATURE_NOT_IN_PLAN): keys stop working when a plan loses the API. While billing is
    away, the organization's last known plan lets its keys through (stale-if-error, `STALE_IF_ERROR`)."""

    def __init__(self, inner: AccessBackend, plans: Plans) -> None:
        self.inner = inner
        self.plans = plans

    async def public_keys(self, *, refresh: bool = False) -> Mapping[str, Any]:
        return await self.inner.public_keys(refresh=refresh)

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        info = await self.inner.authenticate_api_key(secret)
        if info is not None:
            await require_feature(self.plans, info.organization, API_ACCESS)
        return info

    async def role(self, organization: str, user: str) -> Role | None:
        return await self.inner.role(organization, user)

    async def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            await closer()


def plan_gated(inner: AccessBackend, resources: Resources) -> PlanGatedAccess:
    """`inner`, refusing API keys of plans without API access."""
    return PlanGatedAccess(inner, plans_for(resources))


class PlanRatePolicy:
    """Request rates by plan (`api_rate_per_second`, `api_burst`) for the shared rate limiter. Calls outside
    an organization, plans without a bound and moments when billing cannot answer get `fallback`'s rates
    (the settings'), never none."""

    def __init__(self, plans: Plans, fallback: RatePolicy) -> None:
        self.plans = plans
        self.fallback = fallback

    async def rate_for(self, principal: Principal, organization: str | None) -> Rate | None:
        scope = principal.organization or organization
        if scope:
            try:
                # A slow billing service must not slow every call: the look-up goes on (and fills the
                # cache) while this call gets the default rates.
                found = await asyncio.wait_for(asyncio.shield(self.plans.entitlements(scope)), POLICY_TIMEOUT)
            except (Unavailable, TimeoutError):
                found = None
            if found is not None:
                per_second, burst = found.limit(API_RATE_PER_SECOND), found.limit(API_BURST)
                if per_second and burst:
                    return Rate(per_second=float(per_second), burst=int(burst))
        return await self.fallback.rate_for(principal, organization)


def plan_rates(resources: Resources) -> PlanRatePolicy:
    """The rate policy of a service whose callers' rates follow their organization's plan."""
    return PlanRatePolicy(plans_for(resources), SettingsRatePolicy.from_settings(resources.settings))
