"""The identity service's client for other services: how they verify callers.

Public keys are fetched from identity and kept in memory (refetched on an
unknown key id at most every few seconds); API key look-ups and roles are cached
in Redis for a minute, and identity forgets those entries when they change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import grpc
import jwt
import redis.asyncio as redis

from qrmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.auth import (
    ALGORITHM,
    CACHE_TTL,
    SERVICE_TOKEN_HEADER,
    ApiKeyInfo,
    Role,
    api_key_cache_key,
    cached_value,
    decode_api_key,
    encode_api_key,
    role_cache_key,
    secret_digest,
    service_token,
)
from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import Unavailable
from qrmesh.platform.server import Resources


class RemoteAccessBackend:
    """Asks the identity service, with public keys cached in memory and API keys and roles in Redis."""

    KEY_REFRESH_INTERVAL = 300.0
    UNKNOWN_KID_RETRY = 10.0

    def __init__(self, address: str, *, service: str, service_secret: str, client: redis.Redis | None) -> None:
        self.address = address
        self.service = service
        self.service_secret = service_secret
        self.redis = client
        self._channel: grpc.aio.Channel | None = None
        self._keys: dict[str, Any] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    def _stubs(self) -> tuple[Any, Any]:
        if not self.address:
            raise Unavailable("the identity service is not configured (QRMESH_IDENTITY_ADDR)", reason="NO_IDENTITY")
        if self._channel is None:
            self._channel = create_channel(self.address, default_deadline=3.0)
        return (
            identity_service_pb2_grpc.AuthServiceStub(self._channel),
            identity_service_pb2_grpc.AccessServiceStub(self._channel),
        )

    def _service_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SERVICE_TOKEN_HEADER, service_token(self.service_secret, self.service)),)

    def _due(self, refresh: bool) -> bool:
        age = time.monotonic() - self._fetched
        return not self._keys or age >= self.KEY_REFRESH_INTERVAL or (refresh and age >= self.UNKNOWN_KID_RETRY)

    async def public_keys(self, *, refresh: bool = False) -> Mapping[str, Any]:
        if not self._due(refresh):
            return self._keys
        async with self._lock:
            if self._due(refresh):
                auth, _ = self._stubs()
                try:
                    answer = await auth.GetJsonWebKeySet(
                        identity_service_pb2.GetJsonWebKeySetRequest(), metadata=self._service_metadata()
                    )
                except grpc.aio.AioRpcError as exc:
                    raise Unavailable(f"cannot reach the identity service: {exc.code().name}") from None
                self._keys = {
                    key.kid: jwt.PyJWK({"kty": key.kty, "crv": key.crv, "x": key.x}, algorithm=ALGORITHM).key
                    for key in answer.keys
                }
                self._fetched = time.monotonic()
        return self._keys

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        digest = secret_digest(secret)
        if self.redis is not None:
            cached = cached_value(await self.redis.get(api_key_cache_key(digest)))
            if cached is not None:
                return decode_api_key(cached)
        _, access = self._stubs()
        try:
            answer = await access.AuthenticateApiKey(
                identity_service_pb2.AuthenticateApiKeyRequest(secret=secret), metadata=self._service_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return None
            raise Unavailable(f"cannot reach the identity service: {exc.code().name}") from None
        info = ApiKeyInfo(
            name=answer.name,
            organization=answer.organization,
            scopes=frozenset(answer.scopes),
            expires_at=answer.expire_time.ToDatetime(UTC) if answer.HasField("expire_time") else None,
        )
        if self.redis is not None:
            await self.redis.set(api_key_cache_key(digest), encode_api_key(info), ex=CACHE_TTL, nx=True)
        return info

    async def role(self, organization: str, user: str) -> Role | None:
        if self.redis is not None:
            cached = cached_value(await self.redis.get(role_cache_key(organization, user)))
            if cached is not None:
                return None if cached == "-" else Role[cached]
        _, access = self._stubs()
        try:
            answer = await access.GetRole(
                identity_service_pb2.GetRoleRequest(organization=organization, user=user),
                metadata=self._service_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None  # not an organization name at all: nobody is a member of it
            raise Unavailable(f"cannot reach the identity service: {exc.code().name}") from None
        role = Role.from_proto(answer.role)
        if self.redis is not None:
            await self.redis.set(role_cache_key(organization, user), role.name if role else "-", ex=CACHE_TTL, nx=True)
        return role

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def remote_access(resources: Resources) -> RemoteAccessBackend:
    """The access backend of every service but identity."""
    settings = resources.settings
    return RemoteAccessBackend(
        settings.identity_address,
        service=settings.service,
        service_secret=settings.service_secret,
        client=resources.redis,
    )
