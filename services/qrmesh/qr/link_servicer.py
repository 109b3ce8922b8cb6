"""LinkService: the redirect's questions about short codes. Internal: only services may call it."""

from __future__ import annotations

from typing import Any

import grpc

from qrmesh.qr.service import QrCodes
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2

Context = grpc.aio.ServicerContext[Any, Any]
svc = qr_code_service_pb2


class LinkServicer(qr_code_service_pb2_grpc.LinkServiceServicer):
    """Links of dynamic codes and their scan limits."""

    def __init__(self, codes: QrCodes) -> None:
        self.codes = codes

    async def ResolveLink(self, request: svc.ResolveLinkRequest, context: Context) -> stored_qr_code_pb2.Link:
        return await self.codes.resolve_link(request.short_code)

    async def ClaimScan(self, request: svc.ClaimScanRequest, context: Context) -> svc.ClaimScanResponse:
        claim = await self.codes.claim_scan(request.short_code)
        return svc.ClaimScanResponse(allowed=claim.allowed, claimed=claim.claimed, max_scans=claim.max_scans)
