"""Background tasks stop on shutdown even when something inside them swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from qrmesh.platform import tasks


async def test_a_task_that_swallows_one_cancellation_still_stops() -> None:
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            # What some client libraries do around a network read: the cancellation is lost...
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
            # ...and the loop goes on to a long wait that a single cancel() would never end.
            await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)
    await tasks.stop(task, patience=5)
    assert task.done()
    assert rounds == 1


async def test_a_task_that_never_stops_is_given_up_on_after_the_patience() -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0.01)
    await tasks.stop(task, patience=0.3)
    assert not task.done()  # stop returned anyway: shutdown is not held up forever
    release.set()
    await tasks.stop(task, patience=5)
    assert task.done()


async def test_nothing_to_stop() -> None:
    await tasks.stop(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await tasks.stop(done)


async def test_repeat_runs_when_woken_and_retries_failures_with_backoff() -> None:
    wake = asyncio.Event()
    calls: list[float] = []
    succeeded, done = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    async def step() -> None:
        calls.append(loop.time())
        if len(calls) <= 2:
            raise ConnectionError("not yet")
        succeeded.set()
        if len(calls) == 4:
            done.set()

    task = asyncio.create_task(tasks.repeat(step, wake, every=3600, retry_min=0.01, retry_max=0.02, what="test"))
    try:
        wake.set()  # 1 fails, 2 (after 0.01 s) fails, 3 (after 0.02 s) succeeds, then it waits for a wake
        async with asyncio.timeout(10):
            await succeeded.wait()
        await asyncio.sleep(0.05)
        assert len(calls) == 3  # a success is not repeated until woken (or `every` passes)
        wake.set()
        async with asyncio.timeout(10):
            await done.wait()
        assert calls[1] - calls[0] >= 0.01
        assert calls[2] - calls[1] >= 0.02
    finally:
        await tasks.stop(task)
