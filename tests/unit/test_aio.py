"""shared/aio.py: waits that never swallow a cancellation, and a bounded wait for tasks to
end. The race is made deterministic: the awaited thing finishes and the waiting task is
cancelled in the same loop iteration, before that task runs again."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from shared.aio import cancel_and_wait, event_within


async def _finish_and_cancel(task: asyncio.Task[None], finish: asyncio.Future[None]) -> None:
    await asyncio.sleep(0)  # the task is now waiting
    await asyncio.sleep(0)
    finish.set_result(None)
    task.cancel()


async def test_a_timeout_wait_passes_on_a_cancel_that_lands_with_the_result() -> None:
    """The pattern agent/session.py's heartbeat loop uses around its libvirt listing."""
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    went_on = False

    async def body() -> None:
        nonlocal went_on
        async with asyncio.timeout(10):
            await asyncio.shield(inner)
        went_on = True

    task = asyncio.create_task(body())
    await _finish_and_cancel(task, inner)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not went_on


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython gh-86296 is fixed in 3.12")
async def test_why_not_wait_for_on_3_11_it_swallows_that_cancel() -> None:
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    went_on = asyncio.Event()

    async def body() -> None:
        await asyncio.wait_for(asyncio.shield(inner), 10)
        went_on.set()

    task = asyncio.create_task(body())
    await _finish_and_cancel(task, inner)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert went_on.is_set()  # the cancelled task ran on: what hung the agent's session
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_event_within_says_whether_it_was_set_and_passes_on_a_cancel() -> None:
    event = asyncio.Event()
    assert await event_within(event, 0.01) is False
    event.set()
    assert await event_within(event, 10) is True
    event.clear()
    waiter = asyncio.create_task(event_within(event, 10))
    await asyncio.sleep(0)
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_cancel_and_wait_names_a_task_that_ignores_its_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    async def polite() -> None:
        await asyncio.sleep(3600)

    tasks = [
        asyncio.create_task(stubborn(), name="stubborn"),
        asyncio.create_task(polite(), name="polite"),
    ]
    await asyncio.sleep(0)
    assert await cancel_and_wait(tasks, grace_s=0.05) == ["stubborn"]
    assert tasks[1].cancelled()
    release.set()
    tasks[0].cancel()
    await asyncio.wait(tasks[:1])
    assert await cancel_and_wait(tasks, grace_s=0.05) == []
