"""The qr service's long-lived objects, built once per process from its `Resources`."""

from __future__ import annotations

from qrmesh.billing.client import plans_for
from qrmesh.platform.server import Resources
from qrmesh.qr.batches import BatchConfig, Batches
from qrmesh.qr.scan_totals import ScanTotals
from qrmesh.qr.service import QrCodes


def qr_codes_for(resources: Resources) -> QrCodes:
    """The stored-code operations over the process's database and Redis; background work starts and
    stops with the server (link publishing, scan totals)."""
    if resources.engine is None or resources.redis is None:
        raise RuntimeError("the qr service needs its database and Redis")
    codes = QrCodes(
        resources.engine,
        resources.redis,
        public_base_url=resources.settings.public_base_url,
        plans=plans_for(resources),
        events_stream=resources.settings.events_stream,
    )
    totals = ScanTotals(codes.sessions, resources.redis)
    resources.on_start.append(codes.start)
    resources.on_start.append(totals.start)
    resources.on_close.append(codes.close)
    resources.on_close.append(totals.close)
    return codes


def batches_for(resources: Resources, codes: QrCodes) -> Batches:
    """Bulk generation over `codes`; its chunk workers and sweeper start and stop with the server."""
    batches = Batches(codes, BatchConfig.from_settings(resources.settings))
    resources.on_start.append(batches.start)
    resources.on_stopping.append(batches.stopping)
    resources.on_close.append(batches.close)
    return batches
