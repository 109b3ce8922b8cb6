"""What the README promises a newcomer, with plain HTTP through Envoy: sign up,
create an organization, invite a second user, create an API key and call an
authenticated RPC with it; 401 and 403 where they belong."""

from __future__ import annotations

import secrets

import grpc
import httpx
import pytest

from tests.integration.billing_helpers import subscribe_through_edge

PASSWORD = "a-long-and-unusual-passphrase-7"


def sign_up_and_login(edge: str, label: str) -> tuple[str, dict[str, str]]:
    email = f"{label}-{secrets.token_hex(4)}@example.com"
    answer = httpx.post(f"{edge}/v1/auth:signUp", json={"email": email, "password": PASSWORD, "displayName": label})
    assert answer.status_code == 200, answer.text
    assert answer.json()["email"] == email
    session = httpx.post(f"{edge}/v1/auth:login", json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    body = session.json()
    assert body["tokenType"] == "Bearer"
    return email, {"authorization": f"Bearer {body['accessToken']}"}


def test_newcomer_flow_through_the_edge(edge: str) -> None:
    _, owner = sign_up_and_login(edge, "owner")
    me = httpx.get(f"{edge}/v1/users/me", headers=owner)
    assert me.status_code == 200, me.text

    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": "Acme"}, headers=owner)
    assert org.status_code == 200, org.text
    name = org.json()["name"]
    assert name.startswith("organizations/")

    # Teams and API keys are Business features.
    subscribe_through_edge(edge, name, "business")

    guest_email, guest = sign_up_and_login(edge, "guest")
    invitation = httpx.post(
        f"{edge}/v1/{name}/invitations", json={"email": guest_email, "role": "EDITOR"}, headers=owner
    )
    assert invitation.status_code == 200, invitation.text
    token = invitation.json()["token"]
    # Before accepting, the guest has no access to the organization.
    assert httpx.get(f"{edge}/v1/{name}/members", headers=guest).status_code == 403
    accepted = httpx.post(f"{edge}/v1/invitations:accept", json={"token": token}, headers=guest)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["role"] == "EDITOR"
    members = httpx.get(f"{edge}/v1/{name}/members", headers=guest)
    assert members.status_code == 200, members.text
    assert sorted(m["role"] for m in members.json()["members"]) == ["EDITOR", "OWNER"]
    # An editor may not create API keys.
    assert (
        httpx.post(
            f"{edge}/v1/{name}/apiKeys", json={"displayName": "x", "scopes": ["qr:read"]}, headers=guest
        ).status_code
        == 403
    )

    created = httpx.post(
        f"{edge}/v1/{name}/apiKeys", json={"displayName": "ci", "scopes": ["members:read"]}, headers=owner
    )
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    key_name = created.json()["apiKey"]["name"]
    assert secret.startswith(created.json()["apiKey"]["prefix"])
    with_key = httpx.get(f"{edge}/v1/{name}/members", headers={"x-api-key": secret})
    assert with_key.status_code == 200, with_key.text
    assert httpx.get(f"{edge}/v1/{name}/members", headers={"authorization": f"Bearer {secret}"}).status_code == 200

    revoked = httpx.delete(f"{edge}/v1/{key_name}", headers=owner)
    assert revoked.status_code == 200, revoked.text
    after = httpx.get(f"{edge}/v1/{name}/members", headers={"x-api-key": secret})
    assert after.status_code == 401
    assert after.json()["details"][0]["reason"] == "INVALID_API_KEY"


def test_unauthenticated_is_401_and_json(edge: str) -> None:
    answer = httpx.get(f"{edge}/v1/users/me")
    assert answer.status_code == 401
    assert answer.json()["details"][0]["reason"] == "UNAUTHENTICATED"
    forged = httpx.get(f"{edge}/v1/users/me", headers={"authorization": "Bearer not.a.token"})
    assert forged.status_code == 401


async def test_service_tokens_are_stripped_at_the_edge(edge: str) -> None:
    from qrmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
    from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
    from tests.conftest import SERVICE_SECRET

    request = identity_service_pb2.GetRoleRequest(organization="organizations/any", user="users/any")
    metadata = ((SERVICE_TOKEN_HEADER, service_token(SERVICE_SECRET, "qr")),)
    async with grpc.aio.insecure_channel(edge.removeprefix("http://")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity_service_pb2_grpc.AccessServiceStub(channel).GetRole(request, metadata=metadata)
    # Internal services are not routed at the edge at all, valid service token or not.
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc

    async with grpc.aio.insecure_channel(edge.removeprefix("http://")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await qr_code_service_pb2_grpc.LinkServiceStub(channel).ClaimScan(
                qr_code_service_pb2.ClaimScanRequest(short_code="anything"), metadata=metadata
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
