"""Stopping background tasks for certain.

`task.cancel()` followed by `await task` hangs forever when something inside the task swallows the
cancellation (a client library that catches CancelledError around a network read, say) and the task
then goes on to sleep for an hour. `stop` cancels again until the task is done, and gives up after a
deadline with a warning instead of holding up a server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("qrmesh.tasks")


async def stop(task: asyncio.Task[Any] | None, *, patience: float = 10.0) -> None:
    """Cancel `task` and wait until it is done, cancelling again while it is not; at most `patience` s."""
    if task is None or task.done():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("background task did not stop when cancelled", extra={"task": task.get_name()})
            return
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task failed while stopping", exc_info=task.exception())


async def repeat(
    step: Callable[[], Awaitable[object]],
    wake: asyncio.Event,
    *,
    every: float,
    retry_min: float,
    retry_max: float,
    what: str,
) -> None:
    """Run `step` whenever `wake` is set, and at least every `every` seconds; after a failure run it again
    with exponential backoff (`retry_min` doubling up to `retry_max`) until it succeeds. Never returns: run it
    as a task and end it with `stop`."""
    failures = 0
    while True:
        if failures:
            await asyncio.sleep(min(retry_min * 2 ** (failures - 1), retry_max))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), every)
        wake.clear()
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - keep trying until what the step needs answers again
            failures += 1
            log.warning(f"{what} failed", extra={"attempt": failures, "error": repr(exc)})
            continue
        if failures:
            log.info(f"{what} works again", extra={"failed_attempts": failures})
        failures = 0
