"""The redirect service: answers scans of dynamic codes over HTTP (behind the edge's
`/r/{code}` route) and records each one. Its gRPC server carries health and
reflection only: nothing calls it by RPC."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import grpc

from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.redirect.config import RedirectConfig
from qrmesh.redirect.events import ScanRecorder
from qrmesh.redirect.http import HttpServer, ScanApp
from qrmesh.redirect.resolver import LinkResolver

GRPC_SERVICES: list[str] = []


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.setblocking(False)
    return sock


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
    recorder = ScanRecorder(resources.redis, config.spool_dir, maxlen=config.stream_maxlen or None)
    app = ScanApp(resolver, recorder, config, throttle=resources.redis)
    http = HttpServer(app, _listen(config.http_host, config.http_port))
    resources.ports["http"] = http.port

    async def start() -> None:
        await recorder.start()
        await resolver.start()
        await http.start()

    async def stop_http() -> None:
        await http.stop(settings.shutdown_grace)

    resources.on_start.append(start)
    # on_close runs in reverse: stop answering, then stop resolving, then flush every recorded scan.
    resources.on_close.extend([recorder.close, resolver.close, stop_http])
    return GRPC_SERVICES


SPEC = ServiceSpec(name="redirect", register=register, uses_database=False, access=None)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the redirect; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
