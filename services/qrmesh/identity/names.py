"""Resource names (`organizations/{id}/apiKeys/{id}`) to ids and back."""

from __future__ import annotations

import re

from qrmesh.identity.domain.tokens import is_id
from qrmesh.platform.errors import InvalidArgument

_SEGMENT = r"([a-z2-7]{16})"


def parse(name: str, pattern: str, *, field: str) -> tuple[str, ...]:
    """The ids in `name`, which must match `pattern` (collection names with `{}` for ids)."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", _SEGMENT))
    match = regex.fullmatch(name)
    if match is None or not all(is_id(part) for part in match.groups()):
        example = pattern.replace("{}", "{id}")
        raise InvalidArgument.field(field, f"must be a resource name like {example}", reason="INVALID_NAME")
    return match.groups()


def user_id(name: str, *, field: str) -> str:
    """The id in `users/{id}`."""
    return parse(name, "users/{}", field=field)[0]


def organization_id(name: str, *, field: str) -> str:
    """The id in `organizations/{id}`."""
    return parse(name, "organizations/{}", field=field)[0]


def user_name(user: str) -> str:
    """`users/{id}`."""
    return f"users/{user}"


def organization_name(organization: str) -> str:
    """`organizations/{id}`."""
    return f"organizations/{organization}"


def member_name(organization: str, user: str) -> str:
    """`organizations/{id}/members/{user id}`."""
    return f"organizations/{organization}/members/{user}"


def invitation_name(organization: str, invitation: str) -> str:
    """`organizations/{id}/invitations/{id}`."""
    return f"organizations/{organization}/invitations/{invitation}"


def api_key_name(organization: str, key: str) -> str:
    """`organizations/{id}/apiKeys/{id}`."""
    return f"organizations/{organization}/apiKeys/{key}"
