"""Resource names of the billing service (`plans/{plan}`, `organizations/{id}/subscription`) to ids and back."""

from __future__ import annotations

import re

from qrmesh.platform.errors import InvalidArgument

_ORGANIZATION = re.compile(r"organizations/([a-z2-7]{16})")
_SUBSCRIPTION = re.compile(r"organizations/([a-z2-7]{16})/subscription")
_PLAN = re.compile(r"plans/([a-z][a-z0-9-]{0,39})")


def organization_id(name: str, *, field: str) -> str:
    """The id in `organizations/{id}`."""
    match = _ORGANIZATION.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}", reason="INVALID_NAME"
        )
    return match.group(1)


def subscription_organization(name: str, *, field: str) -> str:
    """The organization id in `organizations/{id}/subscription`."""
    match = _SUBSCRIPTION.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/subscription", reason="INVALID_NAME"
        )
    return match.group(1)


def plan_id(name: str, *, field: str) -> str:
    """The id in `plans/{plan}`."""
    match = _PLAN.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(field, "must be a plan name like plans/pro", reason="INVALID_NAME")
    return match.group(1)


def organization_name(organization: str) -> str:
    """`organizations/{id}`."""
    return f"organizations/{organization}"


def subscription_name(organization: str) -> str:
    """`organizations/{id}/subscription`."""
    return f"organizations/{organization}/subscription"


def plan_name(plan: str) -> str:
    """`plans/{id}`."""
    return f"plans/{plan}"
