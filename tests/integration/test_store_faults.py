"""The store on a real full disk (a small tmpfs) and under a real lock held by another process's
connection: the write fails with a clear error, nothing of it is written, earlier state is intact.

The tmpfs needs root (skipped outside CI without it, a failure in CI); the lock test needs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.core.instructions import Persist
from controller.records import AuditEntry, Tombstone, VMRecord
from controller.store import BUSY_TIMEOUT_MS, SQLiteStore, StoreFull, StoreUnavailable
from shared.errors import ResourceExhausted, Unavailable
from tests.conftest import require_backend
from tests.unit.test_store import a_migration, a_node, a_vm

TMPFS_SIZE = "512k"


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 512 KiB tmpfs of our own, unmounted (and its mount point removed) afterwards."""
    require_backend(os.geteuid() == 0, "needs root to mount a small tmpfs")
    require_backend(shutil.which("mount") is not None, "mount(8) not installed")
    point = Path(tempfile.mkdtemp(prefix="nc-store-full-", dir="/tmp"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        point.rmdir()
        require_backend(False, f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)
        point.rmdir()


def _fat_vm(i: int) -> VMRecord:
    """A VM record of ~24 KiB (its labels), so a few of them fill the tmpfs."""
    vm = a_vm(f"id-{i}", f"vm-{i}", created_at=float(i))
    labels = {f"label-{j}": f"{i}-{j}-" + "x" * 200 for j in range(100)}
    return dataclasses.replace(vm, spec=dataclasses.replace(vm.spec, labels=labels))


async def test_a_full_disk_fails_the_write_clearly_and_keeps_every_earlier_record(
    small_tmpfs: Path,
) -> None:
    path = small_tmpfs / "state" / "controller.db"
    store = SQLiteStore(path)
    await store.apply(Persist(nodes=(a_node(),), migrations=(a_migration(),)))
    written: list[VMRecord] = []
    failed: Persist | None = None
    error: StoreFull | None = None
    try:
        for i in range(200):  # 200 x 24 KiB is far more than 512 KiB: it must fill
            vm = _fat_vm(i)
            persist = Persist(
                vms=(vm,),
                tombstones=(Tombstone(f"gone-{i}", f"gone-{i}", 1, time.time()),),
                audit=(AuditEntry(at=float(i), action="vm.deploy", target=f"id-{i}"),),
            )
            try:
                await store.apply(persist)
            except StoreFull as exc:
                failed, error = persist, exc
                break
            written.append(vm)
        assert error is not None and failed is not None, "the tmpfs never filled"
        assert isinstance(error, ResourceExhausted)
        message = str(error)
        assert message.startswith(f"{path}: cannot write the database: the disk is full")
        assert "nothing was changed" in message
        assert written, "the disk filled before the first VM: nothing to prove intact"

        # the same store still answers reads, and nothing of the failed Persist is there
        state = await store.load()
        assert state.vms == written
        assert [t.vm_id for t in state.tombstones] == [f"gone-{i}" for i in range(len(written))]
        await store.close()

        # a restart on the still-full disk finds every earlier record, and only those
        reopened = SQLiteStore.open(path, create=False)
        assert not reopened.created
        state = await reopened.load()
        assert state.vms == written
        assert state.nodes == [a_node()]
        assert state.migrations == [a_migration()]
        assert len(await reopened.audit_log(limit=1000)) == len(written)
        assert failed.vms[0].id not in {vm.id for vm in state.vms}
        await reopened.close()
    finally:
        await store.close()


async def test_a_locked_database_fails_the_write_within_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    store = SQLiteStore(path)
    await store.apply(Persist(vms=(a_vm("id-1", "web"),)))
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    persist = Persist(
        vms=(a_vm("id-2", "db"),),
        nodes=(a_node(),),
        migrations=(a_migration(),),
        tombstones=(Tombstone("id-0", "old", 1, 1.0),),
        audit=(AuditEntry(at=1.0, action="vm.deploy", target="id-2"),),
    )
    try:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.apply(persist)
        waited = time.monotonic() - started
        assert isinstance(caught.value, Unavailable)
        assert str(caught.value).startswith(f"{path}: cannot write the database: ")
        assert "database is locked by another process" in str(caught.value)
        assert "nothing was changed" in str(caught.value)
        assert waited < BUSY_TIMEOUT_MS / 1000 + 1.5, f"answered after {waited:.1f}s"
        # reads are not blocked by a writer (WAL): the Persist is not there
        state = await store.load()
        assert [vm.id for vm in state.vms] == ["id-1"]
        assert (state.nodes, state.migrations, state.tombstones) == ([], [], [])
    finally:
        other.execute("ROLLBACK")
        other.close()
    state = await store.load()
    assert [vm.id for vm in state.vms] == ["id-1"]
    assert await store.audit_log() == []
    await store.apply(persist)  # the lock is gone: the same write goes through
    assert [vm.id for vm in (await store.load()).vms] == ["id-1", "id-2"]
    await store.close()
