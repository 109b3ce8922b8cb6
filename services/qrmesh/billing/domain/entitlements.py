"""Entitlements: the named limits and features of a plan, and the checks every service makes with them.

A check names its entitlement (`DYNAMIC_CODES`, `RULES_PASSWORD`, ...); the plan
data decides the value. A name the plan does not carry is neither granted nor
unlimited: an unknown entitlement refuses (fail closed).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qrmesh.platform.errors import PermissionDenied, ResourceExhausted

DYNAMIC_CODES = "dynamic_codes"
ANALYTICS_RETENTION_DAYS = "analytics_retention_days"
DESIGN_FULL = "design.full"
RULES_PASSWORD = "rules.password"  # noqa: S105 - an entitlement name, not a secret
RULES_SCHEDULE = "rules.schedule"
BULK_ROWS = "bulk_rows"
API_ACCESS = "api_access"
TEAM_MEMBERS = "team_members"
WEBHOOKS = "webhooks"
CUSTOM_DOMAINS = "custom_domains"
WHITE_LABEL = "white_label"
SSO = "sso"
API_RATE_PER_SECOND = "api_rate_per_second"
API_BURST = "api_burst"

FREE_PLAN = "free"
"""The plan of every organization without a (live) subscription."""

FEATURE_NOT_IN_PLAN = "FEATURE_NOT_IN_PLAN"
PLAN_LIMIT_REACHED = "PLAN_LIMIT_REACHED"


class Kind(enum.Enum):
    """Whether an entitlement is a yes/no feature or a bounded quantity."""

    FEATURE = "FEATURE"
    LIMIT = "LIMIT"


class Status(enum.Enum):
    """Where a subscription stands (`qrmesh.billing.v1.Subscription.Status`)."""

    TRIALING = "TRIALING"
    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    CANCELED = "CANCELED"
    SUSPENDED = "SUSPENDED"

    @property
    def lapsed(self) -> bool:
        """A lapsed subscription pauses its organization's dynamic codes and grants Free's entitlements."""
        return self in (Status.CANCELED, Status.SUSPENDED)


@dataclass(frozen=True, slots=True)
class Grant:
    """One entitlement of a plan. A FEATURE is `enabled` or not; a LIMIT allows at most `limit`
    (None: unlimited)."""

    name: str
    kind: Kind
    enabled: bool = False
    limit: int | None = 0
    description: str = ""

    @classmethod
    def feature(cls, name: str, enabled: bool, description: str = "") -> Grant:
        return cls(name=name, kind=Kind.FEATURE, enabled=enabled, limit=None, description=description)

    @classmethod
    def quantity(cls, name: str, limit: int | None, description: str = "") -> Grant:
        """A LIMIT; `limit` None means unlimited."""
        return cls(name=name, kind=Kind.LIMIT, enabled=True, limit=limit, description=description)


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of checking a use of an entitlement."""

    allowed: bool
    kind: Kind | None
    limit: int | None
    usage: int


@dataclass(frozen=True, slots=True)
class EntitlementSet:
    """Everything an organization may do now: its plan's grants (Free's while lapsed)."""

    organization: str
    plan: str
    """The plan id whose grants apply, e.g. "pro"."""
    grants: Mapping[str, Grant]
    status: Status = Status.ACTIVE
    lapsed: bool = False
    version: int = 0
    plan_display_name: str = ""

    @classmethod
    def of(
        cls,
        organization: str,
        plan: str,
        grants: Iterable[Grant],
        *,
        status: Status = Status.ACTIVE,
        lapsed: bool = False,
        version: int = 0,
        plan_display_name: str = "",
    ) -> EntitlementSet:
        return cls(
            organization=organization,
            plan=plan,
            grants={grant.name: grant for grant in grants},
            status=status,
            lapsed=lapsed,
            version=version,
            plan_display_name=plan_display_name,
        )

    def has(self, name: str) -> bool:
        """Whether the feature `name` is in the plan (False for a name the plan does not carry)."""
        grant = self.grants.get(name)
        return grant is not None and grant.kind is Kind.FEATURE and grant.enabled

    def limit(self, name: str) -> int | None:
        """The most the plan allows of `name`: None when unlimited, 0 for a name it does not carry."""
        grant = self.grants.get(name)
        if grant is None or grant.kind is not Kind.LIMIT:
            return 0
        return grant.limit

    def check(self, name: str, *, usage: int = 0, requested: int = 1) -> Check:
        """Whether `requested` more of `name` fits on top of `usage` (for a feature: whether it is in the plan)."""
        grant = self.grants.get(name)
        if grant is None:
            return Check(allowed=False, kind=None, limit=0, usage=usage)
        if grant.kind is Kind.FEATURE:
            return Check(allowed=grant.enabled, kind=Kind.FEATURE, limit=None, usage=usage)
        allowed = grant.limit is None or usage + requested <= grant.limit
        return Check(allowed=allowed, kind=Kind.LIMIT, limit=grant.limit, usage=usage)

    def require_feature(self, name: str) -> None:
        """PERMISSION_DENIED (FEATURE_NOT_IN_PLAN) unless the plan has the feature `name`."""
        if not self.has(name):
            raise feature_not_in_plan(name, self.plan)

    def require_room(self, name: str, *, usage: int, requested: int = 1) -> None:
        """RESOURCE_EXHAUSTED (PLAN_LIMIT_REACHED) unless `requested` more of `name` fits on top of `usage`."""
        outcome = self.check(name, usage=usage, requested=requested)
        if not outcome.allowed:
            raise limit_reached(name, self.plan, limit=outcome.limit or 0, usage=usage)


def feature_not_in_plan(name: str, plan: str) -> PermissionDenied:
    """The error for using a feature the plan lacks."""
    return PermissionDenied(
        f"the {plan} plan does not include {name}; upgrade to use it",
        reason=FEATURE_NOT_IN_PLAN,
        metadata={"entitlement": name, "plan": plan},
    )


def limit_reached(name: str, plan: str, *, limit: int, usage: int) -> ResourceExhausted:
    """The error for going over a limit of the plan: ErrorInfo metadata names the limit, the usage and the plan."""
    return ResourceExhausted(
        f"the {plan} plan allows {limit} {name.replace('_', ' ')}; {usage} in use. Upgrade or remove some first",
        reason=PLAN_LIMIT_REACHED,
        metadata={"entitlement": name, "limit": str(limit), "usage": str(usage), "plan": plan},
    )


@dataclass(frozen=True, slots=True)
class Overage:
    """A limit a plan change would leave the organization over."""

    name: str
    limit: int
    usage: int


def over_limits(target: Iterable[Grant], usage: Mapping[str, int]) -> list[Overage]:
    """The limits of `target` that `usage` exceeds, by name; every counted entitlement is compared.

    A counted entitlement that `target` does not carry as a limit counts as a limit of 0.
    """
    grants = {grant.name: grant for grant in target}
    over: list[Overage] = []
    for name in sorted(usage):
        used = usage[name]
        grant = grants.get(name)
        limit: int | None = 0 if grant is None or grant.kind is not Kind.LIMIT else grant.limit
        if limit is not None and used > limit:
            over.append(Overage(name=name, limit=limit, usage=used))
    return over
