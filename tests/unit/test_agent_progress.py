"""The source's migration progress poller, against a fake progress source."""

from __future__ import annotations

import asyncio
import threading

from agent.progress import watch_migration
from shared.commands import MigrationProgress
from shared.errors import Internal

VM = "vm-1"


class Source:
    """Job figures that advance with each reading, like libvirt's while memory moves."""

    def __init__(self, fail_first: int = 0) -> None:
        self.reads = 0
        self.fail_first = fail_first
        self.threads: set[str] = set()

    def __call__(self, vm_id: str) -> MigrationProgress | None:
        self.threads.add(threading.current_thread().name)
        self.reads += 1
        if self.reads <= self.fail_first:
            raise Internal("job stats: not yet")
        done = min(self.reads * 100, 400)
        return MigrationProgress(vm_id, "", 500, done, 500 - done, memory_dirty_rate=4096)


async def test_readings_are_emitted_until_the_job_ends_then_a_final_one() -> None:
    source, sent = Source(), list[MigrationProgress]()
    release = asyncio.Event()

    async def migration() -> None:
        await release.wait()

    job = asyncio.ensure_future(migration())
    watcher = asyncio.create_task(watch_migration(job, source, sent.append, VM, "mig-1", 0.01))
    while len(sent) < 3:
        await asyncio.sleep(0.01)
    release.set()
    await watcher
    assert all(p.vm_id == VM and p.migration_id == "mig-1" for p in sent)
    remaining = [p.data_remaining for p in sent]
    assert remaining[:3] == [400, 300, 200]
    assert remaining == sorted(remaining, reverse=True)
    assert sent[-1] == MigrationProgress(VM, "mig-1", 500, 500, 0, 0)
    assert threading.current_thread().name not in source.threads  # read off the loop
    reads = source.reads
    await asyncio.sleep(0.05)
    assert source.reads == reads  # nothing polls after the end


async def test_a_failed_job_gets_no_final_reading_and_bad_readings_are_skipped() -> None:
    source, sent = Source(fail_first=2), list[MigrationProgress]()

    async def migration() -> None:
        while source.reads < 4:
            await asyncio.sleep(0.005)
        raise Internal("migrate: connection reset")

    job = asyncio.ensure_future(migration())
    await watch_migration(job, source, sent.append, VM, "mig-2", 0.01)
    assert sent and all(p.data_remaining > 0 for p in sent)  # readings 3.., no "done"
    assert job.exception() is not None


async def test_a_quick_job_still_reports_its_end() -> None:
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    job.set_result(None)
    sent: list[MigrationProgress] = []
    await watch_migration(job, Source(), sent.append, VM, "mig-3", 0.5)
    assert sent == [MigrationProgress(VM, "mig-3", 0, 0, 0)]


async def test_a_broken_sink_does_not_break_the_watch() -> None:
    def sink(_p: MigrationProgress) -> None:
        raise RuntimeError("outbox gone")

    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, job.set_result, None)
    await watch_migration(job, Source(), sink, VM, "mig-4", 0.01)
