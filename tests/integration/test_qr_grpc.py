"""The qr service over a real gRPC channel: rendering, errors, health, reflection, migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from alembic.script import ScriptDirectory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text

from qrmesh.platform.database import create_engine, migrate
from qrmesh.platform.interceptors import rich_status
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc
from tests.imaging import decode_png

Request = qr_code_service_pb2.RenderQrCodeRequest


def url_content(url: str) -> qr_code_pb2.Content:
    return qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=url))


async def test_render_png_decodes_to_the_url(qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    body = await stub.RenderQrCode(Request(content=url_content("https://example.com"), format=Request.PNG))
    assert body.content_type == "image/png"
    assert decode_png(body.data) == ["https://example.com"]


async def test_render_svg(qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    body = await stub.RenderQrCode(Request(content=url_content("https://example.com"), format=Request.SVG))
    assert body.content_type == "image/svg+xml"
    assert b"<svg" in body.data


async def test_bad_input_is_invalid_argument_with_field_violations(qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RenderQrCode(Request(content=url_content("javascript:alert(1)")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "content.url.url" in (caught.value.details() or "")
    status = rich_status(caught.value)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad)
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in bad.field_violations] == ["content.url.url"]


async def test_content_too_long_has_its_own_reason(qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    content = qr_code_pb2.Content(text=qr_code_pb2.TextPayload(text="x" * 2000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RenderQrCode(Request(content=content, error_correction=Request.HIGH))
    status = rich_status(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (caught.value.code(), info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_TOO_LONG")


async def test_health_reports_serving_for_the_server_and_each_service(qr_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(qr_channel)
    for service in ["", *qr_server_module.GRPC_SERVICES]:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="qrmesh.nope.v1.Nothing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(qr_channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(qr_channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for answer in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in answer.list_services_response.service]
    assert "qrmesh.qr.v1.QrCodeService" in names
    assert "grpc.health.v1.Health" in names


async def test_migrations_ran_into_the_service_schema(qr_server: Server, settings: Settings) -> None:
    engine = create_engine(settings.database_url, schema="qr")
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(text("SELECT version_num FROM qr.alembic_version"))
        assert qr_server_module.SPEC.migrations is not None
        heads = ScriptDirectory(str(qr_server_module.SPEC.migrations)).get_heads()
        assert [version] == heads
        # Replicas starting together migrate once and both succeed.
        migrations = qr_server_module.SPEC.migrations
        assert migrations is not None
        await asyncio.gather(migrate(engine, migrations, "qr"), migrate(engine, migrations, "qr"))
    finally:
        await engine.dispose()


async def test_graceful_shutdown_reports_not_serving_first(settings: Settings) -> None:
    server, port = await qr_server_module.create_server(settings)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop(grace=2.0))
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert caught.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
