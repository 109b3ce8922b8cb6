"""Scan totals: each code's `scan_count`, from the scan events the redirect appends to Redis.

A consumer of the stream `scans` in the group `qr-scan-totals` (one consumer
per process). Each batch of entries is counted in one transaction: the event
ids go into `counted_scans` (ON CONFLICT DO NOTHING) and only the ids that
were new add to their codes' `scan_count`, so an event redelivered after a
crash, or appended twice, counts once. Entries are acknowledged after the
commit. Entries another consumer read but never acknowledged (it died) are
claimed once idle for 30 seconds. Only redirected scans by people count (not
bots, not pages shown). Counted ids are forgotten after 7 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr import names, store
from qrmesh.scans.v1 import scan_event_pb2

log = logging.getLogger("qrmesh.qr.scan_totals")

STREAM = "scans"
GROUP = "qr-scan-totals"
BATCH = 500
BLOCK_MS = 2000
CLAIM_IDLE_MS = 30_000
CLAIM_EVERY = 10.0
KEEP_COUNTED = timedelta(days=7)
PRUNE_EVERY = 3600.0
PRUNE_BATCH = 10_000
RETRY_MAX = 30.0

Entry = tuple[str, dict[bytes, bytes]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def counts_for(entries: Sequence[Entry]) -> list[store.ScanCount]:
    """The scans these stream entries add, per code: redirected, not bots, of a known code.

    An entry without an event id is counted by its stream id; an entry that is not a
    ScanEvent is skipped (and logged).
    """
    grouped: dict[tuple[str, str], list[str]] = {}
    for entry_id, fields in entries:
        raw = fields.get(b"event")
        if raw is None:
            log.warning("scan entry without an event field", extra={"entry": entry_id})
            continue
        try:
            event = scan_event_pb2.ScanEvent.FromString(raw)
        except DecodeError:
            log.warning("scan entry is not a ScanEvent", extra={"entry": entry_id})
            continue
        if event.outcome != scan_event_pb2.ScanEvent.REDIRECTED or event.bot or not event.qr_code:
            continue
        try:
            organization, code = names.qr_code_ids(event.qr_code, field="qr_code")
        except InvalidArgument:
            log.warning("scan event names no QR code", extra={"entry": entry_id})
            continue
        grouped.setdefault((organization, code), []).append(event.event_id or f"stream:{entry_id}")
    return [store.ScanCount(organization, code, tuple(events)) for (organization, code), events in grouped.items()]


class ScanTotals:
    """The consumer; `start` and `close` run it in the background."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: redis.Redis,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        consumer: str | None = None,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.sessions = sessions
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"qr-{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self._task: asyncio.Task[None] | None = None
        self._claimed_at = -1e18
        self._pruned_at = -1e18

    async def start(self) -> None:
        """Start consuming in the background."""
        self._task = asyncio.create_task(self._run(), name="qr-scan-totals")

    async def close(self) -> None:
        """Stop consuming; entries read but not yet acknowledged are delivered again later."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def ensure_group(self) -> None:
        """Create the stream and group if missing; a new group starts at the stream's first entry."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.ensure_group()
                while True:
                    await self.step()
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep consuming once Redis and the database answer
                failures += 1
                log.warning("counting scans failed", extra={"attempt": failures, "error": repr(exc)})
                await asyncio.sleep(min(0.5 * 2 ** (failures - 1), RETRY_MAX))

    async def step(self) -> int:
        """Count one batch: idle pending entries of dead consumers first (now and then), else new ones."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = loop.time()
            await self.prune()
        if loop.time() - self._claimed_at >= CLAIM_EVERY:
            claimed = await self._claim_idle()
            if claimed:
                return await self.count(claimed)
            self._claimed_at = loop.time()
        answer: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=BATCH, block=self.block_ms
        )
        entries: list[Entry] = []
        for _, items in answer or []:
            entries.extend((_text(entry_id), fields) for entry_id, fields in items if fields is not None)
        return await self.count(entries)

    async def _claim_idle(self) -> list[Entry]:
        answer: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=BATCH
        )
        items = answer[1] if answer else []
        return [(_text(entry_id), fields) for entry_id, fields in items if fields is not None]

    async def count(self, entries: Sequence[Entry]) -> int:
        """Count a batch in one transaction, then acknowledge it; how many scans were added."""
        if not entries:
            return 0
        counts = counts_for(entries)
        added = 0
        if counts:
            async with self.sessions.begin() as session:
                added = await store.count_scans(counts, session=session, now=datetime.now(UTC))
        await self.redis.xack(self.stream, self.group, *(entry_id for entry_id, _ in entries))
        return added

    async def prune(self) -> None:
        """Forget counted event ids older than 7 days (an event is never delivered that late)."""
        before = datetime.now(UTC) - KEEP_COUNTED
        while True:
            async with self.sessions.begin() as session:
                removed = await store.prune_counted_scans(session=session, before=before, limit=PRUNE_BATCH)
            if removed < PRUNE_BATCH:
                return
