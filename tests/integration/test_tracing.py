"""Spans in one process: SQL statements and Redis commands get spans only inside a trace,
and a scan's event carries the redirect span's context (or the caller's, unsampled)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import redis.asyncio as redis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2


async def test_sql_and_redis_spans_only_inside_a_trace(qr_server: Server, spans: InMemorySpanExporter) -> None:
    engine, client = qr_server.resources.engine, qr_server.resources.redis
    assert engine is not None
    assert client is not None
    # Outside a trace (as a background loop runs): no SQL or Redis spans.
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    await client.get("qrmesh:tracing-test")
    outside = spans.get_finished_spans()
    assert not [s for s in outside if s.name == "GET" or (s.attributes or {}).get("db.query.text") == "SELECT 1"]

    with trace.get_tracer("tests").start_as_current_span("request") as request:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 2"))
        await client.get("qrmesh:tracing-test")
    parent = request.get_span_context().span_id
    inside = {s.name: s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == parent}
    assert set(inside) == {"SELECT qr", "GET"}
    sql = inside["SELECT qr"]
    assert sql.kind == trace.SpanKind.CLIENT
    assert sql.attributes is not None
    assert sql.attributes["db.query.text"] == "SELECT 2"
    assert sql.attributes["db.system.name"] == "postgresql"
    assert inside["GET"].kind == trace.SpanKind.CLIENT


async def _event(redis_url: str, short_code: str) -> scan_event_pb2.ScanEvent:
    """The scan event the redirect recorded for `short_code` (it is flushed within 50 ms)."""
    client = redis.from_url(redis_url)
    try:
        async with asyncio.timeout(5):
            while True:
                entries: Any = await client.xrevrange("scans", "+", "-", count=200)
                for _, fields in entries:
                    event = scan_event_pb2.ScanEvent.FromString(fields[b"event"])
                    if event.short_code == short_code:
                        return event
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_scan_event_carries_the_redirect_span(
    redirect_server: Server, spans: InMemorySpanExporter, base_settings: Settings
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    sampled, unsampled = f"Sampled{secrets.token_hex(3)}", f"Unsampled{secrets.token_hex(3)}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{redirect_server.resources.ports['http']}") as client:
        await client.get(f"/r/{sampled}", headers={"traceparent": f"00-{trace_id}-{caller}-01", "tracestate": "a=1"})
        await client.get(f"/r/{unsampled}", headers={"traceparent": f"00-{trace_id}-{caller}-00"})
        await client.get("/healthz")

    scan = next(
        s for s in spans.get_finished_spans() if s.attributes and s.attributes.get("url.path") == f"/r/{sampled}"
    )
    assert scan.kind == trace.SpanKind.SERVER
    assert scan.name == "GET /r/{code}"
    assert scan.parent is not None
    assert (format(scan.parent.trace_id, "032x"), format(scan.parent.span_id, "016x")) == (trace_id, caller)
    assert scan.attributes is not None
    assert scan.attributes["http.response.status_code"] == 404
    assert scan.attributes["qrmesh.scan.outcome"] == "UNKNOWN_CODE"
    # The ResolveLink call made while answering is a child of the scan's span.
    context = scan.get_span_context()
    assert context is not None
    children = [s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == context.span_id]
    assert any(s.kind == trace.SpanKind.CLIENT and "ResolveLink" in s.name for s in children)

    event = await _event(base_settings.redis_url, sampled)
    assert event.traceparent == f"00-{trace_id}-{context.span_id:016x}-01"
    assert event.tracestate == "a=1"
    # A caller that chose not to sample: no span is recorded, the event keeps the caller's context.
    assert not [
        s for s in spans.get_finished_spans() if s.attributes and s.attributes.get("url.path") == f"/r/{unsampled}"
    ]
    assert (await _event(base_settings.redis_url, unsampled)).traceparent == f"00-{trace_id}-{caller}-00"
    # Health checks are not traced.
    assert not [s for s in spans.get_finished_spans() if "healthz" in s.name]
