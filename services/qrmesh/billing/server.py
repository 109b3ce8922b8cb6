"""The billing service: plans, subscriptions, entitlements, payment provider events and the job that
moves subscriptions through their life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.billing.config import BillingConfig
from qrmesh.billing.service import Billing
from qrmesh.billing.servicer import BillingAdminServicer, BillingServicer, EntitlementServicer
from qrmesh.billing.usage import UsageClient
from qrmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from qrmesh.identity.client import remote_access
from qrmesh.platform import tasks
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings

log = logging.getLogger("qrmesh.billing.server")

GRPC_SERVICES = [
    billing_service_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("BillingService", "EntitlementService", "BillingAdminService")
]

_INSTANCES: dict[int, tuple[Resources, Billing]] = {}


def billing_for(resources: Resources) -> Billing:
    """The process's one `Billing` for `resources` (tests reach it to drive the job's clock)."""
    found = _INSTANCES.get(id(resources))
    if found is not None and found[0] is resources:
        return found[1]
    if resources.engine is None or resources.redis is None:
        raise RuntimeError("the billing service needs its database and Redis")
    settings = resources.settings
    config = BillingConfig.from_settings(settings)
    usage = UsageClient(config.usage_addresses, service=settings.service, service_secret=settings.service_secret)
    billing = Billing(resources.engine, resources.redis, config, usage=usage)
    _INSTANCES[id(resources)] = (resources, billing)
    job: list[asyncio.Task[None]] = []

    async def run_job() -> None:
        while True:
            try:
                await billing.run_job()
            except Exception:
                log.exception("billing job round failed")
            await asyncio.sleep(config.job_interval)

    async def start() -> None:
        await billing.load_plans()
        job.append(asyncio.create_task(run_job(), name="billing-job"))

    async def stop() -> None:
        for task in job:
            await tasks.stop(task)
        await usage.close()
        _INSTANCES.pop(id(resources), None)

    resources.on_start.append(start)
    resources.on_close.append(stop)
    return billing


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add BillingService, EntitlementService and BillingAdminService, sharing one `Billing` (served on
    QRMESH_BILLING_SOCKET too when it is set)."""
    billing = billing_for(resources)
    if billing.config.socket and server.add_insecure_port(f"unix:{billing.config.socket}") == 0:
        raise OSError(f"could not bind the Unix socket {billing.config.socket}")
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(billing), server)
    billing_service_pb2_grpc.add_EntitlementServiceServicer_to_server(EntitlementServicer(billing), server)
    billing_service_pb2_grpc.add_BillingAdminServiceServicer_to_server(BillingAdminServicer(billing), server)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="billing", register=register, migrations=Path(__file__).with_name("migrations"), access=remote_access
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the billing service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
