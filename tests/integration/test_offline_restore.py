"""Issue 10 item 4: the agent's cache of desired state, and the offline restore from it:
against libvirt's test driver (VMs that should run are started at the generation held, a
paused one comes back paused, one alone longer than its stop_after stays stopped), and a
reboot while offline with a real guest, judged by `virsh list` on the node's libvirtd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.contact import ControllerContact
from agent.desired_cache import PAUSED, RUNNING, STOPPED, DesiredStateCache
from agent.hypervisor.base import BootMedia
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from agent.offline import OfflineRestore
from agent.session import AgentSession
from lab.libvirtd import PrivateLibvirtd
from lab.processes import free_port
from shared.commands import (
    ChangePower,
    CommandError,
    CommandResult,
    CreateVM,
    DeleteVM,
    FinishMigration,
    LandMigration,
    Migrate,
    MigrationTarget,
    PowerAction,
)
from shared.config import Seconds
from shared.domain import DisconnectPolicy, VMSpec, VMState
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images
from tests.integration.libvirtd_faults import kill, qemu_pid, restart
from tests.integration.test_state_faults import deploy


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    driver = LibvirtHypervisor("test:///default")
    try:
        yield driver
    finally:
        driver.close()


def spec(name: str, stop_after: float | None) -> VMSpec:
    return VMSpec(name, "tiny", 1, 128, disconnect=DisconnectPolicy(0.0, stop_after))


def create(
    hv: LibvirtHypervisor, tmp: Path, cache: DesiredStateCache, s: VMSpec, **kw: bool
) -> str:
    vm_id = str(uuid.uuid4())
    for f in ("vmlinuz", "initrd.img"):
        (tmp / f).write_bytes(b"not booted by the test driver")
    media = BootMedia(kernel=str(tmp / "vmlinuz"), initrd=str(tmp / "initrd.img"))
    hv.create(vm_id, s, 3, media, str(tmp / f"{vm_id}.log"))
    cache.record(CreateVM(vm_id, s, 3, **kw), CommandResult("c"))
    return vm_id


def test_the_cache_follows_the_commands_that_succeeded(tmp_path: Path) -> None:
    cache = DesiredStateCache(tmp_path)
    s = spec("web", 30.0)
    cache.record(CreateVM("a", s, 2), CommandResult("1"))
    cache.record(CreateVM("b", s, 1, start_paused=True), CommandResult("2"))
    cache.record(ChangePower("a", "web", 2, PowerAction.STOP), CommandResult("3"))
    failed = CommandResult("4", error=CommandError("INTERNAL", "libvirt said no"))
    cache.record(DeleteVM("b", "web", 1), failed)  # it failed: b is still wanted here
    wanted = [("a", 2, STOPPED, 30.0), ("b", 1, PAUSED, 30.0)]
    assert [(v.vm_id, v.generation, v.desired, v.stop_after_s) for v in cache.vms()] == wanted
    again = DesiredStateCache(tmp_path)  # what a restarted agent reads
    assert [(v.vm_id, v.generation, v.desired, v.stop_after_s) for v in again.vms()] == wanted
    cache.record(DeleteVM("b", "web", 1), CommandResult("5"))
    assert [v.vm_id for v in cache.vms()] == ["a"]


def test_a_cold_or_snapshot_move_keeps_the_source_copy_stopped_until_it_goes(
    tmp_path: Path,
) -> None:
    """Its source copy is never started offline while the move may have landed; a failed
    move's restart makes it wanted again; its release removes it."""
    cache = DesiredStateCache(tmp_path)
    s = spec("web", 30.0)
    cache.record(CreateVM("a", s, 2), CommandResult("1"))
    target = MigrationTarget("qemu+tcp://b/system", "tcp://b", console_log="/v/a/console.log")
    cache.record(Migrate("a", "web", target, 3, mode="snapshot"), CommandResult("2"))
    assert [(v.vm_id, v.desired) for v in cache.vms()] == [("a", STOPPED)]
    cache.record(ChangePower("a", "web", 2, PowerAction.START), CommandResult("3"))
    assert [(v.vm_id, v.desired) for v in cache.vms()] == [("a", RUNNING)]
    cache.record(DeleteVM("a", "web", 2), CommandResult("4"))
    assert cache.vms() == []


def test_a_stopped_vm_landed_by_a_cold_move_is_cached_stopped(tmp_path: Path) -> None:
    """An offline restart must not start what arrived stopped, even after its finish."""
    cache = DesiredStateCache(tmp_path)
    s = spec("idle", 30.0)
    cache.record(LandMigration("a", s, 4, stay_stopped=True), CommandResult("1"))
    cache.record(FinishMigration("a", s, 4), CommandResult("2"))
    assert [(v.vm_id, v.generation, v.desired) for v in cache.vms()] == [("a", 4, STOPPED)]
    cache.record(LandMigration("b", spec("web", 30.0), 2), CommandResult("3"))  # a running one
    assert [(v.vm_id, v.desired) for v in cache.vms()] == [("a", STOPPED), ("b", RUNNING)]


def test_an_offline_restart_brings_back_what_should_run(
    hv: LibvirtHypervisor, tmp_path: Path
) -> None:
    cache = DesiredStateCache(tmp_path / "state")
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    run = create(hv, tmp_path, cache, spec(f"r-{uuid.uuid4().hex[:6]}", 30.0))
    paused = create(hv, tmp_path, cache, spec(f"p-{uuid.uuid4().hex[:6]}", None), start_paused=True)
    fenced = create(hv, tmp_path, cache, spec(f"f-{uuid.uuid4().hex[:6]}", 5.0))
    try:
        for vm_id in (run, paused, fenced):  # the reboot: QEMU gone, domains shut off
            hv.stop(vm_id)
        now[0] += 10.0  # alone 10 s: longer than the third VM's stop_after
        restore = OfflineRestore(hv, cache, contact)
        restore.restore()
        states = {v.vm_id: v.state for v in hv.list_vms()}
        assert states[run] is VMState.RUNNING
        assert states[paused] is VMState.PAUSED
        assert states[fenced] is VMState.STOPPED
        assert sorted(restore.started) == sorted([run, paused])
        assert "longer than its stop_after 5s" in restore.kept_stopped[fenced]
    finally:
        for vm_id in (run, paused, fenced):
            hv.delete(vm_id)


@pytest.mark.qemu
async def test_a_reboot_while_offline_restarts_the_vm_and_reconnects_cleanly(
    cluster: Cluster, own_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> None:
    """The gateway reboots with its uplink down: agent stopped, QEMU and libvirtd killed,
    libvirtd started again (the domain shut off). The agent, started with no controller to
    reach, runs the VM again from its cache; reconnected, the controller sees that one copy
    running, at the generation it placed."""
    agent = await cluster.start_agent("edge-o", own_libvirtd.uri, tiny_image_dir)
    vm = await deploy(cluster, "gateway-app")
    state_dir = agent.session.config.state_dir
    old_guest = qemu_pid(own_libvirtd, "gateway-app")
    await cluster.stop_agent("edge-o")
    os.kill(old_guest, signal.SIGKILL)  # the power cut
    kill(own_libvirtd)
    restart(own_libvirtd)
    assert virsh_states(own_libvirtd.uri)["nc-gateway-app"] == "shut off"

    nowhere = f"127.0.0.1:{free_port()}"  # the uplink is down: no controller answers
    config = replace(agent.session.config, controller=nowhere, offline_grace=Seconds(0.5))
    hypervisor = await asyncio.to_thread(
        LibvirtHypervisor, own_libvirtd.uri, "auto", str(tiny_image_dir)
    )
    offline = AgentSession(config, hypervisor, ImageCatalog(tiny_image_dir))
    task = asyncio.create_task(offline.run_forever())
    try:
        await eventually(  # the restore's own record too: it notes a start once it returned
            lambda: _true(
                virsh_states(own_libvirtd.uri).get("nc-gateway-app") == "running"
                and offline.offline.started == [vm.id]
            ),
            60,
            "the VM running again from the cache, with no controller",
        )
        assert not offline.connected.is_set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await offline.close()
        await asyncio.to_thread(hypervisor.close)
    assert state_dir == config.state_dir
    await cluster.start_agent("edge-o", own_libvirtd.uri, tiny_image_dir)  # the uplink is back

    async def one_copy_running() -> bool:
        shown = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="gateway-app"))
        return shown.state == pb.VM_STATE_RUNNING and shown.generation == vm.generation

    await eventually(one_copy_running, 30, "the controller seeing the one copy running")
    assert list(virsh_states(own_libvirtd.uri)) == ["nc-gateway-app"]
    assert not (await cluster.api.ListOrphans(epb.ListOrphansRequest())).orphans


async def _true(value: bool) -> bool:
    return value


def virsh_states(uri: str) -> dict[str, str]:
    out = subprocess.run(
        ["virsh", "-c", uri, "list", "--all"], capture_output=True, text=True, check=True
    ).stdout
    states = {}
    for line in out.splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) == 3:
            states[parts[1]] = parts[2].strip()
    return states


async def test_the_controllers_settings_are_cached_and_used_by_an_agent_started_offline(
    tmp_path: Path,
) -> None:
    """The welcome's intervals (the controller's, here 0.7 s where the agent's file says
    0.5 s) land in the cache; an agent restarted with no controller to reach uses them."""
    cluster = Cluster(tmp_path, heartbeat_interval=0.7)
    await cluster.start_controller()
    images = tmp_path / "images"
    try:
        make_fake_kernel_images(images)
        agent = await cluster.start_agent("edge-s", cluster.test_uri("edge-s"), images)
        config = replace(agent.session.config, heartbeat_interval=Seconds(0.5))
        cached = agent.session.desired.settings()
        assert cached["heartbeat_interval_s"] == 0.7 and cached["probe_interval_s"] > 0
        await cluster.stop_agent("edge-s")
    finally:
        await cluster.close()
    hypervisor = await asyncio.to_thread(LibvirtHypervisor, "test:///default")
    try:
        restarted = AgentSession(config, hypervisor, ImageCatalog(images))
        assert restarted.heartbeat_interval == 0.7  # the controller's, not the file's 0.5
        assert restarted.probe_interval == cached["probe_interval_s"]
        await restarted.close()
    finally:
        await asyncio.to_thread(hypervisor.close)


def test_a_settings_cache_keeps_only_given_values(tmp_path: Path) -> None:
    cache = DesiredStateCache(tmp_path)
    cache.remember_settings({"heartbeat_interval_s": 5.0, "probe_interval_s": 0.0})
    assert cache.settings() == {"heartbeat_interval_s": 5.0}  # 0: the welcome did not say
    cache.remember_settings({"heartbeat_interval_s": 2.0})
    assert cache.settings() == {"heartbeat_interval_s": 2.0}
    cache.close()
