"""The redirect service: answers scans of dynamic codes over HTTP (behind the edge's
`/r/{code}` route) and records each one. Its gRPC server carries health and
reflection only: nothing calls it by RPC."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence

import grpc
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from qrmesh.platform.metrics import READINGS, histogram
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.redirect.config import RedirectConfig
from qrmesh.redirect.events import ScanRecorder
from qrmesh.redirect.http import HttpServer, ScanApp
from qrmesh.redirect.resolver import LinkResolver
from qrmesh.redirect.suspensions import Suspensions
from qrmesh.scans.v1 import scan_event_pb2

GRPC_SERVICES: list[str] = []
_OUTCOMES = {number: name.lower() for name, number in scan_event_pb2.ScanEvent.Outcome.items() if number}


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.setblocking(False)
    return sock


def readings(app: ScanApp, recorder: ScanRecorder, resolver: LinkResolver) -> Iterator[Metric]:
    """The redirect's metrics, read from the counters it keeps anyway (scrape time only)."""
    scans = CounterMetricFamily("qrmesh_redirect_scans", "Scans answered, by outcome.", labels=["outcome"])
    for number, name in _OUTCOMES.items():
        scans.add_metric([name], app.outcomes[number])
    yield scans
    yield histogram(
        "qrmesh_redirect_request_duration_seconds",
        "Seconds from a scan's request to its answer; path=fast: answered from memory at once, "
        "slow: waited for Redis, the qr service or a password check.",
        "path",
        {"fast": app.fast_latency, "slow": app.slow_latency},
    )
    lookups = CounterMetricFamily(
        "qrmesh_redirect_link_lookups", "Links found, by where: memory, redis or the qr service.", labels=["source"]
    )
    for source, count in resolver.lookups.items():
        lookups.add_metric([source], count)
    yield lookups
    stats = recorder.stats
    events = CounterMetricFamily(
        "qrmesh_redirect_scan_events",
        "Scan events by what happened to them: recorded (buffered), written to the stream, spooled to disk, "
        "replayed from the spool, dropped.",
        labels=["result"],
    )
    for result, count in (
        ("recorded", stats.recorded),
        ("written", stats.written),
        ("spooled", stats.spooled),
        ("replayed", stats.replayed),
        ("dropped", stats.dropped),
    ):
        events.add_metric([result], count)
    yield events
    yield GaugeMetricFamily("qrmesh_redirect_scan_events_buffered", "Scan events waiting in memory.", stats.buffered)
    yield GaugeMetricFamily(
        "qrmesh_redirect_spool_files", "Spool files waiting to be replayed into the stream.", stats.spool_files
    )
    yield CounterMetricFamily(
        "qrmesh_redirect_stream_writes", "Batches of scan events sent to Redis, one round trip each.", stats.round_trips
    )
    yield GaugeMetricFamily(
        "qrmesh_redirect_redis_available",
        "1 while Redis takes scan events, 0 while they go to the spool.",
        1 if recorder.redis_available else 0,
    )


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    settings = resources.settings
    config = RedirectConfig.from_settings(settings)
    resolver = LinkResolver(
        resources.redis,
        config.qr_address,
        service=settings.service,
        service_secret=settings.service_secret,
        max_entries=config.cache_entries,
    )
    if resources.redis is None:
        raise RuntimeError("the redirect needs Redis (its spec says uses_redis)")
    recorder = ScanRecorder(
        resources.redis, config.spool_dir, stream=config.stream, maxlen=config.stream_maxlen or None
    )
    suspended = Suspensions(resources.redis)
    app = ScanApp(resolver, recorder, config, throttle=resources.redis, suspended=suspended)
    http = HttpServer(app, _listen(config.http_host, config.http_port))
    resources.ports["http"] = http.port

    unwatch: list[Callable[[], None]] = []

    async def start() -> None:
        unwatch.append(READINGS.add(lambda: readings(app, recorder, resolver)))
        await recorder.start()
        await resolver.start()
        await suspended.start()
        await http.start()

    async def stop_http() -> None:
        await http.stop(settings.shutdown_grace)

    async def stop_metrics() -> None:
        while unwatch:
            unwatch.pop()()

    resources.on_start.append(start)
    # on_close runs in reverse: stop answering, then stop resolving, then flush every recorded scan, then
    # stop reporting.
    resources.on_close.extend([stop_metrics, recorder.close, suspended.close, resolver.close, stop_http])
    return GRPC_SERVICES


SPEC = ServiceSpec(name="redirect", register=register, uses_database=False, access=None)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the redirect; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
