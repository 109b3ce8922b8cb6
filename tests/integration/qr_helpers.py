"""Helpers for tests of stored QR codes: requests, members with roles, API keys, service calls, a Redis proxy."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2

from qrmesh.auth.v1 import policy_pb2
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.interceptors import rich_status
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2
from tests.conftest import SERVICE_SECRET
from tests.integration.identity_helpers import Account, sign_up

QrCode = stored_qr_code_pb2.QrCode
svc = qr_code_service_pb2


def url_content(url: str) -> qr_code_pb2.Content:
    return qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=url))


def text_content(text: str) -> qr_code_pb2.Content:
    return qr_code_pb2.Content(text=qr_code_pb2.TextPayload(text=text))


def dynamic(url: str = "https://example.com/landing", **fields: object) -> QrCode:
    """A DYNAMIC code sending scans to `url`."""
    return QrCode(kind=QrCode.DYNAMIC, content=url_content(url), **fields)  # type: ignore[arg-type]


def static(text: str = "hello", **fields: object) -> QrCode:
    """A STATIC code holding `text`."""
    return QrCode(kind=QrCode.STATIC, content=text_content(text), **fields)  # type: ignore[arg-type]


def alias(label: str = "promo") -> str:
    """A custom short code no other test (or test run sharing Redis) uses."""
    return f"{label}-{secrets.token_hex(5)}"


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason the server sent with `error`."""
    status = rich_status(error)
    assert status is not None, error.details()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named in the BadRequest the server sent with `error`."""
    status = rich_status(error)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Unpack(bad):
            return [violation.field for violation in bad.field_violations]
    return []


def service_metadata() -> tuple[tuple[str, str], ...]:
    """What another qrmesh service sends to call internal RPCs."""
    return ((SERVICE_TOKEN_HEADER, service_token(SERVICE_SECRET, "redirect")),)


def api_key_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", secret),)


@dataclass(frozen=True)
class Clients:
    """Stubs of the qr service."""

    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub
    links: qr_code_service_pb2_grpc.LinkServiceAsyncStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Clients:
        return cls(
            qr_code_service_pb2_grpc.QrCodeServiceStub(channel), qr_code_service_pb2_grpc.LinkServiceStub(channel)
        )

    async def create(self, account: Account, code: QrCode, request_id: str = "") -> QrCode:
        return await self.codes.CreateQrCode(
            svc.CreateQrCodeRequest(parent=account.organization, qr_code=code, request_id=request_id),
            metadata=account.metadata(),
        )

    async def get(self, account: Account, name: str) -> QrCode:
        return await self.codes.GetQrCode(svc.GetQrCodeRequest(name=name), metadata=account.metadata())

    async def update(self, account: Account, code: QrCode, paths: Sequence[str] = ()) -> QrCode:
        request = svc.UpdateQrCodeRequest(qr_code=code)
        request.update_mask.paths.extend(paths)
        return await self.codes.UpdateQrCode(request, metadata=account.metadata())

    async def list(self, account: Account, **fields: object) -> svc.ListQrCodesResponse:
        request = svc.ListQrCodesRequest(parent=account.organization, **fields)  # type: ignore[arg-type]
        return await self.codes.ListQrCodes(request, metadata=account.metadata())

    async def delete(self, account: Account, name: str, etag: str = "") -> None:
        await self.codes.DeleteQrCode(svc.DeleteQrCodeRequest(name=name, etag=etag), metadata=account.metadata())


async def member(identity: grpc.aio.Channel, owner: Account, role: policy_pb2.Role.ValueType, label: str) -> Account:
    """A new user who joined `owner`'s organization with `role`; the account names that organization."""
    person = await sign_up(identity, label)
    organizations = identity_service_pb2_grpc.OrganizationServiceStub(identity)
    invited = await organizations.CreateInvitation(
        identity_service_pb2.CreateInvitationRequest(
            parent=owner.organization, invitation=identity_pb2.Invitation(email=person.email, role=role)
        ),
        metadata=owner.metadata(),
    )
    await organizations.AcceptInvitation(
        identity_service_pb2.AcceptInvitationRequest(token=invited.token), metadata=person.metadata()
    )
    return Account(email=person.email, user=person.user, token=person.token, organization=owner.organization)


async def api_key(identity: grpc.aio.Channel, owner: Account, *scopes: str) -> str:
    """The secret of a new API key of `owner`'s organization with `scopes`."""
    keys = identity_service_pb2_grpc.ApiKeyServiceStub(identity)
    created = await keys.CreateApiKey(
        identity_service_pb2.CreateApiKeyRequest(
            parent=owner.organization, api_key=identity_pb2.ApiKey(display_name="test", scopes=list(scopes))
        ),
        metadata=owner.metadata(),
    )
    return created.secret


class TcpProxy:
    """A TCP proxy to `target` that can be cut (every connection dropped, new ones refused) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update((writer, upstream_writer))
