"""Sign people up and in against a real identity service, for tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import grpc

from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc

PASSWORD = "a-long-and-unusual-passphrase-7"


@dataclass(frozen=True)
class Account:
    """A signed-in user and the organization they own."""

    email: str
    user: str
    token: str
    organization: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


async def sign_up(channel: grpc.aio.Channel, label: str) -> Account:
    """A new user (random email) with a fresh session and an organization of their own."""
    auth = identity_service_pb2_grpc.AuthServiceStub(channel)
    email = f"{label}-{secrets.token_hex(4)}@example.com"
    await auth.SignUp(identity_service_pb2.SignUpRequest(email=email, password=PASSWORD, display_name=label))
    session = await auth.Login(identity_service_pb2.LoginRequest(email=email, password=PASSWORD))
    organizations = identity_service_pb2_grpc.OrganizationServiceStub(channel)
    organization = await organizations.CreateOrganization(
        identity_service_pb2.CreateOrganizationRequest(organization=identity_pb2.Organization(display_name=label)),
        metadata=(("authorization", f"Bearer {session.access_token}"),),
    )
    return Account(email=email, user=session.user.name, token=session.access_token, organization=organization.name)
