"""The identity service: accounts, sessions, organizations, members, invitations and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.billing.client import plan_gated, plan_rates
from qrmesh.billing.usage import USAGE_SERVICE, UsageServicer
from qrmesh.billing.v1 import billing_service_pb2_grpc
from qrmesh.identity import names
from qrmesh.identity.access import LocalAccessBackend, identity_for
from qrmesh.identity.outbox_relay import OutboxRelay
from qrmesh.identity.servicer import AccessServicer, ApiKeyServicer, AuthServicer, OrganizationServicer, UserServicer
from qrmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings

GRPC_SERVICES = [
    *(
        identity_service_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("AuthService", "UserService", "OrganizationService", "ApiKeyService", "AccessService")
    ),
    USAGE_SERVICE,
]


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add the five identity servicers and the billing service's UsageService (team members), sharing one
    `Identity`."""
    identity = identity_for(resources)
    # Mail queued in the outbox goes to the mail stream (the mailer in the webhooks service sends it).
    assert resources.redis is not None  # noqa: S101 - identity_for refuses to run without Redis
    relay = OutboxRelay(identity.sessions, resources.redis, resources.settings.mail_stream, identity.mail_queued)
    resources.on_start.append(relay.start)
    resources.on_close.append(relay.close)
    identity_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(identity), server)
    identity_service_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(identity), server)
    identity_service_pb2_grpc.add_OrganizationServiceServicer_to_server(OrganizationServicer(identity), server)
    identity_service_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(identity), server)
    identity_service_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(identity), server)
    usage = UsageServicer(identity.usage, lambda name: names.organization_id(name, field="organization"))
    billing_service_pb2_grpc.add_UsageServiceServicer_to_server(usage, server)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="identity",
    register=register,
    migrations=Path(__file__).with_name("migrations"),
    # API keys work only on plans with API access; users and keys get their plan's request rates.
    access=lambda resources: plan_gated(LocalAccessBackend(resources), resources),
    rate_policy=plan_rates,
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the identity service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
