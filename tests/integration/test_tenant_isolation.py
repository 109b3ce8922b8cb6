"""Tenant isolation, generated from the contracts: for every RPC of every service
whose policy scopes it to an organization, a member of organization A naming
organization B's resources is refused with PERMISSION_DENIED, whether or not the
resource exists. New RPCs are covered without touching this file."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from qrmesh.auth.v1 import policy_pb2
from qrmesh.mesh import SERVICES
from qrmesh.platform.server import Server
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import reason


def organization_rpcs() -> list[MethodDescriptor]:
    """Every method of every service in the mesh with an organization policy."""
    pool = descriptor_pool.Default()
    found = []
    for entry in SERVICES.values():
        for service_name in entry.grpc_services():
            for method in pool.FindServiceByName(service_name).methods:
                if method.GetOptions().Extensions[policy_pb2.policy].HasField("organization"):
                    found.append(method)
    return found


def resource_name(method: MethodDescriptor, field: str, organization: str) -> str:
    """A name for `field` inside `organization`, shaped like the RPC's HTTP route says."""
    from google.api import annotations_pb2

    rule = method.GetOptions().Extensions[annotations_pb2.http]
    route = getattr(rule, rule.WhichOneof("pattern"))
    match = re.search(r"\{" + re.escape(field) + r"=([^}]+)\}", route)
    pattern = match.group(1) if match else "organizations/*"
    name = pattern.replace("organizations/*", organization, 1)
    return name.replace("*", "x1y2z3")


def request_for(method: MethodDescriptor, organization: str) -> Message:
    """A request to `method` whose organization field names `organization`."""
    field = method.GetOptions().Extensions[policy_pb2.policy].organization.field
    request = message_factory.GetMessageClass(method.input_type)()
    target: Message = request
    *parents, leaf = field.split(".")
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, resource_name(method, field, organization))
    return request


async def call(channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, account: Account) -> None:
    output = message_factory.GetMessageClass(method.output_type)
    if method.server_streaming:  # the first message (or the refusal) is enough; the stream may never end
        stream = channel.unary_stream(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=output.FromString,
        )(request, metadata=account.metadata(), timeout=10)
        try:
            await stream.read()
        finally:
            stream.cancel()
        return
    stub = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=output.FromString,
    )
    await stub(request, metadata=account.metadata(), timeout=10)


METHODS = organization_rpcs()


def test_the_harness_covers_rpcs() -> None:
    assert len(METHODS) >= 10


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
async def test_member_of_a_cannot_reach_b(
    method: MethodDescriptor,
    identity_server: Server,
    qr_server: Server,
    billing_server: Server,
    analytics_server: Server,
    webhooks_server: Server,
) -> None:
    servers = {
        "qrmesh.identity.v1": identity_server,
        "qrmesh.qr.v1": qr_server,
        "qrmesh.billing.v1": billing_server,
        "qrmesh.analytics.v1": analytics_server,
        "qrmesh.webhooks.v1": webhooks_server,
    }
    port = servers[method.containing_service.file.package].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as identity:
        alice, bob = await sign_up(identity, "alice"), await sign_up(identity, "bob")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for target in (bob.organization, "organizations/no-such-org"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(channel, method, request_for(method, target), alice)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, (target, caught.value.details())
            assert caught.value.details() == f"you do not have access to {target}"
        # The same request on her own organization gets past the guard (it may fail later for other reasons).
        # A plan without the feature (Free: no API keys) is a refusal from the service, not the guard.
        try:
            await call(channel, method, request_for(method, alice.organization), alice)
            code, why = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            code, why = error.code(), reason(error)
        assert code != grpc.StatusCode.PERMISSION_DENIED or why == "FEATURE_NOT_IN_PLAN", why
