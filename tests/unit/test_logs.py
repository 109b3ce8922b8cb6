"""JSON logs carry the service, the message, extras and the active trace ids."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace

from qrmesh.platform.logs import JsonFormatter


def record(message: str, **extra: object) -> logging.LogRecord:
    item = logging.LogRecord("qrmesh.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(item, key, value)
    return item


def test_json_line_with_extras_outside_a_span() -> None:
    line = json.loads(JsonFormatter("qr").format(record("serving", port=50051)))
    assert line["service"] == "qr"
    assert line["level"] == "info"
    assert line["message"] == "serving"
    assert line["port"] == 50051
    assert "trace_id" not in line


def test_trace_and_span_ids_of_the_active_span() -> None:
    with trace.get_tracer("tests").start_as_current_span("work") as span:
        line = json.loads(JsonFormatter("qr").format(record("inside")))
        context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
