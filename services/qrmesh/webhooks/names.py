"""Resource names of the webhooks service to ids and back."""

from __future__ import annotations

import re

from qrmesh.platform.errors import InvalidArgument

_ORGANIZATION = re.compile(r"organizations/([a-z2-7]{16})")
_WEBHOOK = re.compile(r"organizations/([a-z2-7]{16})/webhooks/([a-z2-7]{16})")
_DELIVERY = re.compile(
    r"organizations/([a-z2-7]{16})/webhooks/([a-z2-7]{16})/deliveries/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)


def organization_id(name: str, *, field: str) -> str:
    """The id in `organizations/{id}`."""
    match = _ORGANIZATION.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}", reason="INVALID_NAME"
        )
    return match.group(1)


def webhook_ids(name: str, *, field: str) -> tuple[str, str]:
    """(organization, webhook) in `organizations/{org}/webhooks/{webhook}`."""
    match = _WEBHOOK.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/webhooks/{webhook}", reason="INVALID_NAME"
        )
    return match.group(1), match.group(2)


def delivery_ids(name: str, *, field: str) -> tuple[str, str, str]:
    """(organization, webhook, delivery) in `organizations/{org}/webhooks/{webhook}/deliveries/{delivery}`."""
    match = _DELIVERY.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field,
            "must be a resource name like organizations/{organization}/webhooks/{webhook}/deliveries/{delivery}",
            reason="INVALID_NAME",
        )
    return match.group(1), match.group(2), match.group(3)


def organization_name(organization: str) -> str:
    """`organizations/{id}`."""
    return f"organizations/{organization}"


def webhook_name(organization: str, webhook: str) -> str:
    """`organizations/{org}/webhooks/{webhook}`."""
    return f"organizations/{organization}/webhooks/{webhook}"


def delivery_name(organization: str, webhook: str, delivery: str) -> str:
    """`organizations/{org}/webhooks/{webhook}/deliveries/{delivery}`."""
    return f"organizations/{organization}/webhooks/{webhook}/deliveries/{delivery}"
