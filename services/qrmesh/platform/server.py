"""Server bootstrap for any service: grpc.aio with health, reflection,
interceptors, database and Redis, metrics and tracing, and graceful shutdown.

A service describes itself with a `ServiceSpec`; `create_server(settings,
spec)` builds and binds the server (port 0 picks a free port) and `serve` runs
it until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.platform.auth import AccessBackend, ApiKeyInfo, Guard, Role, policies_for
from qrmesh.platform.cache import create_redis
from qrmesh.platform.database import create_engine, migrate
from qrmesh.platform.errors import Unavailable
from qrmesh.platform.interceptors import ErrorInterceptor
from qrmesh.platform.metrics import READINGS, MetricsInterceptor, MetricsServer, pool_readings
from qrmesh.platform.ratelimit import RateLimiter, RatePolicy, limiter_for
from qrmesh.platform.settings import Settings
from qrmesh.platform.telemetry import configure_tracing, instrument_engine, instrument_redis, server_interceptor

log = logging.getLogger("qrmesh.server")

_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


@dataclass(slots=True)
class Resources:
    """What a servicer may use: settings and the process's database and Redis clients."""

    settings: Settings
    engine: AsyncEngine | None
    redis: redis.Redis | None
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run in order once migrations are applied, before the service reports SERVING
    (start background workers here)."""
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run in reverse order on shutdown, after in-flight RPCs, before Redis and the
    database close (stop workers, flush buffers here)."""
    ports: dict[str, int] = field(default_factory=dict)
    """Extra listening ports a service opened besides gRPC (e.g. "http"; "metrics" once started)."""
    on_stopping: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run in order when shutdown begins, before in-flight RPCs are waited for (end streams that
    would otherwise stay open until the grace period runs out, e.g. live feeds)."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to build one service."""

    name: str
    """Short name, e.g. "qr"; also its database schema."""
    register: Callable[[grpc.aio.Server, Resources], Sequence[str]]
    """Adds the servicers to the server; returns their full gRPC service names."""
    migrations: Path | None = None
    """The service's Alembic folder; None if it has no tables."""
    uses_database: bool = True
    uses_redis: bool = True
    access: Callable[[Resources], AccessBackend] | None = None
    """Where callers are verified (public keys, API keys, roles); without one only
    public RPCs can succeed."""
    guarded: bool = True
    """Enforce the policies declared in the contracts; only servers without
    contracts (test doubles) turn this off."""
    rate_policy: Callable[[Resources], RatePolicy] | None = None
    """The rates of users and API keys (e.g. by plan); None: the settings' (QRMESH_RATE_*).
    Guarded calls are limited in Redis; other services and health checks never are."""


class NoAccess:
    """The backend of a service that was given none: it can verify nobody."""

    async def public_keys(self, *, refresh: bool = False) -> Mapping[str, Any]:
        raise Unavailable("this service cannot verify callers (no access backend)", reason="NO_ACCESS_BACKEND")

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        raise Unavailable("this service cannot verify callers (no access backend)", reason="NO_ACCESS_BACKEND")

    async def role(self, organization: str, user: str) -> Role | None:
        raise Unavailable("this service cannot verify callers (no access backend)", reason="NO_ACCESS_BACKEND")


class Server:
    """A built service: the grpc.aio server plus its health and resources."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        spec: ServiceSpec,
        resources: Resources,
        services: Sequence[str],
        port: int,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.grpc = grpc_server
        self.rate_limiter = rate_limiter
        """Charges guarded calls to their caller's bucket (None when the server is not guarded)."""
        self.spec = spec
        self.resources = resources
        self.services = tuple(services)
        self.port = port
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, grpc_server)
        self.metrics = MetricsServer()
        self._unwatch: list[Callable[[], None]] = []
        self._stopped = False

    async def start(self) -> None:
        """Serve /metrics, migrate, check dependencies, start serving, then report SERVING."""
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        resources = self.resources
        settings = resources.settings
        resources.ports["metrics"] = await self.metrics.start(
            settings.metrics_host or settings.host, settings.metrics_port
        )
        if resources.engine is not None:
            self._unwatch.append(READINGS.add(pool_readings(self.spec.name, resources.engine)))
            if self.spec.migrations is not None:
                await migrate(resources.engine, self.spec.migrations, self.spec.name)
            async with resources.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        if resources.redis is not None:
            await resources.redis.ping()
        for hook in resources.on_start:
            await hook()
        await self.grpc.start()
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={"port": self.port, "metrics_port": resources.ports["metrics"], "services": ",".join(self.services)},
        )

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within `grace`, then close resources."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        for stopping in self.resources.on_stopping:
            await stopping()
        await self.grpc.stop(self.resources.settings.shutdown_grace if grace is None else grace)
        for close in reversed(self.resources.on_close):
            await close()
        if self.resources.redis is not None:
            await self.resources.redis.aclose()
        if self.resources.engine is not None:
            await self.resources.engine.dispose()
        for unwatch in self._unwatch:
            unwatch()
        await self.metrics.stop()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()


async def create_server(settings: Settings, spec: ServiceSpec) -> tuple[Server, int]:
    """Build and bind a server for `spec`; call `start()` to serve."""
    configure_tracing(spec.name, settings.otlp_endpoint)
    # The guard learns its policies once the servicers are registered.
    guard = Guard({}, NoAccess(), service_secret=settings.service_secret)
    # Its policy and Redis client are set once the resources exist.
    limiter = limiter_for(settings, None) if spec.guarded else None
    # Outermost first: metrics time the whole call and see the status the error interceptor chose.
    interceptors: list[Any] = [
        MetricsInterceptor(),
        server_interceptor(),
        ErrorInterceptor(guard if spec.guarded else None, limiter),
    ]
    grpc_server = grpc.aio.server(interceptors=interceptors, options=_SERVER_OPTIONS)
    engine = (
        create_engine(settings.database_url, schema=spec.name, pool_size=settings.db_pool_size)
        if spec.uses_database
        else None
    )
    if engine is not None:
        instrument_engine(engine, database=spec.name)
    client = create_redis(settings.redis_url) if spec.uses_redis else None
    if client is not None:
        instrument_redis(client)
    resources = Resources(settings=settings, engine=engine, redis=client)
    services = spec.register(grpc_server, resources)
    if spec.guarded:
        backend = spec.access(resources) if spec.access is not None else NoAccess()
        guard.policies = policies_for(services)
        guard.backend = backend
        guard.service_secret = settings.service_secret
        closer = getattr(backend, "close", None)
        if closer is not None:
            resources.on_close.append(closer)
    if limiter is not None:
        if spec.rate_policy is not None:
            limiter.policy = spec.rate_policy(resources)
        limiter.client = resources.redis
    reflection.enable_server_reflection(
        [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        grpc_server,
    )
    port = grpc_server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    server = Server(grpc_server, spec, resources, services, port, limiter)
    return server, port


async def serve(
    settings: Settings, spec: ServiceSpec, *, on_ready: Callable[[Server], Awaitable[None]] | None = None
) -> None:
    """Run a service until SIGTERM or SIGINT, then shut down gracefully.

    `on_ready(server)` runs once the service reports SERVING.
    """
    server, _ = await create_server(settings, spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    if on_ready is not None:
        await on_ready(server)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
    await server.stop()
