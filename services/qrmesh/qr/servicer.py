"""QrCodeService: translates protos to domain calls and back. No rules here."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.api import httpbody_pb2

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr import design_proto
from qrmesh.qr.content import payload_from_proto
from qrmesh.qr.domain import payloads
from qrmesh.qr.domain.design import Design, ErrorCorrection
from qrmesh.qr.domain.render import RenderOptions, render
from qrmesh.qr.domain.report import Report, check
from qrmesh.qr.v1 import design_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc

# Rendered images depend only on the request, so caches may keep them.
CACHE_CONTROL = "public, max-age=86400"


def _prepare(request: qr_code_service_pb2.RenderQrCodeRequest) -> tuple[str, Design, RenderOptions]:
    """The payload text, design and options a render request asks for."""
    payload = payload_from_proto(request.content)
    design = design_proto.design_from_proto(request)
    required = payloads.required_error_correction(payload)
    if required is not None:
        level = ErrorCorrection[required]
        if design.error_correction not in (None, level):
            raise InvalidArgument.field(
                "design.errorCorrection",
                f"this payload is always encoded at error correction {required} (its standard says so)",
                reason="ERROR_CORRECTION_FIXED",
            )
        if design.logo is not None:
            raise InvalidArgument.field(
                "design.logo",
                f"this payload is encoded at error correction {required}, which leaves no budget for a logo",
                reason="LOGO_NOT_ALLOWED",
            )
        design = design_proto.with_error_correction(design, level)
    return payloads.encode(payload), design, design_proto.options_from_proto(request)


def report_to_proto(report: Report) -> qr_code_service_pb2.ScannabilityReport:
    """The API's view of a domain report."""
    problem = qr_code_service_pb2.ScannabilityReport.Problem
    return qr_code_service_pb2.ScannabilityReport(
        payload=report.payload,
        payload_bytes=report.payload_bytes,
        version=report.version,
        error_correction=design_pb2.Design.ErrorCorrection.Value(report.error_correction.name),
        modules=report.modules,
        contrast_ratio=report.contrast_ratio,
        logo_coverage=report.logo_coverage,
        error_budget=report.error_budget,
        decoded=report.decoded,
        problems=[problem(reason=problem.Reason.Value(reason), message=message) for reason, message in report.problems],
        image_size=report.image_size,
    )


class QrCodeServicer(qr_code_service_pb2_grpc.QrCodeServiceServicer):
    """gRPC face of the qr service."""

    async def RenderQrCode(
        self, request: qr_code_service_pb2.RenderQrCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> httpbody_pb2.HttpBody:
        text, design, options = _prepare(request)
        # Rendering is CPU work (up to tens of ms for large styled images): keep
        # the event loop, and with it health checks and other calls, responsive.
        image = await asyncio.to_thread(render, text, design, options, strict=request.strict)
        await context.send_initial_metadata((("etag", f'"{image.etag}"'), ("cache-control", CACHE_CONTROL)))
        return httpbody_pb2.HttpBody(content_type=image.content_type, data=image.data)

    async def CheckQrCode(
        self, request: qr_code_service_pb2.CheckQrCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> qr_code_service_pb2.ScannabilityReport:
        text, design, options = _prepare(request.render)
        report = await asyncio.to_thread(check, text, design, options)
        return report_to_proto(report)
