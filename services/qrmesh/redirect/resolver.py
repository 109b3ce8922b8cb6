"""Short code -> compiled link, without a network round trip for codes seen recently.

Three layers: a dict in this process, the link keys the qr service keeps in
Redis, and the qr service itself (LinkService.ResolveLink). Misses are cached
too ("no such code"). The qr service announces every change on a Redis channel;
a subscriber here drops the changed code at once. While that subscription is
down, nothing is trusted for longer than a second, and the whole cache is
dropped when it comes back (announcements may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any, Final

import grpc
import redis.asyncio as redis
from redis.exceptions import RedisError

from qrmesh.platform import tasks
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.channels import create_channel
from qrmesh.platform.errors import Unavailable
from qrmesh.qr import links
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2
from qrmesh.redirect.domain.rules import CompiledLink, compile_link

log = logging.getLogger("qrmesh.redirect.resolver")

NOT_CACHED: Final = object()
"""`cached()` found nothing usable in memory: call `resolve()`."""

TRUSTED_TTL = 10.0
"""Seconds an entry is used while change announcements arrive (they evict it sooner)."""
UNTRUSTED_TTL = 1.0
"""Seconds an entry is used while announcements cannot arrive: edits show within a second."""
REDIS_TIMEOUT = 0.25
"""A Redis lookup slower than this falls through to the qr service."""


class LinkResolver:
    """The redirect's view of links."""

    def __init__(
        self,
        client: redis.Redis | None,
        qr_address: str,
        *,
        service: str,
        service_secret: str,
        max_entries: int = 100_000,
    ) -> None:
        self.redis = client
        self.qr_address = qr_address
        self.service = service
        self.service_secret = service_secret
        self.max_entries = max_entries
        self._entries: dict[str, tuple[CompiledLink | None, float]] = {}
        self._inflight: dict[str, asyncio.Future[CompiledLink | None]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: qr_code_service_pb2_grpc.LinkServiceAsyncStub | None = None
        self._subscribed = False
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._epoch = 0
        """Bumped by every forget/clear: a load that raced an announcement is not trusted."""
        self.lookups = {"memory": 0, "redis": 0, "service": 0}

    @property
    def subscribed(self) -> bool:
        """Whether change announcements are arriving (entries are trusted for longer)."""
        return self._subscribed

    # -- the hot path -------------------------------------------------------------------------

    def cached(self, short_code: str) -> CompiledLink | object | None:
        """The compiled link (None: no such code) if memory holds a fresh entry, else NOT_CACHED."""
        entry = self._entries.get(short_code)
        if entry is None:
            return NOT_CACHED
        if entry[1] < time.monotonic():
            del self._entries[short_code]
            return NOT_CACHED
        self.lookups["memory"] += 1
        return entry[0]

    async def resolve(self, short_code: str) -> CompiledLink | None:
        """The compiled link, or None when no code has this short code; Unavailable if nobody can say."""
        found = self.cached(short_code)
        if found is not NOT_CACHED:
            return found  # type: ignore[return-value]
        pending = self._inflight.get(short_code)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CompiledLink | None] = asyncio.get_running_loop().create_future()
        self._inflight[short_code] = future
        try:
            result = await self._load(short_code)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[short_code]

    async def _load(self, short_code: str) -> CompiledLink | None:
        ttl = TRUSTED_TTL if self._subscribed else UNTRUSTED_TTL
        epoch = self._epoch
        stored = await self._from_redis(short_code)
        if stored is not None:
            self.lookups["redis"] += 1
            compiled = compile_link(stored.link) if stored.link is not None else None
        else:
            self.lookups["service"] += 1
            link = await self._from_service(short_code)
            compiled = compile_link(link) if link is not None else None
        if self._epoch != epoch:
            ttl = UNTRUSTED_TTL  # a change was announced while we read: this copy may predate it
        self._remember(short_code, compiled, ttl)
        return compiled

    def _remember(self, short_code: str, compiled: CompiledLink | None, ttl: float) -> None:
        if len(self._entries) >= self.max_entries:
            # Oldest first (dicts keep insertion order): one pass over the first 1%, so
            # eviction stays linear in what it drops (popping next(iter()) in a loop would
            # rescan the deleted slots every time).
            for old in list(itertools.islice(self._entries, max(1, self.max_entries // 100))):
                del self._entries[old]
        self._entries[short_code] = (compiled, time.monotonic() + ttl)

    async def _from_redis(self, short_code: str) -> links.Stored | None:
        if self.redis is None:
            return None
        try:
            return await asyncio.wait_for(links.get(self.redis, short_code), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            log.debug("redis link lookup failed", extra={"error": repr(exc)})
            return None

    async def _from_service(self, short_code: str) -> stored_qr_code_pb2.Link | None:
        if not self.qr_address:
            raise Unavailable("the qr service is not configured (QRMESH_REDIRECT_QR_ADDR)", reason="NO_QR_SERVICE")
        stub = self._link_stub()
        try:
            link: stored_qr_code_pb2.Link = await stub.ResolveLink(
                qr_code_service_pb2.ResolveLinkRequest(short_code=short_code),
                metadata=self._metadata(),
                timeout=2.0,
            )
            return link
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None
            raise Unavailable(
                f"cannot reach the qr service: {exc.code().name}", reason="QR_SERVICE_UNAVAILABLE"
            ) from None

    async def claim_scan(self, short_code: str) -> bool:
        """Count one scan against the code's limit; False once the limit is reached."""
        stub = self._link_stub()
        try:
            answer = await stub.ClaimScan(
                qr_code_service_pb2.ClaimScanRequest(short_code=short_code), metadata=self._metadata(), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise Unavailable(
                f"cannot reach the qr service: {exc.code().name}", reason="QR_SERVICE_UNAVAILABLE"
            ) from None
        return bool(answer.allowed)

    def _link_stub(self) -> qr_code_service_pb2_grpc.LinkServiceAsyncStub:
        if self._stub is None:
            self._channel = create_channel(self.qr_address, default_deadline=2.0)
            self._stub = qr_code_service_pb2_grpc.LinkServiceStub(self._channel)
        return self._stub

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SERVICE_TOKEN_HEADER, service_token(self.service_secret, self.service)),)

    # -- change announcements -----------------------------------------------------------------

    def forget(self, short_code: str) -> None:
        """Drop one code from memory (its link changed)."""
        self._epoch += 1
        self._entries.pop(short_code, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    async def start(self) -> None:
        """Subscribe to change announcements (retrying in the background while Redis is away)."""
        if self.redis is not None:
            self._listener = asyncio.create_task(self._listen(), name="link-announcements")
            # Give the first subscription a moment so a fresh process starts trusted.
            for _ in range(50):
                if self._subscribed:
                    break
                await asyncio.sleep(0.01)

    async def _listen(self) -> None:
        while self.redis is not None and not self._closing:
            pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(links.CHANNEL)
                # Announcements sent while we were away are lost: start from nothing.
                self.clear()
                self._subscribed = True
                log.info("subscribed to link changes")
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.forget(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:  # noqa: BLE001 - whatever broke the subscription: distrust, retry
                if self._subscribed:
                    log.warning(
                        "link change announcements lost; trusting cached links for 1 s", extra={"error": repr(exc)}
                    )
                self._subscribed = False
                self.clear()
                await asyncio.sleep(1.0)
            finally:
                self._subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            await tasks.stop(self._listener)
        if self._channel is not None:
            await self._channel.close()
