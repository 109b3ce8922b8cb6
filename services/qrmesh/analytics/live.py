"""The live feed behind WatchScans: new scans from Redis pub/sub, fanned out to every watcher.

The ingestion consumer publishes, after each commit, one `WatchScansResponse` per organization on
`qrmesh:analytics:live:{organization}`, but only for organizations with a watcher: watchers keep
`qrmesh:analytics:watching:{organization}` alive (SET EX 30, refreshed every 10 s).

One `LiveHub` per process holds one pub/sub connection, subscribed to each organization while at
least one call watches it, and hands every message to the queue of each of those calls. A call
filters (one code, bots) and yields. It sends an empty response as soon as it is subscribed (the
feed is live from then on) and again after every `heartbeat` seconds without scans, so proxies and
load balancers keep the idle stream open. A call ends when its client leaves, when the server
stops (`close`: streams end cleanly, before the gRPC server waits for in-flight calls), or with
RESOURCE_EXHAUSTED when its client reads too slowly to keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from qrmesh.analytics.v1 import analytics_service_pb2
from qrmesh.platform import tasks
from qrmesh.platform.errors import ResourceExhausted, Unavailable

log = logging.getLogger("qrmesh.analytics.live")

LIVE_CHANNEL = "qrmesh:analytics:live:{}"
WATCHING_KEY = "qrmesh:analytics:watching:{}"
WATCHING_TTL = 30
"""Seconds a watching key lives without a refresh."""
REFRESH_EVERY = 10.0
"""Seconds between two refreshes of the watching keys."""
HEARTBEAT = 15.0
"""Seconds without scans after which a call sends an empty response."""
QUEUE_SIZE = 64
"""Messages (of at most 200 scans each) a call may have waiting; beyond, its client is too slow and the
call ends."""
MAX_WATCHERS_PER_ORGANIZATION = 25
"""Live feeds one organization may have open on one process."""
MAX_WATCHERS = 2000
"""Live feeds one process keeps open in all."""

Response = analytics_service_pb2.WatchScansResponse


class _Closed:
    """The sentinel a queue gets when the hub closes."""


class _Overflow:
    """The sentinel a queue gets when its reader fell too far behind."""


Item = bytes | type[_Closed] | type[_Overflow]


class LiveHub:
    """One pub/sub subscription per watched organization, shared by the process's calls."""

    def __init__(self, client: redis.Redis, *, heartbeat: float = HEARTBEAT, refresh: float = REFRESH_EVERY) -> None:
        self.redis = client
        self.heartbeat = heartbeat
        self.refresh = refresh
        self._queues: dict[str, set[asyncio.Queue[Item]]] = {}
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def watched(self) -> set[str]:
        """The organizations with at least one watcher in this process."""
        return set(self._queues)

    async def watch(self, organization: str, qr_code: str, include_bots: bool) -> AsyncGenerator[Response, None]:
        """New scans of `organization` (only `qr_code`'s when set; bots only with `include_bots`)."""
        queue = await self._join(organization)
        try:
            yield Response()  # subscribed: every scan recorded from now on is sent
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.heartbeat)
                except TimeoutError:
                    yield Response()
                    continue
                if not isinstance(item, bytes):
                    if item is _Closed:
                        return
                    raise ResourceExhausted(
                        "the client read the live feed too slowly; watch again", reason="WATCH_TOO_SLOW"
                    )
                try:
                    message = Response.FromString(item)
                except DecodeError:
                    log.warning("a live message could not be decoded", extra={"organization": organization})
                    continue
                kept = [
                    scan
                    for scan in message.scans
                    if (not qr_code or scan.qr_code == qr_code) and (include_bots or not scan.bot)
                ]
                if kept:
                    yield Response(scans=kept)
        finally:
            await self._leave(organization, queue)

    async def _join(self, organization: str) -> asyncio.Queue[Item]:
        if self._closed:
            raise Unavailable("the server is shutting down; watch again", reason="SHUTTING_DOWN")
        queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)
        async with self._lock:
            if len(self._queues.get(organization, ())) >= MAX_WATCHERS_PER_ORGANIZATION:
                raise ResourceExhausted(
                    f"this organization already has {MAX_WATCHERS_PER_ORGANIZATION} live feeds open here;"
                    " close one or share one feed between screens",
                    reason="TOO_MANY_WATCHERS",
                    retry_after=HEARTBEAT,
                    metadata={"limit": str(MAX_WATCHERS_PER_ORGANIZATION)},
                )
            if sum(len(queues) for queues in self._queues.values()) >= MAX_WATCHERS:
                raise ResourceExhausted(
                    "this server has too many live feeds open; try again shortly",
                    reason="TOO_MANY_WATCHERS",
                    retry_after=HEARTBEAT,
                    metadata={"limit": str(MAX_WATCHERS)},
                )
            first = organization not in self._queues
            self._queues.setdefault(organization, set()).add(queue)
            try:
                if self._pubsub is None:
                    self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                if first:
                    await self._pubsub.subscribe(LIVE_CHANNEL.format(organization))
                    await self.redis.set(WATCHING_KEY.format(organization), "1", ex=WATCHING_TTL)
                if not self._tasks:
                    self._tasks = [
                        asyncio.create_task(self._read(), name="live-read"),
                        asyncio.create_task(self._keep_watching(), name="live-refresh"),
                    ]
            except (RedisError, OSError) as exc:
                self._drop(organization, queue)
                raise Unavailable(f"the live feed is unavailable: {exc}", reason="LIVE_UNAVAILABLE") from None
        return queue

    def _drop(self, organization: str, queue: asyncio.Queue[Item]) -> bool:
        """Forget a queue; whether it was the organization's last."""
        queues = self._queues.get(organization)
        if queues is None:
            return False
        queues.discard(queue)
        if queues:
            return False
        del self._queues[organization]
        return True

    async def _leave(self, organization: str, queue: asyncio.Queue[Item]) -> None:
        async with self._lock:
            if self._drop(organization, queue) and self._pubsub is not None and not self._closed:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(LIVE_CHANNEL.format(organization))

    async def _read(self) -> None:
        """Hand every message to the queues of its organization's calls."""
        prefix = LIVE_CHANNEL.format("")
        while not self._closed:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("live feed subscription failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            data = message["data"]
            for queue in list(self._queues.get(channel.removeprefix(prefix), ())):
                if queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    queue.put_nowait(_Overflow)
                else:
                    queue.put_nowait(data if isinstance(data, bytes) else str(data).encode())

    async def _keep_watching(self) -> None:
        """Refresh the watching keys of the organizations watched here."""
        while not self._closed:
            await asyncio.sleep(self.refresh)
            organizations = sorted(self._queues)
            if not organizations:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for organization in organizations:
                        pipe.set(WATCHING_KEY.format(organization), "1", ex=WATCHING_TTL)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("could not refresh the watching keys", extra={"error": repr(exc)})

    async def close(self) -> None:
        """End every call cleanly and stop listening."""
        self._closed = True
        for queues in self._queues.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueEmpty):
                    while queue.full():
                        queue.get_nowait()
                queue.put_nowait(_Closed)
        for task in self._tasks:
            await tasks.stop(task)
        self._tasks = []
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
