"""OpenTelemetry, configured in one place.

Spans for every gRPC call (server and client, W3C trace context on the wire),
health checks excluded. Traces are exported over OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set, and nowhere otherwise.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_lock = threading.Lock()
_provider: TracerProvider | None = None


def configure_tracing(
    service: str, otlp_endpoint: str | None, *, extra_processor: SpanProcessor | None = None
) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return it."""
    global _provider
    with _lock:
        if _provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": f"qrmesh-{service}"}))
            if otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
            trace.set_tracer_provider(provider)
            _provider = provider
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
        return _provider


def shutdown_tracing() -> None:
    """Flush and stop exporting (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def _not_health() -> Any:
    return filters.negate(filters.health_check())


def server_interceptor() -> Any:
    """A grpc.aio server interceptor that opens a span per RPC (not for health checks)."""
    return aio_server_interceptor(filter_=_not_health())


def client_interceptors() -> list[Any]:
    """grpc.aio client interceptors that open a span per call and propagate context."""
    return list(aio_client_interceptors(filter_=_not_health()))


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span, hex encoded, if any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
