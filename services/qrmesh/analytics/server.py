"""The analytics service: scan ingestion from the scans stream into partitioned raw scans and rollups,
queries over them, the live feed, exports, and the dead letters of ingestion (internal)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from qrmesh.analytics.admin_servicer import AnalyticsAdminServicer
from qrmesh.analytics.alert_rules import AlertRules
from qrmesh.analytics.alert_servicer import AlertServicer
from qrmesh.analytics.alerts import AlertEvaluator
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.enrich import CityDatabase, Enricher
from qrmesh.analytics.ingest import Ingestion
from qrmesh.analytics.retention import Upkeep
from qrmesh.analytics.servicer import AnalyticsServicer
from qrmesh.analytics.v1 import alerts_pb2, alerts_pb2_grpc, analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.billing.client import plan_gated, plan_rates
from qrmesh.identity.client import remote_access
from qrmesh.platform.server import Resources, Server, ServiceSpec
from qrmesh.platform.server import create_server as _create_server
from qrmesh.platform.settings import Settings

GRPC_SERVICES = [
    analytics_service_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("AnalyticsService", "AnalyticsAdminService")
] + [alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name]


def register(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    """Add AnalyticsService and AnalyticsAdminService; ingestion and upkeep start and stop with the server."""
    if resources.engine is None or resources.redis is None:
        raise RuntimeError("the analytics service needs its database and Redis")
    config = AnalyticsConfig.from_settings(resources.settings)
    cities = CityDatabase(config.geoip_city_db) if config.geoip_city_db is not None else None
    ingestion = Ingestion(resources.engine, resources.redis, config, Enricher(cities))
    settings = resources.settings
    alerts = AlertEvaluator(
        resources.engine,
        resources.redis,
        events_stream=settings.events_stream,
        mail_stream=settings.mail_stream,
        public_base_url=settings.public_base_url,
    )
    for consumer in ingestion.consumers:
        consumer.alerts = alerts
    upkeep = Upkeep(
        resources.engine,
        config.retention_days,
        on_longest=ingestion.set_retention,
        client=resources.redis,
        stream=config.stream,
    )
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(resources), server)
    analytics_service_pb2_grpc.add_AnalyticsAdminServiceServicer_to_server(
        AnalyticsAdminServicer(resources.engine, config.stream), server
    )
    alerts_pb2_grpc.add_AlertServiceServicer_to_server(
        AlertServicer(AlertRules(resources.engine, resources.redis)), server
    )

    async def close_cities() -> None:
        if cities is not None:
            cities.close()

    # The upkeep's first round runs in the background; consumers create the partitions they need themselves.
    resources.on_start.extend([upkeep.start, ingestion.start, alerts.start])
    # on_close runs in reverse: alert redelivery stops, consumers finish their batch, then upkeep stops.
    resources.on_close.extend([close_cities, upkeep.close, ingestion.close, alerts.close])
    return GRPC_SERVICES


SPEC = ServiceSpec(
    name="analytics",
    register=register,
    migrations=Path(__file__).with_name("migrations"),
    # API keys work only on plans with API access; users and keys get their plan's request rates.
    access=lambda resources: plan_gated(remote_access(resources), resources),
    rate_policy=plan_rates,
)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build and bind the analytics service; `await server.start()` serves it."""
    return await _create_server(settings, SPEC)
