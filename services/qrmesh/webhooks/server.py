"""The webhooks service: subscriptions, the delivery queue and its dispatcher, and the consumers that turn
events and scans into deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.billing.client import plan_gated, plan_rates, plans_for
from qrmesh.identity.client import remote_access
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings
from qrmesh.webhooks import mailer
from qrmesh.webhooks.config import WebhooksConfig
from qrmesh.webhooks.dispatcher import Dispatcher
from qrmesh.webhooks.ingest import EventsConsumer, ScansConsumer
from qrmesh.webhooks.sender import Sender
from qrmesh.webhooks.service import Webhooks
from qrmesh.webhooks.servicer import WebhookServicer
from qrmesh.webhooks.v1 import webhook_service_pb2, webhook_service_pb2_grpc

GRPC_SERVICES = [webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name]

_INSTANCES: dict[int, tuple[Resources, Webhooks]] = {}


def webhooks_for(resources: Resources) -> Webhooks:
    """The process's one `Webhooks`; its dispatcher and consumers start and stop with the server."""
    found = _INSTANCES.get(id(resources))
    if found is not None and found[0] is resources:
        return found[1]
    if resources.engine is None or resources.redis is None:
        raise RuntimeError("the webhooks service needs its database and Redis")
    settings = resources.settings
    config = WebhooksConfig.from_settings(settings)
    webhooks = Webhooks(
        resources.engine, resources.redis, config, plans=plans_for(resources), mail_stream=settings.mail_stream
    )
    _INSTANCES[id(resources)] = (resources, webhooks)
    sender = Sender(
        connect_timeout=config.connect_timeout,
        total_timeout=config.total_timeout,
        max_redirects=config.max_redirects,
        allow_private=config.allow_private_targets,
    )
    consumers = [
        EventsConsumer(webhooks, resources.redis, settings.events_stream),
        ScansConsumer(webhooks, resources.redis),
    ]
    for consumer in consumers:
        resources.on_start.append(consumer.start)
        resources.on_close.append(consumer.close)
    if config.dispatch:
        dispatcher = Dispatcher(webhooks, sender)
        resources.on_start.append(dispatcher.start)
        resources.on_close.append(dispatcher.close)

    async def release() -> None:
        _INSTANCES.pop(id(resources), None)

    resources.on_close.append(release)
    return webhooks


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add WebhookService; the mailer (mail stream to SMTP) runs in this service too."""
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks_for(resources)), server)
    mailer.attach(resources)
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="webhooks",
    register=register,
    migrations=Path(__file__).with_name("migrations"),
    # API keys work only on plans with API access; users and keys get their plan's request rates.
    access=lambda resources: plan_gated(remote_access(resources), resources),
    rate_policy=plan_rates,
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the webhooks service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
