"""Domain events of the qr service (`qr_code.created`, `...updated`, `...deleted`, `batch.completed`), through a
transactional outbox.

`record` writes events in the transaction that makes the change, so an event exists exactly when its change
committed. After the commit the relay appends them to the events stream and deletes them; when Redis is away
or the process dies first, the relay (on any replica) appends them later. An event may then be appended twice;
consumers handle each event id once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qrmesh.events.v1 import event_pb2
from qrmesh.platform import events, tasks
from qrmesh.qr.store import metadata

QR_CODE_CREATED = "qr_code.created"
QR_CODE_UPDATED = "qr_code.updated"
QR_CODE_DELETED = "qr_code.deleted"
BATCH_COMPLETED = "batch.completed"

BATCH = 500
"""Events appended per round trip."""
SWEEP_INTERVAL = 10.0
"""Seconds between sweeps when nothing wakes the relay (another replica's leftovers)."""
RETRY_MIN, RETRY_MAX = 0.5, 30.0

TS = sa.DateTime(timezone=True)

outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)


async def record(session: AsyncSession, items: Sequence[event_pb2.Event]) -> None:
    """Queue `items` in the transaction of `session`; they are appended once it commits."""
    if items:
        await session.execute(sa.insert(outbox), [{"event": item.SerializeToString()} for item in items])


class EventRelay:
    """Moves committed events from the outbox to the events stream."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: redis.Redis, stream: str) -> None:
        self.sessions = sessions
        self.redis = client
        self.stream = stream
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Say that a commit queued events (call after the transaction)."""
        self._wake.set()

    async def relay_pending(self) -> int:
        """Append every queued event, oldest first; how many. Raises when Redis or the database fails."""
        total = 0
        while True:
            async with self.sessions.begin() as session:
                rows = (
                    await session.execute(
                        sa.select(outbox.c.id, outbox.c.event)
                        .order_by(outbox.c.id)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not rows:
                    return total
                await events.append(self.redis, self.stream, [event_pb2.Event.FromString(row.event) for row in rows])
                await session.execute(sa.delete(outbox).where(outbox.c.id.in_([row.id for row in rows])))
            total += len(rows)

    async def start(self) -> None:
        """Start relaying (at once: what an earlier process left is sent first)."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="qr-event-relay")

    async def close(self) -> None:
        """Stop relaying; what is left stays queued for the next start."""
        if self._task is not None:
            await tasks.stop(self._task)
            self._task = None

    async def _run(self) -> None:
        await tasks.repeat(
            self.relay_pending,
            self._wake,
            every=SWEEP_INTERVAL,
            retry_min=RETRY_MIN,
            retry_max=RETRY_MAX,
            what="appending events",
        )
