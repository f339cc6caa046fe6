"""Cold and snapshot migration of a real TCG guest between two private libvirtds in namespaces
of their own (the pair of tests/contract/test_migration.py). The witnesses are libvirt on each
side and the guest's own console: a snapshot-migrated guest goes on counting its uptime on the
target without booting again; a cold-migrated one boots there. A failure while the files move
leaves the source's copy running again, as it was."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from agent.hypervisor.base import MigrationTarget
from agent.images.builder import FIRST_LINE
from agent.vm_files import INCOMING_DISK, INCOMING_SAVE, SAVE_FILE
from shared.domain import VMState
from shared.errors import NovaCronError, Unavailable
from tests.conftest import wait_for
from tests.contract.migration_pair import (
    HEARTBEAT_TIMEOUT_S,
    Node,
    Pair,
    _booted,
    _qemu_alive,
    _unique,
)

pytestmark = pytest.mark.qemu

UPTIME = re.compile(r"heartbeat: up (\d+)s")


def _uptimes(log: Path) -> list[int]:
    return [int(m) for m in UPTIME.findall(log.read_text(errors="replace"))] if log.exists() else []


def _wait_uptime(log: Path, above: int) -> int:
    """The guest's next uptime above `above` in its console log."""
    wait_for(
        lambda: any(u > above for u in _uptimes(log)),
        HEARTBEAT_TIMEOUT_S,
        f"an uptime above {above}s in {log}",
        interval_s=0.2,
    )
    return max(_uptimes(log))


def _offline_target(node: Node, vm_id: str) -> MigrationTarget:
    """What the node's agent answers to prepare_migration, reached through its unix socket:
    the source's agent uploads from its own namespace, this test from the root one."""
    return dataclasses.replace(node.target(vm_id), libvirt_uri=node.daemon.uri)


def _land(node: Node, vm_id: str, generation: int, start: bool = True) -> None:
    """What the target's agent does once the files are in: adopt the disk, define, run."""
    directory = node.vm_dir(vm_id)
    node.catalog.adopt_overlay("tiny", directory, directory / INCOMING_DISK)
    node.driver.land(vm_id, str(directory), generation, start=start)


def _backing(disk: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "-U", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if "backing file:" in line)


def test_snapshot_migration_continues_the_guest_where_it_was(pair: Pair) -> None:
    a, b = pair.a, pair.b
    name = _unique("snap")
    vm_id, _ = pair.create(a, name, generation=2)
    _booted(a, vm_id, name)
    before = _wait_uptime(a.console(vm_id), 0)
    target = _offline_target(b, vm_id)

    a.driver.send_offline(vm_id, target, "snapshot", generation=3)
    on_a = a.driver.get_vm(vm_id)
    assert on_a is not None and on_a.state == VMState.STOPPED  # kept, startable, until deleted
    assert (a.vm_dir(vm_id) / SAVE_FILE).is_file()
    assert not _qemu_alive(a, name)
    _land(b, vm_id, 3)

    on_b = b.driver.get_vm(vm_id)
    assert on_b is not None and (on_b.state, on_b.generation) == (VMState.RUNNING, 3)
    assert _backing(Path(target.disk)) == str(b.catalog.manifest("tiny").disk)
    log = Path(target.console_log)
    after = _wait_uptime(log, before)
    text = log.read_text(errors="replace")
    print(f"\nuptime on A before: {before}s; on B after: {after}s\n{text[-400:]}")
    assert FIRST_LINE.format(name=name, kernel="") not in text  # never booted on B
    assert after > before


def test_cold_migration_boots_the_guest_on_the_target(pair: Pair) -> None:
    a, b = pair.a, pair.b
    name = _unique("cold")
    vm_id, _ = pair.create(a, name, generation=1)
    _booted(a, vm_id, name)
    target = _offline_target(b, vm_id)

    a.driver.send_offline(vm_id, target, "cold", generation=2, shutdown_timeout_s=5)
    on_a = a.driver.get_vm(vm_id)
    assert on_a is not None and on_a.state == VMState.STOPPED
    _land(b, vm_id, 2)

    on_b = b.driver.get_vm(vm_id)
    assert on_b is not None and (on_b.state, on_b.generation) == (VMState.RUNNING, 2)
    _booted(b, vm_id, name)  # its first line again: it booted on B


def test_a_stopped_guest_moves_cold_and_stays_stopped(pair: Pair) -> None:
    """A guest that powered off moves cold as it is: its disk and definition go, the target
    defines it without starting it (nothing booted there), at the new generation."""
    a, b = pair.a, pair.b
    name = _unique("idle")
    vm_id, _ = pair.create(a, name, generation=1)
    _booted(a, vm_id, name)
    a.driver.stop(vm_id)
    target = _offline_target(b, vm_id)

    a.driver.send_offline(vm_id, target, "cold", generation=2, shutdown_timeout_s=5)
    _land(b, vm_id, 2, start=False)

    on_b = b.driver.get_vm(vm_id)
    assert on_b is not None and (on_b.state, on_b.generation) == (VMState.STOPPED, 2)
    assert not _qemu_alive(b, name) and not b.console(vm_id).exists()  # never booted on B
    on_a = a.driver.get_vm(vm_id)  # the source's copy stays until the controller deletes it
    assert on_a is not None and on_a.state == VMState.STOPPED
    b.driver.start(vm_id)  # and it boots on B when asked, from its moved disk
    _booted(b, vm_id, name)


def test_a_transfer_that_fails_leaves_the_guest_running_on_the_source(
    pair: Pair, tmp_path: Path
) -> None:
    """The target's directory is not there (as if its agent never staged it): the upload
    fails after the guest was saved; the source restores it and the guest goes on."""
    a, b = pair.a, pair.b
    name = _unique("snapfail")
    vm_id, _ = pair.create(a, name)
    _booted(a, vm_id, name)
    before = _wait_uptime(a.console(vm_id), 0)
    target = _offline_target(b, vm_id)
    missing = tmp_path / "gone" / "console.log"
    with pytest.raises(NovaCronError, match="the vm runs here again"):
        a.driver.send_offline(
            vm_id, dataclasses.replace(target, console_log=str(missing)), "snapshot"
        )
    on_a = a.driver.get_vm(vm_id)
    assert on_a is not None and on_a.state == VMState.RUNNING
    assert not (a.vm_dir(vm_id) / SAVE_FILE).exists()
    assert b.driver.get_vm(vm_id) is None
    after = _wait_uptime(a.console(vm_id), before)
    assert FIRST_LINE.format(name=name, kernel="") in a.console(vm_id).read_text()
    assert a.console(vm_id).read_text().count(FIRST_LINE.format(name=name, kernel="")) == 1
    print(f"\nuptime before {before}s, after the failed move {after}s")


def test_an_unreachable_target_fails_cold_migration_and_restarts_the_guest(pair: Pair) -> None:
    a, b = pair.a, pair.b
    name = _unique("coldfail")
    vm_id, _ = pair.create(a, name)
    _booted(a, vm_id, name)
    nobody = f"qemu+unix:///system?socket={b.vm_root}/no-such-libvirt-sock"
    target = dataclasses.replace(b.target(vm_id), libvirt_uri=nobody)
    with pytest.raises(Unavailable, match="the vm runs here again"):
        a.driver.send_offline(vm_id, target, "cold", shutdown_timeout_s=2)
    on_a = a.driver.get_vm(vm_id)
    assert on_a is not None and on_a.state == VMState.RUNNING


def test_land_refuses_what_did_not_arrive(pair: Pair) -> None:
    b = pair.b
    with pytest.raises(NovaCronError, match="nothing arrived"):
        b.driver.land("00000000-0000-4000-8000-000000000001", str(b.vm_root / "nope"), 1)


def test_a_landing_that_fails_leaves_nothing_on_the_target_and_the_source_restorable(
    pair: Pair,
) -> None:
    """The save file that arrived is cut short (as a transfer broken off would leave it):
    restoring it on B fails, B keeps no domain, and A's own save still restores the guest,
    which goes on counting (what the controller's restart of the source does)."""
    a, b = pair.a, pair.b
    name = _unique("landfail")
    vm_id, _ = pair.create(a, name)
    _booted(a, vm_id, name)
    before = _wait_uptime(a.console(vm_id), 0)
    a.driver.send_offline(vm_id, _offline_target(b, vm_id), "snapshot", generation=2)
    arrived = b.vm_dir(vm_id) / INCOMING_SAVE
    with arrived.open("r+b") as f:
        f.truncate(arrived.stat().st_size // 2)
    with pytest.raises(NovaCronError):
        _land(b, vm_id, 2)
    assert b.driver.get_vm(vm_id) is None  # nothing left defined there
    status = a.driver.restore_saved(vm_id, str(a.vm_dir(vm_id) / SAVE_FILE))
    assert status.state == VMState.RUNNING and status.generation == 1
    assert not (a.vm_dir(vm_id) / SAVE_FILE).exists()
    after = _wait_uptime(a.console(vm_id), before)
    assert a.console(vm_id).read_text().count(FIRST_LINE.format(name=name, kernel="")) == 1
    print(f"\nuptime before {before}s, after the failed landing {after}s, on A")
