"""The live feed's bounds: feeds per organization are capped, and a closed slot is free again."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from qrmesh.analytics import live
from qrmesh.analytics.v1 import analytics_service_pb2
from qrmesh.platform.errors import ResourceExhausted


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[live.LiveHub]:
    client = redis.Redis.from_url(redis_url)
    created = live.LiveHub(client)
    yield created
    await created.close()
    await client.aclose()


async def test_one_organization_cannot_open_unbounded_feeds(hub: live.LiveHub) -> None:
    organization = f"org-{secrets.token_hex(4)}"
    feeds = [hub.watch(organization, "", False) for _ in range(live.MAX_WATCHERS_PER_ORGANIZATION)]
    for feed in feeds:
        assert await anext(feed) == analytics_service_pb2.WatchScansResponse()  # subscribed
    one_too_many = hub.watch(organization, "", False)
    with pytest.raises(ResourceExhausted) as refused:
        await anext(one_too_many)
    assert refused.value.reason == "TOO_MANY_WATCHERS"
    # Another organization is not held up by this one.
    other = hub.watch(f"org-{secrets.token_hex(4)}", "", False)
    assert await anext(other) == analytics_service_pb2.WatchScansResponse()
    await other.aclose()
    # A feed that ends frees its slot.
    await feeds.pop().aclose()
    again = hub.watch(organization, "", False)
    assert await anext(again) == analytics_service_pb2.WatchScansResponse()
    for feed in [*feeds, again]:
        await feed.aclose()
    assert organization not in hub.watched
