"""QrCodeService: translates protos to domain calls and back. No rules here."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.api import httpbody_pb2

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain import payloads
from qrmesh.qr.domain.render import DEFAULT_QUIET_ZONE, DEFAULT_SIZE, ErrorCorrection, Format, RenderOptions, render
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc

_FORMATS = {
    qr_code_service_pb2.RenderQrCodeRequest.FORMAT_UNSPECIFIED: Format.PNG,
    qr_code_service_pb2.RenderQrCodeRequest.PNG: Format.PNG,
    qr_code_service_pb2.RenderQrCodeRequest.SVG: Format.SVG,
    qr_code_service_pb2.RenderQrCodeRequest.PDF: Format.PDF,
}
_LEVELS = {
    qr_code_service_pb2.RenderQrCodeRequest.ERROR_CORRECTION_UNSPECIFIED: ErrorCorrection.MEDIUM,
    qr_code_service_pb2.RenderQrCodeRequest.LOW: ErrorCorrection.LOW,
    qr_code_service_pb2.RenderQrCodeRequest.MEDIUM: ErrorCorrection.MEDIUM,
    qr_code_service_pb2.RenderQrCodeRequest.QUARTILE: ErrorCorrection.QUARTILE,
    qr_code_service_pb2.RenderQrCodeRequest.HIGH: ErrorCorrection.HIGH,
}


def payload_from_proto(content: qr_code_pb2.Content) -> payloads.Payload:
    """The domain payload for a `Content` message."""
    kind = content.WhichOneof("kind")
    if kind == "url":
        return payloads.Url(url=content.url.url)
    if kind == "text":
        return payloads.Text(text=content.text.text)
    raise InvalidArgument.field("content", "exactly one payload kind must be set")


class QrCodeServicer(qr_code_service_pb2_grpc.QrCodeServiceServicer):
    """gRPC face of the qr service."""

    async def RenderQrCode(
        self, request: qr_code_service_pb2.RenderQrCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> httpbody_pb2.HttpBody:
        options = RenderOptions(
            format=_FORMATS[request.format],
            size=request.size or DEFAULT_SIZE,
            error_correction=_LEVELS[request.error_correction],
            quiet_zone=request.quiet_zone if request.HasField("quiet_zone") else DEFAULT_QUIET_ZONE,
        )
        text = payloads.encode(payload_from_proto(request.content))
        # Rendering is CPU work (tens of ms for large images): keep the event loop,
        # and with it health checks and other calls, responsive.
        image = await asyncio.to_thread(render, text, options)
        return httpbody_pb2.HttpBody(content_type=image.content_type, data=image.data)
