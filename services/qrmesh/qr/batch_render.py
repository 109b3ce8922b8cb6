"""The CPU work of batches, run in worker processes so it uses every core and never blocks the event loop:
checking a table (`prepare_batch`) and rendering a chunk of rows (`render_chunk`). Functions here are
top-level and take and return picklable values (serialized protos, dataclasses)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from typing import Any, TypeVar, cast

from qrmesh.qr.content import payload_from_proto
from qrmesh.qr.domain import batch_files, bulk_rows, payloads
from qrmesh.qr.domain.render import render
from qrmesh.qr.rendering import prepare
from qrmesh.qr.v1 import batch_pb2, design_pb2, qr_code_pb2, qr_code_service_pb2, stored_qr_code_pb2

T = TypeVar("T")
log = logging.getLogger("qrmesh.qr.batch_render")
CLOSE_GRACE = 5.0
"""Seconds `Pool.close` waits for busy workers before terminating them."""


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """A valid row as stored: its number, content (serialized), payload text, file and display name."""

    row: int
    content: bytes
    payload: str
    file_name: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked table: its header, row count, valid rows and row issues."""

    columns: list[str]
    total_rows: int
    rows: list[PreparedRow]
    errors: list[bulk_rows.RowIssue]
    unknown_placeholders: list[str]


def prepare_batch(data: bytes | list[dict[str, str]], spec_bytes: bytes, max_rows: int | None) -> Prepared:
    """Parse and check a table (bulk_rows), then name each valid row's file and code."""
    spec = batch_pb2.BatchSpec.FromString(spec_bytes)
    parsed = bulk_rows.parse_rows(data, spec, max_rows=max_rows)
    unknown = batch_files.check_template(spec.file_name_template, parsed.columns) + batch_files.check_template(
        spec.display_name_template, parsed.columns
    )
    if unknown:
        return Prepared(parsed.columns, parsed.total_rows, [], parsed.errors, unknown)
    names = batch_files.file_names(spec.file_name_template, ((v.row, v.values) for v in parsed.valid))
    rows = [
        PreparedRow(
            row=valid.row,
            content=valid.content.SerializeToString(deterministic=True),
            payload=payloads.encode(payload_from_proto(valid.content)),
            file_name=name,
            display_name=batch_files.display_name(spec.display_name_template, name, valid.values, valid.row),
        )
        for valid, name in zip(parsed.valid, names, strict=True)
    ]
    return Prepared(parsed.columns, parsed.total_rows, rows, parsed.errors, [])


def render_chunk(design: bytes, image_format: int, size: int, contents: Sequence[bytes]) -> list[bytes]:
    """Each content (serialized `Content`) drawn with one design; the image bytes in order. Every row of a
    batch has the same payload kind, so the design and options are worked out once."""
    if not contents:
        return []
    first = qr_code_pb2.Content.FromString(contents[0])
    request = qr_code_service_pb2.RenderQrCodeRequest(
        content=first,
        design=design_pb2.Design.FromString(design),
        format=cast(qr_code_service_pb2.RenderQrCodeRequest.Format.ValueType, image_format),
        size=size,
    )
    _, prepared_design, options = prepare(request)
    out = []
    for raw in contents:
        text = payloads.encode(payload_from_proto(qr_code_pb2.Content.FromString(raw)))
        out.append(render(text, prepared_design, options).data)
    return out


def warm_up() -> int:
    """The worker's process id, for nothing more than a call that costs nothing (it shows which process ran)."""
    return os.getpid()


def is_dynamic(spec: batch_pb2.BatchSpec) -> bool:
    """Whether a spec makes DYNAMIC codes."""
    return spec.mode == stored_qr_code_pb2.QrCode.DYNAMIC


class Pool:
    """A process pool made on first use ('forkserver': no copy of the server's threads or sockets)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: Executor | None = None

    def _get(self) -> Executor:
        if self._executor is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if context.get_start_method() == "forkserver":
                # The fork server loads the renderer once; each worker is a fork of it, ready at once.
                context.set_forkserver_preload([__name__])
            self._executor = ProcessPoolExecutor(max_workers=self.processes, mp_context=context)
        return self._executor

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker process. A worker that died (killed, out of memory) breaks the whole
        executor for good: it is replaced by a new one and the call is tried once more there."""
        call = functools.partial(function, *args)
        loop = asyncio.get_running_loop()
        executor = self._get()
        try:
            return await loop.run_in_executor(executor, call)
        except BrokenProcessPool:
            self._replace(executor)
        return await loop.run_in_executor(self._get(), call)

    def _replace(self, broken: Executor) -> None:
        """Drop a broken executor (the next `_get` makes a new one); calls that raced here drop it once."""
        if self._executor is broken:
            self._executor = None
            log.warning("a render process died; starting new ones")
        broken.shutdown(wait=False, cancel_futures=True)

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop the worker processes (running work is abandoned; its chunks are retried): queued work is
        cancelled, a worker still busy after `grace` seconds (a long table check) is terminated, so closing
        never waits for it."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        # The executor's own processes (a private attribute, read defensively): shutdown(wait=False) does not
        # end a busy one.
        known = getattr(executor, "_processes", None)
        processes = list(known.values()) if isinstance(known, dict) else []
        executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(_join, processes, grace)


def _join(processes: Sequence[Any], grace: float) -> None:
    """Wait up to `grace` seconds for `processes` to end, then terminate (and at last kill) the others. Waits on
    each process's sentinel, which the executor's own thread reaping them does not disturb."""
    pending = {process.sentinel: process for process in processes}
    for limit, action in ((grace, "terminate"), (2.0, "kill"), (2.0, "")):
        deadline = time.monotonic() + limit
        while pending and (left := deadline - time.monotonic()) > 0:
            try:
                for ready in wait_for(list(pending), left):
                    pending.pop(ready, None)
            except (OSError, ValueError):  # a sentinel closed meanwhile: its process was reaped
                break
        if not pending or not action:
            return
        for process in pending.values():
            with contextlib.suppress(OSError, ValueError):
                getattr(process, action)()


def default_processes(environ: Mapping[str, str] | None = None) -> int:
    """One render process per core."""
    return max(1, os.cpu_count() or 1)
