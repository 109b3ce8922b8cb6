"""qr's internal LinkService.ListCodesInScope over real gRPC: folders with their subfolders, tags
without case, named codes of the organization only, deleted codes, any status, services only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from qrmesh.platform.server import Server
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, QrCode, dynamic, reason, service_metadata, static, svc, violations


@pytest.fixture(scope="module")
async def identity(identity_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def qr(qr_channel: grpc.aio.Channel) -> Clients:
    return Clients.on(qr_channel)


async def scope(qr: Clients, organization: str, **fields: object) -> list[tuple[str, str, str, bool]]:
    request = svc.ListCodesInScopeRequest(organization=organization, **fields)  # type: ignore[arg-type]
    answer = await qr.links.ListCodesInScope(request, metadata=service_metadata())
    return [(code.name, code.display_name, code.short_code, code.deleted) for code in answer.codes]


async def test_folders_tags_names_and_deleted_codes(qr: Clients, identity: grpc.aio.Channel) -> None:
    owner = await sign_up(identity, "scope-owner")
    other = await sign_up(identity, "scope-other")
    top = await qr.create(owner, dynamic(display_name="top", folder="campaigns", tags=["Summer"]))
    below = await qr.create(owner, dynamic(display_name="below", folder="campaigns/2026", tags=["summer", "x"]))
    similar = await qr.create(owner, dynamic(display_name="similar", folder="campaigns-old", tags=["Summer"]))
    printed = await qr.create(owner, static(display_name="printed", folder="campaigns/2026/print"))
    archived = await qr.create(owner, dynamic(display_name="archived", folder="campaigns"))
    archived.status = QrCode.ARCHIVED
    await qr.update(owner, archived, ["status"])
    doomed = await qr.create(owner, dynamic(display_name="doomed", folder="campaigns"))
    await qr.delete(owner, doomed.name)
    foreign = await qr.create(other, dynamic(display_name="foreign", folder="campaigns", tags=["summer"]))

    def row(code: QrCode) -> tuple[str, str, str, bool]:
        return (code.name, code.display_name, code.short_code, False)

    # A folder holds its subfolders (not folders that merely start with its name), any status, oldest first.
    # The deleted code's folder went with it: folder and tag scopes cannot know it.
    in_folder = [row(top), row(below), row(printed), row(archived)]
    assert await scope(qr, owner.organization, folder="campaigns") == in_folder
    assert await scope(qr, owner.organization, folder="/campaigns/") == in_folder
    assert await scope(qr, owner.organization, folder="campaigns/2026") == [row(below), row(printed)]
    # Tags are compared without case; folder and tag together narrow.
    assert await scope(qr, owner.organization, tag="SUMMER") == [row(top), row(below), row(similar)]
    assert await scope(qr, owner.organization, folder="campaigns", tag="summer") == [row(top), row(below)]
    # The whole organization: every code, the deleted one too (its id and short code are all that is left).
    everything = await scope(qr, owner.organization)
    assert everything == [
        row(top),
        row(below),
        row(similar),
        row(printed),
        row(archived),
        (doomed.name, "", doomed.short_code, True),
    ]
    # Named codes: display names for those of this organization; another organization's are not in scope.
    named = await scope(qr, owner.organization, names=[below.name, doomed.name, foreign.name])
    assert named == [row(below), (doomed.name, "", doomed.short_code, True)]
    assert await scope(qr, owner.organization, names=[foreign.name]) == []
    assert await scope(qr, other.organization) == [row(foreign)]


async def test_only_services_and_only_well_formed_names(qr: Clients, identity: grpc.aio.Channel) -> None:
    owner: Account = await sign_up(identity, "scope-guard")
    request = svc.ListCodesInScopeRequest(organization=owner.organization)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qr.links.ListCodesInScope(request, metadata=owner.metadata())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "SERVICE_ONLY"
    bad = svc.ListCodesInScopeRequest(organization=owner.organization, names=[owner.organization + "/qrCodes/"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qr.links.ListCodesInScope(bad, metadata=service_metadata())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["names[0]"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qr.links.ListCodesInScope(svc.ListCodesInScopeRequest(organization="orgs/x"), metadata=service_metadata())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
