"""LinkService: other services' questions about codes (the redirect's links, analytics' scopes).
Internal: only services may call it."""

from __future__ import annotations

from typing import Any

import grpc

from qrmesh.qr import names
from qrmesh.qr.domain import listing
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

    async def ListCodesInScope(
        self, request: svc.ListCodesInScopeRequest, context: Context
    ) -> svc.ListCodesInScopeResponse:
        organization = names.organization_id(request.organization, field="organization")
        code_ids = []
        for index, name in enumerate(request.names):
            owner, code_id = names.qr_code_ids(name, field=f"names[{index}]")
            if owner == organization:  # another organization's code is simply not in this scope
                code_ids.append(code_id)
        if request.names and not code_ids:
            return svc.ListCodesInScopeResponse()
        filters = listing.normalize_filters(request.folder, request.tag, None, None, "")
        found = await self.codes.codes_in_scope(organization, filters, code_ids)
        return svc.ListCodesInScopeResponse(
            codes=[
                svc.ListCodesInScopeResponse.CodeRef(
                    name=names.qr_code_name(organization, code.id),
                    display_name=code.display_name,
                    short_code=code.short_code or "",
                    deleted=code.deleted,
                )
                for code in found
            ]
        )
