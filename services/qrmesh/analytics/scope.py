"""Which scans a query covers: the organization in `parent`, and within it named codes, a folder or a tag.

Named codes must belong to `parent` (tenant isolation: the guard checked the caller's access to
`parent` only, so a code of another organization is refused here, before any read). Folders and
tags live in the qr service: its internal `LinkService.ListCodesInScope`, called with this
service's token, says which codes they hold. A query naming nothing covers the whole organization
and reads its organization-wide rollup rows; any other scope reads the rows of its codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from qrmesh.analytics.store_read import Scope
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import FailedPrecondition, InvalidArgument, Unavailable
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc

_ID = r"[A-Za-z0-9_-]{1,64}"
_ORGANIZATION = re.compile(rf"organizations/({_ID})")
_QR_CODE = re.compile(rf"organizations/({_ID})/qrCodes/({_ID})")


def organization_id(parent: str, *, field: str = "parent") -> str:
    """The id in `organizations/{id}`."""
    match = _ORGANIZATION.fullmatch(parent)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}", reason="INVALID_NAME"
        )
    return match.group(1)


def code_id(name: str, organization: str, *, field: str) -> str:
    """The id of a code of `organization`; InvalidArgument for a malformed name or another organization's code."""
    match = _QR_CODE.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/qrCodes/{qr_code}", reason="INVALID_NAME"
        )
    if match.group(1) != organization:
        raise InvalidArgument.field(
            field, f"must be a code of organizations/{organization}, the parent", reason="QR_CODE_NOT_IN_PARENT"
        )
    return match.group(2)


def code_name(organization: str, code: str) -> str:
    """`organizations/{organization}/qrCodes/{code}`."""
    return f"organizations/{organization}/qrCodes/{code}"


@dataclass(frozen=True, slots=True)
class CodeRef:
    """A code as the qr service knows it (a deleted one has no display name)."""

    id: str
    display_name: str
    deleted: bool


class Scopes:
    """Resolves scopes, asking the qr service about folders, tags and display names."""

    def __init__(self, qr_address: str, *, service: str, service_secret: str) -> None:
        self.qr_address = qr_address
        self.service = service
        self.service_secret = service_secret
        self._channel: grpc.aio.Channel | None = None

    async def resolve(self, parent: str, qr_codes: Sequence[str], folder: str, tag: str) -> Scope:
        """The scope of a query."""
        organization = organization_id(parent)
        ids = [code_id(name, organization, field=f"qrCodes[{index}]") for index, name in enumerate(qr_codes)]
        folder = folder.strip().strip("/")  # as qr reads folders: "/" is the root, every code
        if not folder and not tag.strip():
            return Scope(organization, tuple(dict.fromkeys(ids)) if ids else None)
        found = await self.codes(organization, folder=folder, tag=tag, names=qr_codes)
        return Scope(organization, tuple(code.id for code in found))

    async def codes(
        self, organization: str, *, folder: str = "", tag: str = "", names: Sequence[str] = ()
    ) -> list[CodeRef]:
        """The organization's codes in `folder` with `tag` (or only `names`), deleted ones where known."""
        request = qr_code_service_pb2.ListCodesInScopeRequest(
            organization=f"organizations/{organization}", folder=folder, tag=tag, names=list(names)
        )
        try:
            answer = await self._stub().ListCodesInScope(
                request, metadata=((SERVICE_TOKEN_HEADER, service_token(self.service_secret, self.service)),)
            )
        except grpc.aio.AioRpcError as error:
            raise _translated(error) from None
        prefix = f"organizations/{organization}/qrCodes/"
        return [
            CodeRef(code.name.removeprefix(prefix), code.display_name, code.deleted)
            for code in answer.codes
            if code.name.startswith(prefix)
        ]

    def _stub(self) -> qr_code_service_pb2_grpc.LinkServiceAsyncStub:
        if not self.qr_address:
            raise Unavailable(
                "scopes by folder or tag need the qr service, which is not configured (QRMESH_ANALYTICS_QR_ADDR)",
                reason="NO_QR_SERVICE",
            )
        if self._channel is None:
            self._channel = create_channel(self.qr_address)
        return qr_code_service_pb2_grpc.LinkServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _translated(error: grpc.aio.AioRpcError) -> Exception:
    """The qr service's refusal as our own error: bad input and too large scopes pass through."""
    details = error.details() or ""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details, reason="INVALID_SCOPE")
    if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details, reason="SCOPE_TOO_LARGE")
    return Unavailable(
        f"cannot reach the qr service to resolve the scope: {error.code().name}", reason="QR_UNAVAILABLE"
    )
