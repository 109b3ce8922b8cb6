"""Prometheus metrics of real servers, scraped over HTTP from their `/metrics` port:
RPCs by method and code, renders, database pools, the redirect's scans and the
scan stream's lag."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Sequence

import grpc
import httpx
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import async_sessionmaker

from qrmesh.platform.database import create_engine
from qrmesh.platform.metrics import READINGS
from qrmesh.platform.server import Resources, Server, ServiceSpec, create_server
from qrmesh.platform.settings import Settings, SettingsError
from qrmesh.qr.scan_totals import ScanTotals
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc
from qrmesh.scans.v1 import scan_event_pb2

Request = qr_code_service_pb2.RenderQrCodeRequest
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
QR_SERVICE = "qrmesh.qr.v1.QrCodeService"


async def scrape(server: Server) -> Samples:
    """Every sample the server's /metrics shows, by name and labels."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{server.resources.ports['metrics']}/metrics")
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def test_every_service_serves_metrics_on_its_own_port(
    identity_server: Server, qr_server: Server, redirect_server: Server
) -> None:
    ports = {server.resources.ports["metrics"] for server in (identity_server, qr_server, redirect_server)}
    assert len(ports) == 3
    assert all(port > 0 for port in ports)
    for server in (identity_server, qr_server, redirect_server):
        port = server.resources.ports["metrics"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            text = await client.get("/metrics")
            assert text.status_code == 200
            assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "process_cpu_seconds_total" in text.text
            open_metrics = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
            assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
            assert open_metrics.text.endswith("# EOF\n")
            assert (await client.get("/")).status_code == 404
            refused = await client.post("/metrics")
            assert refused.status_code == 405
            assert refused.headers["allow"] == "GET, HEAD"


async def test_rpcs_are_counted_by_method_and_code_and_timed(qr_server: Server, qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    content = qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/metrics"))
    before = await scrape(qr_server)
    await stub.RenderQrCode(Request(content=content, format=Request.SVG))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RenderQrCode(Request(content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="ftp://x"))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await health_pb2_grpc.HealthStub(qr_channel).Check(health_pb2.HealthCheckRequest())
    after = await scrape(qr_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    method = {"grpc_service": QR_SERVICE, "grpc_method": "RenderQrCode"}
    assert delta("grpc_server_handled_total", **method, grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", **method, grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_handling_seconds_count", **method) == 2
    assert delta("grpc_server_handling_seconds_bucket", **method, le="+Inf") == 2
    assert delta("grpc_server_handling_seconds_sum", **method) > 0
    # Health checks are left out.
    assert not [labels for name, labels in after if ("grpc_service", "grpc.health.v1.Health") in labels]
    # Only the image that was made counts as a render.
    assert delta("qrmesh_qr_renders_total", format="svg", source="request") == 1
    assert delta("qrmesh_qr_renders_total", format="png", source="request") == 0


async def test_database_pools_are_shown(qr_server: Server, identity_server: Server, settings: Settings) -> None:
    samples = await scrape(qr_server)
    for pool in ("qr", "identity"):
        assert value(samples, "qrmesh_db_pool_size", pool=pool) == settings.db_pool_size
        # Migrations and the start-up check opened at least one connection, now back in the pool.
        open_connections = value(samples, "qrmesh_db_pool_connections", pool=pool, state="idle") + value(
            samples, "qrmesh_db_pool_connections", pool=pool, state="in_use"
        )
        assert open_connections >= 1


async def test_redirect_counts_outcomes_latency_and_lookups(redirect_server: Server) -> None:
    code = f"Missing{secrets.token_hex(4)}"
    before = await scrape(redirect_server)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{redirect_server.resources.ports['http']}") as client:
        for _ in range(2):
            assert (await client.get(f"/r/{code}")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
    after = await scrape(redirect_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("qrmesh_redirect_scans_total", outcome="unknown_code") == 2
    assert delta("qrmesh_redirect_scans_total", outcome="redirected") == 0
    # The first scan asked the qr service; the second found the answer ("no such code") in memory.
    assert delta("qrmesh_redirect_request_duration_seconds_count", path="slow") == 1
    assert delta("qrmesh_redirect_request_duration_seconds_count", path="fast") == 1
    assert delta("qrmesh_redirect_link_lookups_total", source="service") == 1
    assert delta("qrmesh_redirect_link_lookups_total", source="memory") >= 1
    assert delta("qrmesh_redirect_scan_events_total", result="recorded") == 2
    assert value(after, "qrmesh_redirect_redis_available") == 1
    assert "qrmesh_redirect_spool_files" in names(after)
    # Buckets are cumulative and end with every observation.
    slow = [
        value(after, "qrmesh_redirect_request_duration_seconds_bucket", path="slow", le=le)
        for le in ("0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf")
    ]
    assert slow == sorted(slow)
    assert slow[-1] == value(after, "qrmesh_redirect_request_duration_seconds_count", path="slow")


@pytest.fixture
async def stream(settings: Settings) -> AsyncIterator[tuple[redis.Redis, str]]:
    client = redis.from_url(settings.redis_url)
    name = f"test-metrics-{secrets.token_hex(6)}"
    yield client, name
    await client.delete(name)
    await client.aclose()


async def test_stream_lag_and_pending_are_read_from_redis(
    qr_server: Server, settings: Settings, stream: tuple[redis.Redis, str]
) -> None:
    client, name = stream
    engine = create_engine(settings.database_url, schema="qr")
    totals = ScanTotals(async_sessionmaker(engine), client, stream=name, group="metrics-test", consumer="me")
    remove = READINGS.add(totals.readings)
    try:
        await totals.ensure_group()
        for _ in range(3):
            event = scan_event_pb2.ScanEvent(event_id=secrets.token_hex(8), outcome=scan_event_pb2.ScanEvent.PAUSED)
            await client.xadd(name, {"event": event.SerializeToString()})
        await totals.observe()
        labels = {"stream": name, "group": "metrics-test"}
        samples = await scrape(qr_server)
        assert value(samples, "qrmesh_stream_lag", **labels) == 3
        assert value(samples, "qrmesh_stream_pending", **labels) == 0
        assert value(samples, "qrmesh_stream_length", stream=name) == 3

        # Another consumer takes two and never acknowledges them; this one counts the third.
        await client.xreadgroup("metrics-test", "other", {name: ">"}, count=2)
        assert await totals.step() == 0  # a paused code's scan adds nothing, but it is processed
        await totals.observe()
        samples = await scrape(qr_server)
        assert value(samples, "qrmesh_stream_lag", **labels) == 0
        assert value(samples, "qrmesh_stream_pending", **labels) == 2
        assert value(samples, "qrmesh_stream_processed_total", **labels) == 1
        assert ("qrmesh_qr_scans_counted_total", frozenset(labels.items())) in samples
        # The session's own consumer of the `scans` stream is shown too.
        assert ("qrmesh_stream_pending", frozenset({"stream": "scans", "group": "qr-scan-totals"}.items())) in samples
    finally:
        remove()
        await engine.dispose()
    assert ("qrmesh_stream_lag", frozenset(labels.items())) not in await scrape(qr_server)


def _no_services(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    return []


async def test_a_taken_metrics_port_stops_the_start_and_names_the_setting(
    settings: Settings, qr_server: Server
) -> None:
    taken = dataclasses.replace(settings, metrics_port=qr_server.resources.ports["metrics"])
    spec = ServiceSpec(name="probe", register=_no_services, uses_database=False, uses_redis=False, guarded=False)
    server, _ = await create_server(taken, spec)
    try:
        with pytest.raises(OSError, match="QRMESH_METRICS_PORT"):
            await server.start()
    finally:
        await server.stop(0)


def test_metrics_settings_come_from_the_environment() -> None:
    base = {"DATABASE_URL": "postgresql://x@localhost/db", "REDIS_URL": "redis://localhost"}
    default = Settings.from_env("qr", base)
    assert (default.metrics_host, default.metrics_port) == ("", 9464)
    chosen = Settings.from_env("qr", {**base, "QRMESH_METRICS_PORT": "0", "QRMESH_METRICS_HOST": "0.0.0.0"})
    assert (chosen.metrics_host, chosen.metrics_port) == ("0.0.0.0", 0)
    with pytest.raises(SettingsError, match="QRMESH_METRICS_PORT must be an integer"):
        Settings.from_env("qr", {**base, "QRMESH_METRICS_PORT": "ninety"})
    with pytest.raises(SettingsError, match="QRMESH_METRICS_PORT must be between 0 and 65535"):
        Settings.from_env("qr", {**base, "QRMESH_METRICS_PORT": "70000"})
