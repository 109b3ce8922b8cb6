"""Writes links to Redis after their changes commit, and keeps trying while Redis is away.

Every change of a dynamic code moves its short code's `version` on in the same
transaction. After the commit the service asks `publish` to write the links:
it reads them as stored (so version and link always belong together), puts
them with `links.put_many` (a newer copy in Redis always wins), announces them
and records the versions now in Redis. When that fails (Redis down, slow, or
the process dies first) the change is still committed; the background task
finds every short code whose `published_version` is behind and writes it
again, with backoff, until it succeeds. It also sweeps once a minute, which
heals what another replica left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qrmesh.platform import tasks
from qrmesh.qr import links, names, store
from qrmesh.qr.domain.link_rules import redirect_status
from qrmesh.qr.v1 import qr_code_pb2, stored_qr_code_pb2

log = logging.getLogger("qrmesh.qr.links")

BATCH = 500
INLINE_TIMEOUT = 2.0
"""Seconds an RPC waits for its links to reach Redis before leaving them to the background."""
SWEEP_INTERVAL = 60.0
RETRY_MIN = 0.25
RETRY_MAX = 30.0


def link_from_row(row: store.LinkRow) -> stored_qr_code_pb2.Link | None:
    """The Link the redirect needs for a stored link; None when its code was deleted."""
    code = row.code
    if code is None:
        return None
    rules = stored_qr_code_pb2.LinkRules.FromString(code.rules)
    rules.max_scans = code.max_scans
    rules.password_protected = code.password_hash is not None
    rules.ClearField("password")
    content = qr_code_pb2.Content.FromString(code.content)
    return stored_qr_code_pb2.Link(
        short_code=row.short_code,
        qr_code=names.qr_code_name(code.organization_id, code.id),
        organization=names.organization_name(code.organization_id),
        status=stored_qr_code_pb2.QrCode.Status.Value(code.status),
        destination_url=content.url.url,
        rules=rules,
        password_hash=code.password_hash or "",
        redirect_status=redirect_status(code.redirect_type),
        store_full_ip_addresses=row.store_full_ip_addresses,
        version=row.version,
    )


class LinkPublisher:
    """Puts committed links into Redis, now or, failing that, later."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: redis.Redis) -> None:
        self.sessions = sessions
        self.redis = client
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, short_codes: Sequence[str]) -> None:
        """Write these links now; on any failure log it and leave them to the background task. Never raises."""
        if not short_codes:
            return
        try:
            async with asyncio.timeout(INLINE_TIMEOUT):
                await self.publish_now(short_codes)
        except Exception as exc:  # noqa: BLE001 - the change is committed; the background task retries
            log.warning(
                "links not written to Redis; retrying in the background",
                extra={"short_codes": len(short_codes), "error": repr(exc)},
            )
            self._wake.set()

    async def publish_now(self, short_codes: Sequence[str]) -> None:
        """Write these links as stored now, announce them and record the versions written; raises on failure."""
        for start in range(0, len(short_codes), BATCH):
            chunk = short_codes[start : start + BATCH]
            async with self.sessions.begin() as session:
                rows = await store.links_for(chunk, session=session)
            if not rows:
                continue
            await links.put_many(self.redis, [(row.short_code, row.version, link_from_row(row)) for row in rows])
            await links.announce(self.redis, *(row.short_code for row in rows))
            async with self.sessions.begin() as session:
                await store.mark_published([(row.short_code, row.version) for row in rows], session=session)

    async def publish_pending(self) -> int:
        """Write every link whose newest version may not be in Redis; how many. Raises on failure."""
        total = 0
        while True:
            async with self.sessions.begin() as session:
                pending = await store.unpublished_links(session=session, limit=BATCH)
            if not pending:
                return total
            await self.publish_now(pending)
            total += len(pending)

    async def start(self) -> None:
        """Start the background task (it sweeps at once)."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="qr-link-publisher")

    async def close(self) -> None:
        """Stop the background task; what it did not write stays marked for the next start."""
        if self._task is not None:
            await tasks.stop(self._task)
            self._task = None

    async def _sweep(self) -> None:
        written = await self.publish_pending()
        if written:
            log.info("links written to Redis", extra={"links": written})

    async def _run(self) -> None:
        await tasks.repeat(
            self._sweep,
            self._wake,
            every=SWEEP_INTERVAL,
            retry_min=RETRY_MIN,
            retry_max=RETRY_MAX,
            what="writing links to Redis",
        )
