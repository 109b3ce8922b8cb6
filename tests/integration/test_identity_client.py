"""Identity's client, as every other service uses it: keys, API keys and roles, cached and forgotten."""

from __future__ import annotations

import grpc
import redis.asyncio as redis

from qrmesh.identity.client import RemoteAccessBackend
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.auth import Role, api_key_cache_key, encode_api_key, role_cache_key, secret_digest
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from tests.integration.billing_helpers import subscribe
from tests.integration.identity_helpers import sign_up


async def test_revocations_reach_other_services_despite_a_racing_lookup(
    identity_server: Server, billing_server: Server, base_settings: Settings
) -> None:
    client = redis.from_url(base_settings.redis_url)
    backend = RemoteAccessBackend(
        f"127.0.0.1:{identity_server.port}", service="qr", service_secret=base_settings.service_secret, client=client
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
            owner = await sign_up(channel, "cache")
            await subscribe(billing_server, owner, "pro")  # API keys are a Pro feature
            keys = identity_service_pb2_grpc.ApiKeyServiceStub(channel)
            created = await keys.CreateApiKey(
                identity_service_pb2.CreateApiKeyRequest(
                    parent=owner.organization, api_key=identity_pb2.ApiKey(display_name="k", scopes=["qr:read"])
                ),
                metadata=owner.metadata(),
            )
            info = await backend.authenticate_api_key(created.secret)
            assert info is not None
            assert info.organization == owner.organization
            assert await backend.role(owner.organization, owner.user) is Role.OWNER
            assert await client.get(role_cache_key(owner.organization, owner.user)) == b"OWNER"

            await keys.DeleteApiKey(
                identity_service_pb2.DeleteApiKeyRequest(name=created.api_key.name), metadata=owner.metadata()
            )
            # A look-up that started before the revoke tries to cache what it saw; it must not stick.
            digest = secret_digest(created.secret)
            assert not await client.set(api_key_cache_key(digest), encode_api_key(info), ex=60, nx=True)
            assert await backend.authenticate_api_key(created.secret) is None

            # Known public keys verify identity's tokens; the set comes from identity itself.
            published = await backend.public_keys()
            assert published
    finally:
        await backend.close()
        await client.aclose()
