"""Issue 9 items 6 and 7 with a real controller and agent: a lost, emptied or broken state dir
never destroys a VM, and a store that cannot be written changes nothing. Witnesses
independent of the controller: `virsh list` on the node's libvirtd, the agent's hypervisor,
the SQLite file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controller.store import StoreCorrupt
from lab.libvirtd import PrivateLibvirtd
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import require_backend
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images
from tests.integration.test_deploy_flow import expect_error


def virsh_names(uri: str) -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True, check=True
    )
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


async def deploy(cluster: Cluster, name: str, memory_mib: int = 128) -> pb.VM:
    spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=memory_mib)
    return await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec))


async def heartbeats_seen(cluster: Cluster, node_id: str, count: int) -> None:
    """Wait until the controller has heard `count` more heartbeats from the node (time in
    which a destructive reconcile would have acted)."""
    first = (await cluster.api.GetNode(epb.GetNodeRequest(node_id=node_id))).last_heartbeat
    seen: set[int] = set()

    async def enough() -> bool:
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id=node_id))
        if node.last_heartbeat.ToNanoseconds() != first.ToNanoseconds():
            seen.add(node.last_heartbeat.ToNanoseconds())
        return len(seen) >= count

    await eventually(enough, 30, f"{count} heartbeats from {node_id}")


@pytest.mark.qemu
async def test_an_emptied_state_dir_destroys_nothing_and_shows_the_orphans(
    cluster: Cluster, private_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> None:
    uri = private_libvirtd.uri
    await cluster.start_agent("edge-q", uri, tiny_image_dir)
    vms = [await deploy(cluster, f"keep-{i}") for i in range(2)]
    ours = {f"nc-{vm.spec.name}" for vm in vms}  # the driver's domain names
    domains = virsh_names(uri)
    assert ours <= domains
    try:
        # the operator loses the state dir (or points the controller at the wrong one)
        await cluster.stop_controller()
        state = cluster.tmp / "controller"
        shutil.move(state, cluster.tmp / "controller-lost")
        await cluster.start_controller()

        async def orphans_listed() -> bool:
            got = await cluster.api.ListOrphans(epb.ListOrphansRequest())
            return {o.vm.vm_id for o in got.orphans} == {vm.id for vm in vms}

        await eventually(orphans_listed, 30, "the node's VMs to be listed as orphans")
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-q"))
        assert node.condition == pb.NODE_CONDITION_NOT_READY
        assert "--new-installation" in node.condition_reason
        await heartbeats_seen(cluster, "edge-q", 3)
        assert virsh_names(uri) == domains  # not one domain destroyed
        listed = await cluster.api.ListVMs(epb.ListVMsRequest())
        assert list(listed.vms) == []

        # the operator says it is a new installation: the node is taken over, nothing deleted
        await cluster.stop_controller()
        await cluster.start_controller(new_installation=True)

        async def taken_over() -> bool:
            node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-q"))
            got = await cluster.api.ListOrphans(epb.ListOrphansRequest())
            return node.condition == pb.NODE_CONDITION_READY and len(got.orphans) == 2

        await eventually(taken_over, 30, "the node to be taken over with its orphans")
        assert virsh_names(uri) == domains
        adopted = await cluster.api.AdoptVM(epb.OrphanRef(node_id="edge-q", vm="keep-0"))
        assert (adopted.id, adopted.node_id) == (vms[0].id, "edge-q")
        gone = await cluster.api.DeleteOrphan(epb.OrphanRef(node_id="edge-q", vm="keep-1"))
        assert gone.vm.vm_id == vms[1].id
        assert virsh_names(uri) == domains - {"nc-keep-1"}
        # a restart on this state keeps the adopted VM and its node (the agent now knows it)
        await cluster.stop_controller()
        await cluster.start_controller()

        async def managed() -> bool:
            vm = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="keep-0"))
            return vm.state == pb.VM_STATE_RUNNING

        await eventually(managed, 30, "the adopted VM to be running after a restart")
    finally:
        for vm_id in virsh_names(uri) & {vm.id for vm in vms}:
            subprocess.run(["virsh", "-c", uri, "destroy", vm_id], capture_output=True)
            subprocess.run(["virsh", "-c", uri, "undefine", vm_id, "--nvram"], capture_output=True)


async def test_a_corrupt_store_stops_start_up_naming_the_file(cluster: Cluster) -> None:
    await cluster.stop_controller()
    state = cluster.tmp / "controller"
    state.mkdir(exist_ok=True)
    for leftover in state.glob("controller.db*"):
        leftover.unlink()
    (state / "controller.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)  # truncated
    with pytest.raises(StoreCorrupt, match=str(state / "controller.db")):
        await cluster.start_controller()
    cluster.server = None


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    require_backend(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_answers_clearly_and_nothing_is_acted_on_later(
    cluster: Cluster, tmp_path: Path, small_tmpfs: Path
) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    await cluster.stop_controller()
    state = small_tmpfs / "controller"
    await cluster.start_controller(state)
    agent = await cluster.start_agent(
        "edge-a", cluster.test_uri("edge-a", vcpus=512, memory_mib=65536), images
    )
    first = await deploy(cluster, "before", memory_mib=16)
    filler = small_tmpfs / "filler"
    free = shutil.disk_usage(small_tmpfs).free
    with filler.open("wb") as f:  # leave a few KiB: SQLite runs out part-way through
        f.write(b"\0" * max(0, free - 48 * 1024))
    ok: list[pb.VM] = [first]
    refused = ""
    for i in range(200):
        try:
            ok.append(await deploy(cluster, f"vm-{i}", memory_mib=16))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            refused = exc.details() or ""
            break
    assert refused, "the disk never filled"
    assert "controller.db" in refused and "full" in refused
    msg = await expect_error(
        cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="before")),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "full" in msg
    on_node = {s.vm_id for s in agent.hypervisor.list_vms()}
    with sqlite3.connect(state / "controller.db") as db:
        stored = {row[0] for row in db.execute("SELECT id FROM vms")}
    # every acknowledged VM runs and is stored; nothing runs that is not stored. (If the disk
    # filled while a create was answered, that VM is stored as pending and its caller was told
    # its state "could not be stored": the deploy was not acknowledged, and nothing is hidden.)
    assert {vm.id for vm in ok} <= on_node == stored
    assert len(on_node) - len(ok) <= 1
    await heartbeats_seen(cluster, "edge-a", 2)
    assert {s.vm_id for s in agent.hypervisor.list_vms()} == on_node

    # room again, and a restart: every acknowledged VM is there; the refused delete never ran
    filler.unlink()
    await cluster.stop_controller()
    await cluster.start_controller(state)
    listed = await cluster.api.ListVMs(epb.ListVMsRequest())
    assert {vm.id for vm in listed.vms} == stored

    async def all_running() -> bool:
        got = await cluster.api.ListVMs(epb.ListVMsRequest())
        return all(vm.state == pb.VM_STATE_RUNNING for vm in got.vms)

    await eventually(all_running, 30, "every VM to be reported running")
    assert {s.vm_id for s in agent.hypervisor.list_vms()} == on_node
    with sqlite3.connect(state / "controller.db") as db:
        assert {row[0] for row in db.execute("SELECT id FROM vms")} == stored


async def test_a_locked_database_answers_unavailable_and_nothing_is_acted_on_later(
    cluster: Cluster, tmp_path: Path
) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    agent = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images)
    vm = await deploy(cluster, "web", memory_mib=16)
    locker = sqlite3.connect(cluster.tmp / "controller" / "controller.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        msg = await expect_error(deploy(cluster, "other", 16), grpc.StatusCode.UNAVAILABLE)
        assert "locked" in msg and "controller.db" in msg
        msg = await expect_error(
            cluster.api.SuspendVM(epb.VMRef(name_or_id="web")), grpc.StatusCode.UNAVAILABLE
        )
        msg = await expect_error(
            cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="web")),
            grpc.StatusCode.UNAVAILABLE,
        )
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await heartbeats_seen(cluster, "edge-a", 2)
    held = {s.vm_id: s.state.value for s in agent.hypervisor.list_vms()}
    assert held == {vm.id: "running"}  # not created, not suspended, not deleted
    got = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web"))
    assert got.state == pb.VM_STATE_RUNNING and got.desired_state == pb.DESIRED_STATE_RUNNING
    again = await deploy(cluster, "other", 16)  # the lock is gone: it works
    assert again.state == pb.VM_STATE_RUNNING
