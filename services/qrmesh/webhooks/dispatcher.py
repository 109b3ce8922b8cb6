"""The delivery loop: leases due deliveries from PostgreSQL (FOR UPDATE SKIP LOCKED, so replicas share the
queue), sends each signed, and records the attempt. At most `concurrency` deliveries are in flight per
process; the loop wakes when this process queues something and otherwise polls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from qrmesh.platform import tasks
from qrmesh.platform.telemetry import extract_context
from qrmesh.webhooks.domain import envelope
from qrmesh.webhooks.domain.signing import sign
from qrmesh.webhooks.sender import Sender
from qrmesh.webhooks.service import Webhooks
from qrmesh.webhooks.store import DueDelivery

log = logging.getLogger("qrmesh.webhooks.dispatcher")
tracer = trace.get_tracer("qrmesh.webhooks")

USER_AGENT = "qrmesh-webhooks/1"


def delivery_headers(due: DueDelivery, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (signed now)."""
    body = due.delivery.payload.encode()
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": due.delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(due.secret, due.delivery.event_id, timestamp, body),
        "webhook-version": envelope.VERSION,
    }


class Dispatcher:
    """Runs deliveries until stopped."""

    def __init__(self, webhooks: Webhooks, sender: Sender) -> None:
        self.webhooks = webhooks
        self.sender = sender
        self.config = webhooks.config
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        webhooks.on_queued.append(self._wake.set)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks-dispatcher")

    async def close(self) -> None:
        await tasks.stop(self._task)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.config.total_timeout + 2)
        for task in list(self._in_flight):
            await tasks.stop(task)
        await self.sender.close()

    async def _run(self) -> None:
        last_prune = 0.0
        while True:
            claimed = 0
            try:
                free = self.config.concurrency - len(self._in_flight)
                if free > 0:
                    due = await self.webhooks.claim(free)
                    claimed = len(due)
                    for item in due:
                        task = asyncio.create_task(self._deliver(item), name=f"webhook-delivery-{item.delivery.id}")
                        self._in_flight.add(task)
                        task.add_done_callback(self._done)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    await self.webhooks.forget_old_scans()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook dispatcher round failed")
            if claimed and len(self._in_flight) < self.config.concurrency:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()  # room for another delivery

    async def _deliver(self, due: DueDelivery) -> None:
        delivery = due.delivery
        parent = extract_context(delivery.traceparent, delivery.tracestate) if delivery.traceparent else None
        with tracer.start_as_current_span(
            "deliver webhook",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "qrmesh.webhook": delivery.webhook_id,
                "qrmesh.event_type": delivery.event_type,
                "qrmesh.delivery.attempt": delivery.attempt_count + 1,
            },
        ) as span:
            try:
                headers = delivery_headers(due, int(time.time()))
                result = await self.sender.send(due.url, headers, delivery.payload.encode())
                span.set_attribute("http.response.status_code", result.status_code)
                if result.error:
                    span.set_attribute("error.type", result.error[:200])
                await self.webhooks.record(due, result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery failed unexpectedly", extra={"delivery": delivery.id})
