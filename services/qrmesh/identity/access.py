"""The access backend the shared auth interceptor uses inside the identity process: local calls, no network."""

from __future__ import annotations

from typing import Any

from qrmesh.billing.client import plans_for
from qrmesh.identity import names
from qrmesh.identity.config import IdentityConfig
from qrmesh.identity.service import Identity
from qrmesh.platform.auth import ApiKeyInfo, Role, forget_api_key, forget_role
from qrmesh.platform.errors import InvalidArgument
from qrmesh.platform.server import Resources


class LocalAccessBackend:
    """Answers the interceptor's questions (public keys, API keys, roles) straight from the identity store."""

    def __init__(self, resources: Resources, identity: Identity | None = None) -> None:
        self.identity = identity if identity is not None else identity_for(resources)

    async def public_keys(self, *, refresh: bool = False) -> dict[str, Any]:
        """{kid: Ed25519PublicKey} of every key whose tokens may still be valid (identity owns them;
        its key ring reloads on its own schedule, so `refresh` changes nothing here)."""
        return dict(await self.identity.public_keys())

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        """The key a secret belongs to, if active."""
        key = await self.identity.authenticate_api_key(secret)
        if key is None:
            return None
        return ApiKeyInfo(
            name=names.api_key_name(key.organization_id, key.id),
            organization=names.organization_name(key.organization_id),
            scopes=frozenset(key.scopes),
            expires_at=key.expires_at,
        )

    async def role(self, organization: str, user: str) -> Role | None:
        """A user's role in an organization (resource names), or None if not a member."""
        try:
            organization_id = names.organization_id(organization, field="organization")
            user_id = names.user_id(user, field="user")
        except InvalidArgument:
            return None
        role = await self.identity.role(organization_id, user_id)
        return None if role is None else Role[role.value]


_INSTANCES: dict[int, tuple[Resources, Identity]] = {}


def identity_for(resources: Resources) -> Identity:
    """The process's one `Identity` for `resources`, shared by the servicers and the access backend."""
    found = _INSTANCES.get(id(resources))
    if found is not None and found[0] is resources:
        return found[1]
    if resources.engine is None or resources.redis is None:
        raise RuntimeError("the identity service needs its database and Redis")
    client = resources.redis

    async def forget_key(secret_sha256: str) -> None:
        await forget_api_key(client, secret_sha256)

    async def forget_member(organization: str, user: str) -> None:
        await forget_role(client, organization, user)

    identity = Identity(
        resources.engine,
        client,
        IdentityConfig.from_settings(resources.settings),
        forget_api_key=forget_key,
        forget_role=forget_member,
        plans=plans_for(resources),
    )
    _INSTANCES[id(resources)] = (resources, identity)

    async def release() -> None:
        _INSTANCES.pop(id(resources), None)

    resources.on_close.append(release)
    return identity
