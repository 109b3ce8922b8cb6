"""The qr service: QR codes, their content and rendering."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.identity.client import remote_access
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr.servicer import QrCodeServicer
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc

GRPC_SERVICES = [qr_code_service_pb2.DESCRIPTOR.services_by_name["QrCodeService"].full_name]


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    qr_code_service_pb2_grpc.add_QrCodeServiceServicer_to_server(QrCodeServicer(), server)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="qr", register=register, migrations=Path(__file__).with_name("migrations"), access=remote_access
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the qr service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
