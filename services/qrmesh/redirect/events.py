"""Scan events on their way to the Redis stream `scans`, kept safe when Redis is not there.

`ScanRecorder.record()` serializes a ScanEvent and appends it to an in-memory
buffer; nothing else happens on the request path. A background flusher sends
the buffer in batches of `batch_size` events, one round trip per batch, each
bounded by `write_timeout`. Every event becomes one stream entry, as if by
`XADD scans * event <ScanEvent bytes>`, trimmed with `MAXLEN ~ maxlen` when
`maxlen` is set.

A batch is one EVALSHA of a small Lua script that runs the XADDs inside Redis
(`use_script=True`, the default) or, for servers without scripting, one
pipeline (transaction=False) of XADD commands. Measured with redis-py 8.1: the
script costs the event loop about 2 us of CPU per event, the pipeline over
20 us (redis-py packs and parses every command in Python); a script batch of
512 keeps Redis busy for about 2 ms.

When Redis refuses the connection, does not answer in time or fails a command,
the batch goes to the spool instead: append-only files in `spool_dir`, fsynced
once per batch. The flusher then only PINGs Redis every `probe_interval`; once
it answers, spool files are replayed oldest first, each deleted only after all
its records are in the stream, while fresh events go straight to Redis again.
A buffer that reaches `max_buffer` (Redis slower than the traffic) is spooled
at once, so memory stays bounded.

Delivery is at least once. An event reaches the stream twice when Redis ran a
batch whose reply was lost (a crash, a timeout, a hung server that wakes up)
or when the process dies after replaying a spool file and before deleting it.
Every ScanEvent carries a unique `event_id`; consumers count each id once.
Order is kept within a batch and within a spool file, not between fresh and
replayed events: consumers order by the event's `time`.

Spool file `{sequence:012d}.spool`: records of a 4-byte big-endian payload
length, the 4-byte big-endian CRC-32 of the payload, and the payload (one
serialized ScanEvent). A record cut short by a crash, or one whose checksum
does not match, ends the file: it and anything after it are skipped with a
warning. One process owns a spool directory at a time (`flock` on
`spool_dir/.lock`); give every process its own directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from qrmesh.scans.v1 import scan_event_pb2

log = logging.getLogger("qrmesh.redirect.events")

T = TypeVar("T")

SPOOL_SUFFIX = ".spool"
SPOOL_FILE_BYTES = 16 * 1024 * 1024
"""A spool file is closed and a new one started once it is this big."""
MAX_RECORD_BYTES = 1 << 20
"""A length above this in a spool file is garbage (a ScanEvent is a few KiB at most)."""
RECORD_HEADER = struct.Struct(">II")
"""Payload length and CRC-32 of the payload, both big-endian."""

_REPLAY_BATCHES_PER_STEP = 8
_UNREACHABLE = (RedisError, OSError, TimeoutError)

# KEYS[1] = stream; ARGV[1] = MAXLEN for approximate trimming ("" for none), ARGV[2..] = serialized ScanEvents.
# Answers {added} or, when an XADD failed, {added before it, error}: the caller keeps the rest.
_XADD_SCRIPT = """
local added = 0
for i = 2, #ARGV do
  local reply = redis.pcall('XADD', KEYS[1], '*', 'event', ARGV[i])
  if type(reply) == 'table' and reply.err then
    return {added, reply.err}
  end
  added = added + 1
end
if ARGV[1] ~= '' then
  redis.pcall('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
end
return {added}
"""
_LOG_EVERY_SECONDS = 10.0


class SpoolBusyError(RuntimeError):
    """Another recorder (in this or another process) holds the spool directory."""


@dataclass(frozen=True, slots=True)
class SpoolContent:
    """The records of one spool file, and how many bytes at its end were not a whole record."""

    records: list[bytes]
    torn_bytes: int


def encode_records(records: Sequence[bytes]) -> bytes:
    """Spool records for these payloads, ready to append to a file."""
    parts: list[bytes] = []
    for payload in records:
        parts.append(RECORD_HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_records(data: bytes) -> SpoolContent:
    """The whole records at the start of `data`; reading stops at the first torn or corrupt one."""
    records: list[bytes] = []
    offset, end = 0, len(data)
    while offset + RECORD_HEADER.size <= end:
        length, checksum = RECORD_HEADER.unpack_from(data, offset)
        start = offset + RECORD_HEADER.size
        if length > MAX_RECORD_BYTES or start + length > end:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != checksum:
            break
        records.append(payload)
        offset = start + length
    return SpoolContent(records, end - offset)


class Spool:
    """Append-only spool files in one directory. Blocking; safe to call from any thread."""

    def __init__(self, directory: Path, file_bytes: int = SPOOL_FILE_BYTES) -> None:
        self.directory = directory
        self._file_bytes = file_bytes
        self._guard = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._current: Path | None = None
        self._size = 0
        self._sealed: list[Path] = []
        self._next_sequence = 0

    @property
    def file_count(self) -> int:
        """Files holding records not yet replayed (the one being written included)."""
        return len(self._sealed) + (1 if self._size else 0)

    def open(self) -> None:
        """Lock the directory and find the files a previous run left (SpoolBusyError if locked)."""
        with self._guard:
            self._open()

    def append(self, payloads: Sequence[bytes]) -> None:
        """Append records and fsync them; on OSError nothing of this call counts as written."""
        data = encode_records(payloads)
        with self._guard:
            self._open()
            fd = self._fd
            if fd is None or self._size >= self._file_bytes:
                self._seal()
                fd = self._create()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # Cut the partial write off; if even that fails, the torn tail ends this file.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                self._seal()
                raise
            self._size += len(data)

    def oldest(self) -> Path | None:
        """The oldest file to replay; the file being written is closed first so it can be replayed too."""
        with self._guard:
            self._open()
            if self._size:
                self._seal()
            return self._sealed[0] if self._sealed else None

    def read(self, path: Path) -> SpoolContent:
        return decode_records(path.read_bytes())

    def remove(self, path: Path) -> None:
        """Forget a replayed file."""
        with self._guard:
            if path in self._sealed:
                self._sealed.remove(path)
            path.unlink(missing_ok=True)

    def quarantine(self, path: Path) -> None:
        """Move an unreadable file aside (`.unreadable`) for a person to look at."""
        with self._guard:
            if path in self._sealed:
                self._sealed.remove(path)
            path.rename(path.with_name(path.name + ".unreadable"))

    def rewrite(self, path: Path, payloads: Sequence[bytes]) -> None:
        """Replace a file by the given records atomically (what is left of it after a partial replay)."""
        with self._guard:
            if not payloads:
                if path in self._sealed:
                    self._sealed.remove(path)
                path.unlink(missing_ok=True)
                return
            temporary = path.with_name(path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(encode_records(payloads))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            self._fsync_directory()

    def close(self) -> None:
        """Close the file being written and unlock the directory."""
        with self._guard:
            self._seal()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _open(self) -> None:
        if self._lock_fd is not None:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolBusyError(f"the scan spool {self.directory} is used by another recorder") from None
        self._lock_fd = lock_fd
        for stale in self.directory.glob(f"*{SPOOL_SUFFIX}.tmp"):
            stale.unlink(missing_ok=True)
        found = sorted(
            (int(path.stem), path) for path in self.directory.glob(f"*{SPOOL_SUFFIX}") if path.stem.isdigit()
        )
        self._sealed = []
        for _, path in found:
            if path.stat().st_size:
                self._sealed.append(path)
            else:
                path.unlink(missing_ok=True)
        self._next_sequence = found[-1][0] + 1 if found else 0

    def _create(self) -> int:
        path = self.directory / f"{self._next_sequence:012d}{SPOOL_SUFFIX}"
        self._next_sequence += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        self._fd, self._current, self._size = fd, path, 0
        self._fsync_directory()
        return fd

    def _seal(self) -> None:
        if self._fd is None or self._current is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self._size:
            self._sealed.append(self._current)
        else:
            self._current.unlink(missing_ok=True)
        self._fd, self._current, self._size = None, None, 0

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters since the recorder was made; all count events unless named otherwise."""

    recorded: int
    """Accepted by record()."""
    written: int
    """Appended to the stream straight from the buffer."""
    spooled: int
    """Written to the spool."""
    replayed: int
    """Appended to the stream from the spool."""
    buffered: int
    """Waiting in memory."""
    spool_files: int
    """Spool files waiting to be replayed (the one being written included)."""
    round_trips: int
    """Batches sent to Redis (scripts or pipelines), each one round trip."""
    torn_records: int
    """Torn or corrupt records found at the end of spool files, skipped."""
    dropped: int
    """Events lost: not serializable, or neither Redis nor the disk would take them."""


@dataclass(slots=True)
class _Replay:
    path: Path
    records: list[bytes]
    offset: int = 0


@dataclass(slots=True)
class _Every:
    """True at most once every `seconds`: keeps repeated failures from flooding the log."""

    seconds: float
    last: float = field(default=-1e18)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    """Until the event is set or `seconds` passed (None: no limit)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class ScanRecorder:
    """Batches ScanEvents into a Redis stream, through a local spool when Redis is unreachable.

    `start()` once on startup, `record()` per scan, `close()` on shutdown.
    """

    def __init__(
        self,
        client: redis.Redis,
        spool_dir: Path,
        *,
        stream: str = "scans",
        batch_size: int = 512,
        flush_interval: float = 0.05,
        max_buffer: int = 100_000,
        maxlen: int | None = None,
        write_timeout: float = 2.0,
        probe_interval: float = 1.0,
        probe_timeout: float = 0.5,
        spool_file_bytes: int = SPOOL_FILE_BYTES,
        use_script: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_buffer < batch_size:
            raise ValueError(f"max_buffer ({max_buffer}) must be at least batch_size ({batch_size})")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 or None, got {maxlen}")
        if min(flush_interval, write_timeout, probe_interval, probe_timeout) <= 0:
            raise ValueError("flush_interval, write_timeout, probe_interval and probe_timeout must be positive")
        self._client = client
        self._spool = Spool(spool_dir, spool_file_bytes)
        self._stream = stream
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._hard_limit = 2 * max_buffer
        self._write_timeout = write_timeout
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        trim: tuple[str | int, ...] = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
        self._xadd_head: tuple[str | int, ...] = ("XADD", stream, *trim, "*", "event")
        self._trim_arg = b"" if maxlen is None else str(maxlen).encode()
        self._script = client.register_script(_XADD_SCRIPT) if use_script else None

        self._buffer: list[bytes] = []
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-spool")
        self._task: asyncio.Task[None] | None = None
        self._spilling: asyncio.Task[bool] | None = None
        self._replay: _Replay | None = None
        self._available = True
        self._next_probe = 0.0
        self._stopping = False
        self._closed = False
        self._close_deadline: float | None = None
        self._log_drop = _Every(_LOG_EVERY_SECONDS)
        self._log_spool_error = _Every(_LOG_EVERY_SECONDS)
        self._log_overflow = _Every(_LOG_EVERY_SECONDS)
        self._log_step_error = _Every(_LOG_EVERY_SECONDS)
        self._log_unavailable = _Every(_LOG_EVERY_SECONDS)
        self._log_recovered = _Every(_LOG_EVERY_SECONDS)

        self._recorded = 0
        self._written = 0
        self._spooled = 0
        self._replayed = 0
        self._round_trips = 0
        self._torn = 0
        self._dropped = 0

    @property
    def redis_available(self) -> bool:
        """False from a failed write until a PING is answered again."""
        return self._available

    @property
    def stats(self) -> RecorderStats:
        return RecorderStats(
            recorded=self._recorded,
            written=self._written,
            spooled=self._spooled,
            replayed=self._replayed,
            buffered=len(self._buffer),
            spool_files=self._spool.file_count,
            round_trips=self._round_trips,
            torn_records=self._torn,
            dropped=self._dropped,
        )

    def record(self, event: scan_event_pb2.ScanEvent) -> None:
        """Queue one event; never blocks, never raises."""
        try:
            payload = event.SerializeToString()
        except Exception:  # noqa: BLE001 - a request must never fail because its scan could not be recorded
            self._drop(1, "a scan event could not be serialized")
            return
        if self._closed:
            self._record_after_close(payload)
            return
        buffer = self._buffer
        if len(buffer) >= self._hard_limit:
            self._drop(1, "the scan event buffer is full and the spool does not keep up")
            return
        buffer.append(payload)
        self._recorded += 1
        size = len(buffer)
        if size == 1:
            self._has_data.set()
        if size == self._batch_size:
            self._full.set()
        if size >= self._max_buffer:
            self._overflow()

    async def start(self) -> None:
        """Lock the spool directory and start the flusher, which first replays what a previous run spooled."""
        if self._task is not None or self._stopping:
            raise RuntimeError("ScanRecorder.start() runs once, before close()")
        await self._io(self._spool.open)
        if self._spool.file_count:
            log.info(
                "%d scan spool files in %s left by a previous run; replaying them in the background",
                self._spool.file_count,
                self._spool.directory,
            )
        self._task = asyncio.create_task(self._run(), name="scan-event-flusher")

    async def close(self) -> None:
        """Stop the flusher and write everything buffered to Redis, or to the spool when Redis does not take it
        within `write_timeout`. Events recorded afterwards are spooled synchronously."""
        if self._stopping:
            return
        self._stopping = True
        self._close_deadline = time.monotonic() + self._write_timeout
        self._has_data.set()
        self._full.set()
        if self._task is not None:
            await self._task
        if self._spilling is not None:
            await asyncio.gather(self._spilling, return_exceptions=True)
        while self._buffer:
            if not await self._deliver(self._take()):
                lost, self._buffer = self._buffer, []
                self._drop(len(lost), "neither Redis nor the spool took the scan events at shutdown")
        self._closed = True
        try:
            replay = self._replay
            if replay is not None and replay.offset:
                # Keep only what was not replayed, so the next run does not send it again.
                await self._io(self._spool.rewrite, replay.path, replay.records[replay.offset :])
            await self._io(self._spool.close)
        except OSError:
            log.exception("could not close the scan spool in %s", self._spool.directory)
        self._executor.shutdown(wait=False)  # idle: every job was awaited
        log.info("scan recorder closed: %s", self.stats)

    def _take(self) -> list[bytes]:
        batch, self._buffer = self._buffer, []
        return batch

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        if self._log_drop.due():
            log.error("%s: %d scan events lost (%d in total)", why, count, self._dropped)

    def _overflow(self) -> None:
        """The buffer reached max_buffer: spool it now instead of waiting for a slow Redis."""
        if self._stopping:
            return  # close() is draining the buffer itself; a late spill could miss the I/O thread
        if self._spilling is not None and not self._spilling.done():
            return
        batch = self._take()
        try:
            self._spilling = asyncio.get_running_loop().create_task(self._to_spool(batch))
        except RuntimeError:
            self._buffer[:0] = batch  # no running loop: the flusher takes them later
            return
        if self._log_overflow.due():
            log.warning("scan event buffer reached %d events; spooling them to %s", len(batch), self._spool.directory)

    def _record_after_close(self, payload: bytes) -> None:
        try:
            self._spool.append([payload])
            self._spool.close()  # unlock again: the directory is free for the next recorder
        except Exception:  # noqa: BLE001 - record() never raises
            self._drop(1, "a scan event recorded after close() could not be spooled")
            return
        self._recorded += 1
        self._spooled += 1
        log.warning("scan event recorded after close(); written to the spool synchronously")

    async def _io(self, function: Callable[..., T], *args: object) -> T:
        """Run spool file work on the recorder's one I/O thread (in call order, off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._wait_for_work()
                if self._stopping:
                    return
                await self._step()
            except Exception:  # the flusher must outlive a bug in one step
                if self._log_step_error.due():
                    log.exception("scan event flusher step failed")
                await asyncio.sleep(self._flush_interval)

    def _replay_due(self) -> bool:
        return self._available and (self._replay is not None or self._spool.file_count > 0)

    async def _wait_for_work(self) -> None:
        if not self._buffer and not self._replay_due():
            timeout = None if self._available else max(0.0, self._next_probe - time.monotonic())
            self._has_data.clear()
            await _wait(self._has_data, timeout)
        if 0 < len(self._buffer) < self._batch_size and not self._replay_due() and not self._stopping:
            self._full.clear()
            await _wait(self._full, self._flush_interval)

    async def _step(self) -> None:
        if not self._available and time.monotonic() >= self._next_probe:
            await self._probe()
        if self._buffer:
            batch = self._take()
            try:
                await self._deliver(batch)
            except BaseException:
                self._buffer[:0] = batch  # a bug or a cancellation must not lose them (they may arrive twice)
                raise
        if self._replay_due() and not self._stopping and not await self._replay_some():
            await asyncio.sleep(self._flush_interval)

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._client.ping()
        except _UNREACHABLE:
            self._next_probe = time.monotonic() + self._probe_interval
            return
        self._available = True
        if self._log_recovered.due():
            log.info("redis answers again; %d scan spool files to replay", self._spool.file_count)

    def _unavailable(self, error: BaseException) -> None:
        if self._available and self._log_unavailable.due():
            what = "refused" if isinstance(error, ResponseError) else "is unreachable for"
            why = str(error) or f"no answer within {self._write_timeout:g} s"
            log.warning(
                "redis %s scan events (%s: %s); spooling them to %s until it answers",
                what,
                type(error).__name__,
                why,
                self._spool.directory,
            )
        self._available = False
        self._next_probe = time.monotonic() + self._probe_interval

    async def _deliver(self, batch: list[bytes]) -> bool:
        """Send a batch to Redis batch_size events at a time, spooling what Redis does not take (all that is
        left once close()'s deadline has passed).

        False when part of the batch is neither in Redis nor in the spool (it is back in the buffer).
        """
        if not self._available:
            return await self._to_spool(batch)
        size = self._batch_size
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            deadline = self._close_deadline
            seconds = self._write_timeout if deadline is None else min(self._write_timeout, deadline - time.monotonic())
            failed = await self._xadd(chunk, seconds) if seconds > 0 else chunk
            self._written += len(chunk) - len(failed)
            if failed:
                return await self._to_spool([*failed, *batch[start + size :]])
        return True

    async def _xadd(self, payloads: list[bytes], seconds: float) -> list[bytes]:
        """One round trip adding these events to the stream; returns the ones Redis did not take (all of them
        when it did not answer in time, though it may have added some)."""
        self._round_trips += 1
        try:
            async with asyncio.timeout(seconds):
                if self._script is not None:
                    reply = await self._script(keys=[self._stream], args=[self._trim_arg, *payloads])
                    return self._script_failures(payloads, reply)
                async with self._client.pipeline(transaction=False) as pipe:
                    for payload in payloads:
                        pipe.execute_command(*self._xadd_head, payload)
                    results = await pipe.execute(raise_on_error=False)
        except _UNREACHABLE as exc:
            self._unavailable(exc)
            return payloads
        failed = [payload for payload, result in zip(payloads, results, strict=True) if isinstance(result, Exception)]
        if failed:
            self._unavailable(next(result for result in results if isinstance(result, Exception)))
        return failed

    def _script_failures(self, payloads: list[bytes], reply: list[Any]) -> list[bytes]:
        """The script answers {added} or {added before the failed XADD, its error}."""
        added = int(reply[0])
        if len(reply) == 1:
            return []
        error = reply[1]
        self._unavailable(ResponseError(error.decode(errors="replace") if isinstance(error, bytes) else str(error)))
        return payloads[added:]

    async def _to_spool(self, batch: list[bytes]) -> bool:
        try:
            await self._io(self._spool.append, batch)
        except (OSError, SpoolBusyError) as exc:
            if self._log_spool_error.due():
                log.error("cannot write scan events to the spool in %s: %s", self._spool.directory, exc)
            self._buffer[:0] = batch
            if len(self._buffer) > self._hard_limit:
                excess = len(self._buffer) - self._hard_limit
                del self._buffer[:excess]
                self._drop(excess, "the scan spool is not writable and the buffer is full")
            return False
        self._spooled += len(batch)
        return True

    async def _replay_some(self) -> bool:
        """Send up to a few batches of the oldest spool file; False when there was nothing to do."""
        if self._replay is None:
            path = await self._io(self._spool.oldest)
            if path is None:
                return False
            try:
                content = await self._io(self._spool.read, path)
            except OSError as exc:
                log.error("cannot read the scan spool file %s (%s); moving it aside", path, exc)
                with contextlib.suppress(OSError):
                    await self._io(self._spool.quarantine, path)
                return True
            if content.torn_bytes:
                self._torn += 1
                log.warning(
                    "scan spool file %s ends in %d bytes that are not a whole record (a crash while writing); "
                    "skipping them, replaying the %d records before",
                    path.name,
                    content.torn_bytes,
                    len(content.records),
                )
            self._replay = _Replay(path, content.records)
        replay = self._replay
        for _ in range(_REPLAY_BATCHES_PER_STEP):
            if replay.offset >= len(replay.records) or self._stopping:
                break
            chunk = replay.records[replay.offset : replay.offset + self._batch_size]
            failed = await self._xadd(chunk, self._write_timeout)
            # Move past what is surely in the stream; the rest is sent again once Redis answers.
            done = len(chunk) - len(failed) if failed == chunk[len(chunk) - len(failed) :] else 0
            replay.offset += done
            self._replayed += done
            if failed:
                return True
        if replay.offset >= len(replay.records):
            self._replay = None
            try:
                await self._io(self._spool.remove, replay.path)
            except OSError:
                log.exception("cannot delete the replayed scan spool file %s", replay.path)
            log.info("replayed %d scan events from the spool file %s", len(replay.records), replay.path.name)
        return True
