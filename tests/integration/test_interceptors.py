"""The shared interceptors on a real server: every exception leaves as a rich status, and
outgoing calls get a deadline and a trace that continues on the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import NotFound, ResourceExhausted
from qrmesh.platform.interceptors import rich_status
from qrmesh.platform.server import Resources, Server, ServiceSpec, create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2

SERVICE = "qrmesh.test.v1.ProbeService"
Request = qr_code_service_pb2.RenderQrCodeRequest


async def probe(request: Request, context: grpc.aio.ServicerContext[Any, Any]) -> httpbody_pb2.HttpBody:
    """Behaves according to the text it is sent."""
    what = request.content.text.text
    if what == "not-found":
        raise NotFound("qr code organizations/o/qrCodes/q not found", reason="QR_CODE_NOT_FOUND")
    if what == "throttled":
        raise ResourceExhausted("too many attempts", retry_after=30, reason="LOGIN_THROTTLED")
    if what == "crash":
        raise RuntimeError("secret internal detail")
    if what == "deadline":
        remaining = context.time_remaining()
        return httpbody_pb2.HttpBody(content_type="text/plain", data=str(remaining).encode())
    return httpbody_pb2.HttpBody(content_type="text/plain", data=what.encode())


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    handler = grpc.unary_unary_rpc_method_handler(probe, Request.FromString, httpbody_pb2.HttpBody.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Probe": handler})])
    return [SERVICE]


@pytest.fixture(scope="module")
async def probe_server(settings: Settings) -> AsyncIterator[Server]:
    spec = ServiceSpec(name="probe", register=register, uses_database=False, uses_redis=False, guarded=False)
    server, _ = await create_server(settings, spec)
    await server.start()
    yield server
    await server.stop(0)


async def call(server: Server, text: str, *, channel: grpc.aio.Channel | None = None) -> httpbody_pb2.HttpBody:
    own = channel is None
    channel = channel or grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        method = channel.unary_unary(
            f"/{SERVICE}/Probe",
            request_serializer=Request.SerializeToString,
            response_deserializer=httpbody_pb2.HttpBody.FromString,
        )
        request = Request(content=qr_code_pb2.Content(text=qr_code_pb2.TextPayload(text=text)))
        answer: httpbody_pb2.HttpBody = await method(request)
        return answer
    finally:
        if own:
            await channel.close()


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rich_status(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


async def test_domain_error_maps_to_its_code_and_reason(probe_server: Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(probe_server, "not-found")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(caught.value) == "QR_CODE_NOT_FOUND"


async def test_resource_exhausted_carries_retry_info(probe_server: Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(probe_server, "throttled")
    status = rich_status(caught.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry)
    assert retry.retry_delay.seconds == 30


async def test_unexpected_exception_is_internal_without_leaking_details(probe_server: Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(probe_server, "crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "trace" in (caught.value.details() or "")
    assert reason_of(caught.value) == "INTERNAL"


async def test_requests_are_validated_before_the_handler(probe_server: Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(probe_server, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "content.text.text" in (caught.value.details() or "")


async def test_channel_sets_a_default_deadline(probe_server: Server) -> None:
    async with create_channel(f"127.0.0.1:{probe_server.port}", default_deadline=3.0) as channel:
        answer = await call(probe_server, "deadline", channel=channel)
    remaining = float(answer.data)
    # The server sees the 3 s deadline (a little clock skew aside); without one it would be None.
    assert 0 < remaining < 3.5


async def test_trace_continues_from_client_to_server(probe_server: Server, spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("tests")
    async with create_channel(f"127.0.0.1:{probe_server.port}") as channel:
        with tracer.start_as_current_span("caller") as caller:
            await call(probe_server, "hello", channel=channel)
    trace_id = caller.get_span_context().trace_id
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    kinds = {s.kind for s in finished}
    assert trace.SpanKind.CLIENT in kinds
    assert trace.SpanKind.SERVER in kinds
    server_span = next(s for s in finished if s.kind == trace.SpanKind.SERVER)
    client_span = next(s for s in finished if s.kind == trace.SpanKind.CLIENT)
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id


async def test_health_checks_are_not_traced(probe_server: Server, spans: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with create_channel(f"127.0.0.1:{probe_server.port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert not [s for s in spans.get_finished_spans() if "Health" in s.name]
