"""Usage: how much of its limits an organization uses, asked of the services that own the counted things.

qr counts dynamic codes and identity counts team members; each serves
`qrmesh.billing.v1.UsageService`. Billing asks them all before a downgrade, so
the check sees the truth at that moment rather than a tally that could drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from qrmesh.billing.v1 import billing_pb2, billing_service_pb2, billing_service_pb2_grpc
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, current_principal, service_token
from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import PermissionDenied, Unavailable

Context = grpc.aio.ServicerContext[Any, Any]
Counter = Callable[[str], Awaitable[dict[str, int]]]
"""Counts a service's usage for an organization id: entitlement name -> amount."""


class UsageClient:
    """Asks every configured UsageService and merges the answers."""

    def __init__(self, addresses: Sequence[str], *, service: str, service_secret: str) -> None:
        self.addresses = tuple(addresses)
        self.service = service
        self.service_secret = service_secret
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> billing_service_pb2_grpc.UsageServiceAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = create_channel(address, default_deadline=3.0)
        return billing_service_pb2_grpc.UsageServiceStub(channel)

    async def usage(self, organization: str) -> dict[str, int]:
        """Entitlement name -> amount in use for `organizations/{id}`; Unavailable if any service cannot say."""
        if not self.addresses:
            raise Unavailable(
                "usage cannot be counted: no usage services are configured (QRMESH_BILLING_USAGE_ADDRS)",
                reason="USAGE_NOT_CONFIGURED",
            )
        metadata = ((SERVICE_TOKEN_HEADER, service_token(self.service_secret, self.service)),)
        request = billing_service_pb2.GetUsageRequest(organization=organization)
        try:
            answers = await asyncio.gather(
                *(self._stub(address).GetUsage(request, metadata=metadata) for address in self.addresses)
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"usage cannot be counted right now: {exc.code().name}; try again", reason="USAGE_UNAVAILABLE"
            ) from None
        merged: dict[str, int] = {}
        for answer in answers:
            for entry in answer.usage:
                merged[entry.entitlement] = max(merged.get(entry.entitlement, 0), entry.used)
        return merged

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class UsageServicer(billing_service_pb2_grpc.UsageServiceServicer):
    """The UsageService a counting service serves: `count(organization_id)` does the counting."""

    def __init__(self, count: Counter, organization_id: Callable[[str], str]) -> None:
        self.count = count
        self.organization_id = organization_id

    async def GetUsage(
        self, request: billing_service_pb2.GetUsageRequest, context: Context
    ) -> billing_service_pb2.GetUsageResponse:
        if current_principal().service is None:
            raise PermissionDenied("only qrmesh services may call this", reason="SERVICE_ONLY")
        counted = await self.count(self.organization_id(request.organization))
        return billing_service_pb2.GetUsageResponse(
            usage=[billing_pb2.Usage(entitlement=name, used=used) for name, used in sorted(counted.items())]
        )


USAGE_SERVICE = billing_service_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name
"""The full name to list in a counting service's GRPC_SERVICES."""
