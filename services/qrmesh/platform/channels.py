"""Client channels to other services: traced, with a deadline on every call."""

from __future__ import annotations

import grpc

from qrmesh.platform.interceptors import DeadlineInterceptor
from qrmesh.platform.telemetry import client_interceptors

_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
]


def create_channel(target: str, *, default_deadline: float = 5.0) -> grpc.aio.Channel:
    """An insecure channel to `target` (host:port inside the mesh)."""
    interceptors = [*client_interceptors(), DeadlineInterceptor(default_deadline)]
    return grpc.aio.insecure_channel(target, options=_OPTIONS, interceptors=interceptors)
