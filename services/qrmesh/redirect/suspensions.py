"""Organizations whose subscription lapsed, held in memory: a scan checks a set, never the network.

The billing service keeps every organization's lapse in Redis with the
subscription's version (`qrmesh.billing.signals`) and announces each newer one
("+org@version", "-org@version"; "*" to reload). This loads them at start,
applies an announcement only when its version is newer than the one known (so
announcements that arrive out of order cannot undo a later change), and
reloads every `refresh` seconds and after every reconnection, so a lost message
heals. While Redis is away the last known set stays in force: a Redis outage
neither pauses paying customers' codes nor resumes lapsed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from qrmesh.billing import signals
from qrmesh.platform import tasks

log = logging.getLogger("qrmesh.redirect.suspensions")


class Suspensions:
    """The lapsed organizations (`organizations/{id}`), kept current from Redis."""

    def __init__(self, client: redis.Redis | None, *, refresh: float = 30.0) -> None:
        self.redis = client
        self.refresh = refresh
        self.organizations: frozenset[str] = frozenset()
        """Read on every scan: membership is the whole check."""
        self.known: dict[str, tuple[int, bool]] = {}
        """organization -> (version, lapsed): the newest version seen of each."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.loaded = asyncio.Event()

    def __contains__(self, organization: object) -> bool:
        return organization in self.organizations

    def merge(self, entries: Mapping[str, tuple[int, bool]]) -> None:
        """Take every entry newer than the one known; the set follows."""
        changed = False
        for organization, (version, lapsed) in entries.items():
            known = self.known.get(organization)
            if known is None or version > known[0]:
                self.known[organization] = (version, lapsed)
                changed = changed or known is None or known[1] != lapsed
        if changed:
            self.organizations = frozenset(organization for organization, (_, lapsed) in self.known.items() if lapsed)

    def apply(self, message: str) -> None:
        """One announcement, "+org@version" (lapsed) or "-org@version"; older than known: ignored."""
        parsed = signals.parse_lapse(message)
        if parsed is not None:
            organization, version, lapsed = parsed
            self.merge({organization: (version, lapsed)})

    async def reload(self) -> None:
        """Read every organization's lapse and merge it (versions decide, so a racing announcement wins)."""
        if self.redis is None:
            return
        self.merge(await signals.read_lapses(self.redis))
        self.loaded.set()

    async def start(self) -> None:
        """Load the set and follow the announcements (in the background, retrying while Redis is away)."""
        if self.redis is None or self._task is not None:
            return
        self._task = asyncio.create_task(self._follow(), name="suspensions")
        # A fresh process starts with the current set when Redis answers promptly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loaded.wait(), 2.0)

    async def _follow(self) -> None:
        while self.redis is not None and not self._closing:
            pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(signals.SUSPENSIONS_CHANNEL)
                await self.reload()  # after subscribing: nothing announced from here on is missed
                loop = asyncio.get_running_loop()
                next_reload = loop.time() + self.refresh
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        if text == signals.RELOAD:
                            await self.reload()
                        else:
                            self.apply(text)
                    if loop.time() >= next_reload:
                        await self.reload()
                        next_reload = loop.time() + self.refresh
            except (RedisError, OSError) as exc:
                log.warning(
                    "suspended organizations: Redis unavailable, keeping the last set", extra={"error": repr(exc)}
                )
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            await tasks.stop(self._task)
