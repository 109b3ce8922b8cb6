"""OpenTelemetry, configured in one place.

Spans for every gRPC call (server and client, W3C trace context on the wire),
health checks excluded; for SQL statements and Redis commands made inside a
trace (a background loop's queries start no trace of their own); and, in the
services that own them, for the redirect's scans and the stream consumers' work
(the trace context travels inside the stream entries). Traces are exported over
OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set, and nowhere otherwise; the
standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG and OTEL_BSP_* variables
apply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporting = False
_propagator = TraceContextTextMapPropagator()
_SQL_TEXT_LIMIT = 2048


def configure_tracing(
    service: str, otlp_endpoint: str | None, *, extra_processor: SpanProcessor | None = None
) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return it (adding `extra_processor`)."""
    global _provider, _exporting
    with _lock:
        if _provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": f"qrmesh-{service}"}))
            if otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
                _exporting = True
            trace.set_tracer_provider(provider)
            _provider = provider
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
            _exporting = True
        return _provider


def tracing_enabled() -> bool:
    """Whether finished spans go anywhere (an OTLP endpoint or another processor is configured).

    Code on a hot path makes spans of its own only when this is true."""
    return _exporting


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


# -- trace context carried in messages -------------------------------------------------------------


def extract_context(traceparent: str, tracestate: str = "") -> otel_context.Context | None:
    """The context a W3C `traceparent` (and `tracestate`) names; None when it names none (empty or malformed)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}
    extracted = _propagator.extract(carrier)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def span_context_of(traceparent: str, tracestate: str = "") -> trace.SpanContext | None:
    """The remote span a W3C `traceparent` names, if valid (for links)."""
    extracted = extract_context(traceparent, tracestate)
    return None if extracted is None else trace.get_current_span(extracted).get_span_context()


def w3c_headers(span_context: trace.SpanContext) -> tuple[str, str]:
    """`traceparent` and `tracestate` values that name this span."""
    traceparent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    return traceparent, span_context.trace_state.to_header()


# -- spans only inside a trace ---------------------------------------------------------------------


def _in_trace(context: otel_context.Context | None) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


class _ChildOnlyTracer(trace.Tracer):
    """Starts spans only under an active span: commands a background loop sends (a blocking
    XREADGROUP every two seconds, a batch of scan events) start no trace of their own."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        if not _in_trace(context):
            return trace.INVALID_SPAN
        return self._tracer.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # a plain context manager; the base's type is private
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        if not _in_trace(context):
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception, end_on_exit
        ) as span:
            yield span


class _ChildOnlyProvider(trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        tracer = trace.get_tracer(instrumenting_module_name, instrumenting_library_version, schema_url=schema_url)
        return _ChildOnlyTracer(tracer)


def instrument_redis(client: Any) -> None:
    """Spans for the commands and pipelines this Redis client sends inside a trace (nothing when not tracing)."""
    if not _exporting:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=_ChildOnlyProvider())


def instrument_engine(engine: AsyncEngine, *, database: str) -> None:
    """Spans for the SQL statements this engine runs inside a trace (nothing when not tracing)."""
    if not _exporting:
        return
    tracer = trace.get_tracer("qrmesh.sql")
    url = engine.url
    base: dict[str, str | int] = {"db.system.name": "postgresql", "db.namespace": f"{url.database or ''}|{database}"}
    if url.host:
        base["server.address"] = url.host
    if url.port:
        base["server.port"] = url.port

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if context is None or not _in_trace(None):
            return
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        span = tracer.start_span(
            f"{operation} {database}",
            kind=SpanKind.CLIENT,
            attributes={**base, "db.operation.name": operation, "db.query.text": statement[:_SQL_TEXT_LIMIT]},
        )
        context._qrmesh_span = span

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        span = getattr(context, "_qrmesh_span", None)
        if span is not None:
            context._qrmesh_span = None
            span.end()

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        span = getattr(context, "_qrmesh_span", None)
        if span is not None:
            context._qrmesh_span = None
            error = exception_context.original_exception
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:256]))
            span.end()

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)
