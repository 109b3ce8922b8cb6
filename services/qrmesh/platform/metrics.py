"""Prometheus metrics: one registry per process, served at `/metrics` on a port of
its own (QRMESH_METRICS_PORT, default 9464; QRMESH_METRICS_HOST, default the
gRPC host).

- RPCs: every call a gRPC server handles (health checks excluded) is counted by
  service, method and status code (`grpc_server_handled_total`), and timed by
  method (`grpc_server_handling_seconds`).
- Readings: numbers that live objects keep anyway (a database pool, the
  redirect's plain-int counters, a stream consumer's lag) are read at scrape
  time from sources added with `READINGS.add`; nothing runs per request for
  them.
- `Buckets`: a latency histogram cheap enough for a hot path (a bisect and two
  additions, no lock), exposed through a reading.

The server runs on the event loop, so readings see the loop's objects between
two of its steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

log = logging.getLogger("qrmesh.metrics")

DEFAULT_PORT = 9464
"""QRMESH_METRICS_PORT when unset (the port OpenTelemetry's Prometheus exporter uses too)."""

REGISTRY = CollectorRegistry()
"""Every metric of this process."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

Source = Callable[[], Iterable[Metric]]


class Readings:
    """A collector over sources added and removed at run time; families of the same name are merged,
    so several objects of one kind (one per server in a test process) can report side by side."""

    def __init__(self) -> None:
        self._sources: dict[int, Source] = {}
        self._next = 0

    def add(self, source: Source) -> Callable[[], None]:
        """Read `source` at every scrape until the returned function is called."""
        key = self._next
        self._next += 1
        self._sources[key] = source

        def remove() -> None:
            self._sources.pop(key, None)

        return remove

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for source in list(self._sources.values()):
            try:
                families = list(source())
            except Exception:  # a broken source must not take /metrics down with it
                log.exception("a metrics source failed")
                continue
            for family in families:
                same = merged.get(family.name)
                if same is None:
                    merged[family.name] = family
                elif same.type == family.type:
                    same.samples.extend(family.samples)
        yield from merged.values()


READINGS = Readings()
REGISTRY.register(READINGS)


# -- cheap histograms for hot paths ----------------------------------------------------------------

LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds, from 100 us (a cached redirect) to 5 s."""


class Buckets:
    """Observations counted into fixed buckets with plain ints (not thread safe: one event loop)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at most le) per bound, then +Inf: what a histogram sample needs."""
        running = 0
        answer: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            answer.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return answer


def histogram(name: str, documentation: str, label: str, series: dict[str, Buckets]) -> HistogramMetricFamily:
    """A histogram family with one series per `label` value."""
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, buckets in series.items():
        family.add_metric([value], buckets.cumulative(), sum_value=buckets.total)
    return family


# -- gRPC ------------------------------------------------------------------------------------------

RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed by this server, by status code (health checks excluded).",
    ["grpc_service", "grpc_method", "grpc_code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Seconds from an RPC's arrival to its end, by method (health checks excluded).",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
_HEALTH = "/grpc.health.v1.Health/"

Context = grpc.aio.ServicerContext[Any, Any]


def _code(context: Context, error: BaseException | None) -> str:
    """The status the call ended with, as far as the server knows it."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC of known methods (unknown ones would let callers invent label values)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_HEALTH):
            return handler
        return _measured(handler, method)


def _measured(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    service, _, name = method.lstrip("/").partition("/")

    def done(context: Context, started: float, error: BaseException | None) -> None:
        RPC_SECONDS.labels(service, name).observe(time.perf_counter() - started)
        RPC_HANDLED.labels(service, name, _code(context, error)).inc()

    async def unary(inner: Any, request: Any, context: Context) -> Any:
        started = time.perf_counter()
        try:
            answer = await inner(request, context)
        except BaseException as exc:
            done(context, started, exc)
            raise
        done(context, started, None)
        return answer

    async def streaming(inner: Any, request: Any, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            if inspect.isasyncgenfunction(inner):
                async for item in inner(request, context):
                    yield item
            else:
                await inner(request, context)
        except BaseException as exc:
            done(context, started, exc)
            raise
        done(context, started, None)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            return await unary(inner_uu, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async for item in streaming(inner_us, request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            return await unary(inner_su, requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            async for item in streaming(inner_ss, requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


# -- database pools --------------------------------------------------------------------------------


def pool_readings(pool_name: str, engine: AsyncEngine) -> Source:
    """A source for the engine's connection pool: size, connections in use and idle."""
    pool = engine.sync_engine.pool

    def read() -> Iterator[Metric]:
        if not isinstance(pool, QueuePool):
            return
        size = GaugeMetricFamily(
            "qrmesh_db_pool_size", "Connections the pool keeps open (it may open as many again).", labels=["pool"]
        )
        size.add_metric([pool_name], pool.size())
        connections = GaugeMetricFamily(
            "qrmesh_db_pool_connections", "Open database connections, in use or idle.", labels=["pool", "state"]
        )
        connections.add_metric([pool_name, "in_use"], pool.checkedout())
        connections.add_metric([pool_name, "idle"], pool.checkedin())
        yield size
        yield connections

    return read


# -- the HTTP endpoint -----------------------------------------------------------------------------

_READ_TIMEOUT = 5.0
_MAX_HEAD = 16 * 1024


class MetricsServer:
    """`GET /metrics` in the Prometheus text (or OpenMetrics) format, one request per connection."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); the bound port."""
        bind = host.strip("[]")
        try:
            self._server = await asyncio.start_server(self._handle, bind, port, limit=_MAX_HEAD, reuse_address=True)
        except OSError as exc:
            raise OSError(
                f"cannot listen for metrics on {host}:{port} ({exc.strerror or exc}); "
                "set QRMESH_METRICS_PORT to a free port (0 picks one)"
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            writer.write(self._answer(head))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return _response(400, b"malformed request\n")
        method, target, _ = parts
        if target.split("?", 1)[0] != "/metrics":
            return _response(404, b"not found; metrics are at /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
        accept = ""
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return _response(200, body, content_type=content_type, head=method == "HEAD")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: bytes = b"",
    head: bool = False,
) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status].encode())
        + b"Content-Type: "
        + content_type.encode()
        + b"\r\nContent-Length: %d\r\n" % len(body)
        + extra
        + b"Connection: close\r\n\r\n"
        + (b"" if head else body)
    )
