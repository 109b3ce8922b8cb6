"""QrCodeService: translates protos to domain calls and back. No rules here."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2
from prometheus_client import Counter

from qrmesh.platform.auth import current_principal
from qrmesh.platform.errors import PermissionDenied
from qrmesh.platform.metrics import REGISTRY
from qrmesh.qr import names, store
from qrmesh.qr.convert import qr_code_to_proto, timestamp
from qrmesh.qr.domain import listing
from qrmesh.qr.domain.render import Format, Image, render
from qrmesh.qr.domain.report import Report, check
from qrmesh.qr.domain.updates import plan_scan_settings_update, plan_update
from qrmesh.qr.rendering import prepare
from qrmesh.qr.service import QrCodes
from qrmesh.qr.v1 import design_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2

Context = grpc.aio.ServicerContext[Any, Any]
svc = qr_code_service_pb2
QrCode = stored_qr_code_pb2.QrCode

# Rendered images depend only on the request, so caches may keep them.
CACHE_CONTROL = "public, max-age=86400"
# A stored code's image changes when its design does: caches must ask again (the ETag makes that cheap).
STORED_CACHE_CONTROL = "private, max-age=0, must-revalidate"

_prepare = prepare
"""The payload text, design and options a render request asks for (shared with stored codes)."""

RENDERS = Counter(
    "qrmesh_qr_renders",
    "Images rendered, by format and source (request: RenderQrCode, stored: RenderStoredQrCode).",
    ["format", "source"],
    registry=REGISTRY,
)


def _counted(image: Image, source: str) -> Image:
    RENDERS.labels(Format(image.content_type).name.lower(), source).inc()
    return image


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


def scan_settings_to_proto(
    organization: str, settings: store.ScanSettingsRecord | None
) -> stored_qr_code_pb2.ScanSettings:
    """The API's view of scan settings (the defaults while never changed)."""
    proto = stored_qr_code_pb2.ScanSettings(name=names.scan_settings_name(organization))
    if settings is not None:
        proto.store_full_ip_addresses = settings.store_full_ip_addresses
        proto.update_time.CopyFrom(timestamp(settings.updated_at))
    return proto


def _in_scope(organization: str) -> str:
    """`organization`, which must be the one the guard let the caller into."""
    if current_principal().organization != names.organization_name(organization):
        raise PermissionDenied("the request is not scoped to this organization")
    return organization


def _organization(name: str, *, field: str) -> str:
    return _in_scope(names.organization_id(name, field=field))


def _qr_code(name: str, *, field: str) -> tuple[str, str]:
    organization, code = names.qr_code_ids(name, field=field)
    return _in_scope(organization), code


class QrCodeServicer(qr_code_service_pb2_grpc.QrCodeServiceServicer):
    """gRPC face of the qr service."""

    def __init__(self, codes: QrCodes) -> None:
        self.codes = codes

    async def RenderQrCode(self, request: svc.RenderQrCodeRequest, context: Context) -> httpbody_pb2.HttpBody:
        text, design, options = _prepare(request)
        # Rendering is CPU work (up to tens of ms for large styled images): keep
        # the event loop, and with it health checks and other calls, responsive.
        image = _counted(await asyncio.to_thread(render, text, design, options, strict=request.strict), "request")
        await context.send_initial_metadata((("etag", f'"{image.etag}"'), ("cache-control", CACHE_CONTROL)))
        return httpbody_pb2.HttpBody(content_type=image.content_type, data=image.data)

    async def CheckQrCode(self, request: svc.CheckQrCodeRequest, context: Context) -> svc.ScannabilityReport:
        text, design, options = _prepare(request.render)
        report = await asyncio.to_thread(check, text, design, options)
        return report_to_proto(report)

    def _proto(self, code: store.QrCodeRecord) -> QrCode:
        return qr_code_to_proto(code, self.codes.short_url(code.short_code) if code.short_code else "")

    async def CreateQrCode(self, request: svc.CreateQrCodeRequest, context: Context) -> QrCode:
        organization = _organization(request.parent, field="parent")
        return self._proto(await self.codes.create(organization, request.qr_code, request.request_id))

    async def GetQrCode(self, request: svc.GetQrCodeRequest, context: Context) -> QrCode:
        organization, code = _qr_code(request.name, field="name")
        return self._proto(await self.codes.get(organization, code))

    async def ListQrCodes(self, request: svc.ListQrCodesRequest, context: Context) -> svc.ListQrCodesResponse:
        organization = _organization(request.parent, field="parent")
        filters = listing.normalize_filters(
            folder=request.folder,
            tag=request.tag,
            kind=QrCode.Kind.Name(request.kind) if request.kind else None,
            status=QrCode.Status.Name(request.status) if request.status else None,
            search=request.search,
        )
        order = listing.parse_order(request.order_by)
        page = await self.codes.list_codes(organization, filters, order, request.page_size, request.page_token)
        return svc.ListQrCodesResponse(
            qr_codes=[self._proto(code) for code in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def UpdateQrCode(self, request: svc.UpdateQrCodeRequest, context: Context) -> QrCode:
        organization, code = _qr_code(request.qr_code.name, field="qrCode.name")
        plan = plan_update(list(request.update_mask.paths))
        return self._proto(await self.codes.update(organization, code, request.qr_code, plan))

    async def DeleteQrCode(self, request: svc.DeleteQrCodeRequest, context: Context) -> empty_pb2.Empty:
        organization, code = _qr_code(request.name, field="name")
        await self.codes.delete(organization, code, request.etag)
        return empty_pb2.Empty()

    async def RenderStoredQrCode(
        self, request: svc.RenderStoredQrCodeRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        organization, code = _qr_code(request.name, field="name")
        options = svc.RenderQrCodeRequest(format=request.format, size=request.size, dpi=request.dpi)
        image = _counted(await self.codes.render(organization, code, options), "stored")
        await context.send_initial_metadata((("etag", f'"{image.etag}"'), ("cache-control", STORED_CACHE_CONTROL)))
        return httpbody_pb2.HttpBody(content_type=image.content_type, data=image.data)

    async def GetScanSettings(
        self, request: svc.GetScanSettingsRequest, context: Context
    ) -> stored_qr_code_pb2.ScanSettings:
        organization = _in_scope(names.scan_settings_organization(request.name, field="name"))
        return scan_settings_to_proto(organization, await self.codes.get_scan_settings(organization))

    async def UpdateScanSettings(
        self, request: svc.UpdateScanSettingsRequest, context: Context
    ) -> stored_qr_code_pb2.ScanSettings:
        settings = request.scan_settings
        organization = _in_scope(names.scan_settings_organization(settings.name, field="scanSettings.name"))
        plan_scan_settings_update(list(request.update_mask.paths))
        updated = await self.codes.update_scan_settings(organization, settings.store_full_ip_addresses)
        return scan_settings_to_proto(organization, updated)
