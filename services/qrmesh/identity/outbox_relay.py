"""The outbox relay: hands mail queued in identity's `outbox` table to the mail stream.

Identity queues mail (verification, password reset, invitations) in the same transaction as the change it
is about, so a mail exists if and only if the change committed. This relay, a background task of the
identity service, takes unsent rows in id order (FOR UPDATE SKIP LOCKED, so replicas share the work without
sending a row twice at once), appends each to the mail stream (QRMESH_MAIL_STREAM) as a
`qrmesh.events.v1.Mail`, and marks them relayed in the same transaction once the append succeeded. A crash
between the append and the commit appends the rows again on the next round; each carries the stable id
stored with its row, so the mailer sends it once.

It wakes right after a commit that queued mail (`Identity.mail_queued`) and every few seconds otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from datetime import UTC, datetime

import redis.asyncio as redis
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qrmesh.events.v1 import event_pb2
from qrmesh.identity import store
from qrmesh.platform import events, tasks
from qrmesh.platform.ids import uuid7
from qrmesh.platform.telemetry import w3c_headers

log = logging.getLogger("qrmesh.identity.outbox_relay")

BATCH = 100
"""Rows relayed per transaction."""
INTERVAL = 5.0
"""Seconds between two looks at the outbox when nobody wakes the relay."""
RETRY_MAX = 30.0
_NAMESPACE = uuid.UUID("6f7c3b0e-5d1a-4c55-9a57-1d2a9f3e8b41")
_LINK = re.compile(r"https?://\S+")


def mail_origin() -> dict[str, str]:
    """A new mail id and the current span's trace context, stored with an outbox row."""
    context = trace.get_current_span().get_span_context()
    traceparent, tracestate = w3c_headers(context) if context.is_valid else ("", "")
    return {"mail_id": uuid7(), "traceparent": traceparent, "tracestate": tracestate}


def mail_id(row: store.OutboxMail) -> str:
    """The row's stable mail id (derived from its id and time for rows queued before ids were stored)."""
    return row.mail_id or str(uuid.uuid5(_NAMESPACE, f"identity-outbox:{row.id}:{row.created_at.isoformat()}"))


def to_mail(row: store.OutboxMail) -> event_pb2.Mail:
    """The `Mail` an outbox row becomes."""
    variables = dict(row.variables)
    if not variables:  # queued as text only: hand the template the link the text carried
        found = _LINK.search(row.body)
        variables = {"link": found.group(0)} if found else {}
    mail = events.new_mail(
        row.recipient,
        row.template,
        variables,
        organization=row.organization,
        id=mail_id(row),
        time=row.created_at,
    )
    mail.traceparent = row.traceparent
    mail.tracestate = row.tracestate
    return mail


class OutboxRelay:
    """Moves unsent outbox rows to the mail stream, a batch per transaction."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: redis.Redis,
        stream: str,
        wake: asyncio.Event,
        *,
        interval: float = INTERVAL,
        batch: int = BATCH,
    ) -> None:
        self.sessions = sessions
        self.redis = client
        self.stream = stream
        self.wake = wake
        self.interval = interval
        self.batch = batch
        self.relayed = 0
        """Rows relayed by this process."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Relay in the background (a first round at once: mail queued while the service was down)."""
        self.wake.set()
        self._task = asyncio.create_task(self._run(), name="identity-outbox-relay")

    async def close(self) -> None:
        """Stop relaying (rows of an unfinished round stay unsent and go out on the next start)."""
        task, self._task = self._task, None
        await tasks.stop(task)

    async def relay_once(self) -> int:
        """Relay one batch; how many rows it held."""
        async with self.sessions.begin() as session:
            rows = await store.lock_unsent_mail(session=session, limit=self.batch)
            if not rows:
                return 0
            await events.append(self.redis, self.stream, [to_mail(row) for row in rows])
            await store.mark_mail_sent([row.id for row in rows], session=session, now=datetime.now(UTC))
        self.relayed += len(rows)
        log.info("mail relayed", extra={"count": len(rows), "stream": self.stream})
        return len(rows)

    async def drain(self) -> int:
        """Relay batches until the outbox has no unsent row left; how many rows went."""
        total = 0
        while True:
            count = await self.relay_once()
            total += count
            if count < self.batch:
                return total

    async def _run(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.interval)
            self.wake.clear()
            try:
                await self.drain()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the rows stay unsent; try again once things answer
                failures += 1
                log.warning("relaying mail failed", extra={"attempt": failures, "error": repr(exc)})
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), RETRY_MAX))
