"""asyncio helpers that keep cancellation honest.

On Python 3.11, `asyncio.wait_for` swallows the caller's cancellation when the awaited
future finishes in the same loop iteration (CPython gh-86296, fixed in 3.12): the cancelled
task then runs on, and whoever awaits its end waits for ever. A CI run saw exactly that: the
agent's session stopped its heartbeat loop just as a libvirt listing returned, and then hung
awaiting it (tests/integration/test_libvirtd_restart.py, after SIGCONT). So we wait with
`asyncio.timeout`, which tells its own timeout from a cancellation, and we bound how long a
session waits for its tasks to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def event_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`: True if it is set. A cancellation is raised."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], grace_s: float) -> list[str]:
    """Cancel `tasks` and wait up to `grace_s` for them to end; the names of those that did
    not (they ignored the cancellation: a bug, reported rather than waited on for ever)."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return []
    _, left = await asyncio.wait(pending, timeout=grace_s)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error on the way out is not "never retrieved"
    return sorted(t.get_name() for t in left)
