"""The qr service: QR codes, their content and rendering, stored codes and their links."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.billing.client import plan_gated, plan_rates
from qrmesh.billing.usage import USAGE_SERVICE, UsageServicer
from qrmesh.billing.v1 import billing_service_pb2_grpc
from qrmesh.identity.client import remote_access
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr import names
from qrmesh.qr.batch_servicer import BatchServicer
from qrmesh.qr.link_servicer import LinkServicer
from qrmesh.qr.resources import batches_for, qr_codes_for
from qrmesh.qr.servicer import QrCodeServicer
from qrmesh.qr.v1 import batch_service_pb2, batch_service_pb2_grpc, qr_code_service_pb2, qr_code_service_pb2_grpc

GRPC_SERVICES = [
    *(qr_code_service_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("QrCodeService", "LinkService")),
    USAGE_SERVICE,
    batch_service_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name,
]


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add QrCodeService, LinkService and the billing service's UsageService (dynamic codes), sharing one
    `QrCodes`."""
    codes = qr_codes_for(resources)
    qr_code_service_pb2_grpc.add_QrCodeServiceServicer_to_server(QrCodeServicer(codes), server)
    qr_code_service_pb2_grpc.add_LinkServiceServicer_to_server(LinkServicer(codes), server)
    usage = UsageServicer(codes.usage, lambda name: names.organization_id(name, field="organization"))
    billing_service_pb2_grpc.add_UsageServiceServicer_to_server(usage, server)
    batch_service_pb2_grpc.add_BatchServiceServicer_to_server(BatchServicer(batches_for(resources, codes)), server)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="qr",
    register=register,
    migrations=Path(__file__).with_name("migrations"),
    # API keys work only on plans with API access; users and keys get their plan's request rates.
    access=lambda resources: plan_gated(remote_access(resources), resources),
    rate_policy=plan_rates,
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the qr service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
