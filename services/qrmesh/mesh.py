"""The services that make up qrmesh, for the CLI, the local stack and the edge."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One service: where its server module lives and its default port."""

    name: str
    module: str
    default_port: int
    http_port: int | None = None
    """Default port of the plain HTTP server the edge routes to (the redirect's), if it has one."""

    def load(self) -> ModuleType:
        """The service's server module (it has SPEC and create_server)."""
        return importlib.import_module(self.module)

    def grpc_services(self) -> list[str]:
        """Full names of the gRPC services it serves, read from its contracts."""
        module = self.load()
        names: list[str] = module.GRPC_SERVICES
        return names


# In start order: identity first, since every other service verifies callers with it;
# billing after qr and identity, whose usage it counts (they reach billing at an address given
# before it starts); the redirect after qr, which it asks about links; analytics last, consuming the
# redirect's scans; webhooks after it, consuming events and scans.
SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in [
        ServiceEntry(name="identity", module="qrmesh.identity.server", default_port=50052),
        ServiceEntry(name="qr", module="qrmesh.qr.server", default_port=50051),
        ServiceEntry(name="billing", module="qrmesh.billing.server", default_port=50055),
        ServiceEntry(name="redirect", module="qrmesh.redirect.server", default_port=50053, http_port=8081),
        ServiceEntry(name="analytics", module="qrmesh.analytics.server", default_port=50054),
        ServiceEntry(name="webhooks", module="qrmesh.webhooks.server", default_port=50056),
    ]
}
