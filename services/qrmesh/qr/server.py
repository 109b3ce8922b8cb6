"""The qr service: QR codes, their content and rendering, stored codes and their links."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.identity.client import remote_access
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr.link_servicer import LinkServicer
from qrmesh.qr.resources import qr_codes_for
from qrmesh.qr.servicer import QrCodeServicer
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc

GRPC_SERVICES = [
    qr_code_service_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("QrCodeService", "LinkService")
]


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add QrCodeService and LinkService, sharing one `QrCodes`."""
    codes = qr_codes_for(resources)
    qr_code_service_pb2_grpc.add_QrCodeServiceServicer_to_server(QrCodeServicer(codes), server)
    qr_code_service_pb2_grpc.add_LinkServiceServicer_to_server(LinkServicer(codes), server)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="qr", register=register, migrations=Path(__file__).with_name("migrations"), access=remote_access
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the qr service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
