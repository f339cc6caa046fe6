"""MigrateVM on the control path (libvirt's test driver cannot migrate, so every attempt here
fails at some stage): refusals are clear and a failed migration leaves the VM running where it
was, its capacity booked once, nothing staged on the target. The real move is in
tests/system/test_mesh.py (QEMU guests on the lab) and tests/contract/test_migration.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from agent.config import LocationConfig
from agent.images.catalog import ImageCatalog
from controller.core.instructions import Persist
from controller.records import MigrationPhase, MigrationRecord
from controller.store import SQLiteStore
from shared.domain import VMSpec
from shared.errors import Internal
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images
from tests.integration.test_deploy_flow import assert_kept_table_matches_records, expect_error

BERLIN = LocationConfig(latitude=52.52, longitude=13.40, country="DE")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


async def _deploy(
    cluster: Cluster, name: str, countries: tuple[str, ...] = (), pin: bool = False
) -> pb.VM:
    """Placed on edge-a: pinned, or equal to edge-b in every score it wins the tie by id (a
    user location makes latency a distance estimate, equal for both, not their measured RTT
    to the controller, which differs by noise)."""
    spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    spec.placement.near.CopyFrom(pb.Location(latitude=52.52, longitude=13.40))
    spec.placement.countries.extend(countries)
    if pin:
        spec.placement.required_labels["site"] = "edge-a"
    vm = await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec))
    assert vm.node_id == "edge-a"
    return vm


async def test_refusals_name_the_reason_and_change_nothing(cluster: Cluster, images: Path) -> None:
    berlin = BERLIN
    await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=berlin)
    await cluster.start_agent("edge-b", cluster.test_uri("edge-b"), images, location=berlin)
    await cluster.start_agent(
        "edge-us",
        cluster.test_uri("edge-us"),
        images,
        location=LocationConfig(latitude=40.71, longitude=-74.0, country="US"),
        migration_host="127.0.0.1",
    )
    await _deploy(cluster, "web-1", countries=("DE",))
    pinned = pb.VMSpec(name="pinned", image="tiny", vcpus=1, memory_mib=128)
    pinned.placement.required_labels["site"] = "edge-a"
    await cluster.api.DeployVM(epb.DeployVMRequest(spec=pinned))

    def migrate(vm: str, to: str = "") -> object:
        return cluster.api.MigrateVM(epb.MigrateVMRequest(name_or_id=vm, target_node_id=to))

    assert await expect_error(migrate("nope"), grpc.StatusCode.NOT_FOUND) == "VM 'nope' not found"
    msg = await expect_error(migrate("pinned"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert msg == (
        "no other node can take VM 'pinned' (it runs on 'edge-a'): 1/3 nodes fit; "
        "rejected: 2 without labels [site=edge-a]"
    )
    msg = await expect_error(migrate("web-1", "edge-a"), grpc.StatusCode.INVALID_ARGUMENT)
    assert msg == "VM 'web-1' already runs on 'edge-a'"
    msg = await expect_error(migrate("web-1", "edge-zz"), grpc.StatusCode.NOT_FOUND)
    assert msg == "node 'edge-zz' not found"
    msg = await expect_error(migrate("web-1", "edge-us"), grpc.StatusCode.FAILED_PRECONDITION)
    assert msg == "node 'edge-us' cannot take VM 'web-1': country: country US not in [DE]"
    # edge-b passes every filter but its agent accepts no migrations (no migration_host)
    msg = await expect_error(migrate("web-1"), grpc.StatusCode.FAILED_PRECONDITION)
    assert msg.startswith("preparing node 'edge-b' for VM 'web-1': this node accepts no live")
    assert msg.endswith("; VM 'web-1' keeps running on 'edge-a'")

    vm = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
    assert (vm.node_id, vm.state) == ("edge-a", pb.VM_STATE_RUNNING)
    assert vm.state_reason == "migration to edge-b failed"
    for node_id, held in (("edge-a", 256), ("edge-b", 0)):
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id=node_id))
        assert node.allocated.memory_mib == held, node_id
    assert_kept_table_matches_records(cluster)


async def test_a_migration_that_fails_midway_leaves_the_vm_where_it_was(
    cluster: Cluster, images: Path
) -> None:
    """The target prepares (it has a migration_host); libvirt's test driver then refuses to
    migrate. The VM keeps running on its source and the target's staging is removed."""
    a = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=BERLIN)
    b = await cluster.start_agent(
        "edge-b", cluster.test_uri("edge-b"), images, location=BERLIN, migration_host="127.0.0.1"
    )
    vm = await _deploy(cluster, "web-1")
    msg = await expect_error(
        cluster.api.MigrateVM(epb.MigrateVMRequest(name_or_id="web-1", target_node_id="edge-b")),
        grpc.StatusCode.FAILED_PRECONDITION,  # the test driver cannot migrate
    )
    assert msg.startswith("migrating VM 'web-1' from 'edge-a' to 'edge-b': ")
    assert "p2p migration is not supported by the source host" in msg
    assert msg.endswith("; VM 'web-1' keeps running on 'edge-a'")
    assert a.hypervisor.get_vm(vm.id) is not None
    assert b.hypervisor.get_vm(vm.id) is None
    assert not (b.session.executor.vm_dir(vm.id)).exists()
    again = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
    assert (again.node_id, again.state) == ("edge-a", pb.VM_STATE_RUNNING)


async def test_a_postcopy_failing_after_arrival_is_reported_and_the_record_stays_on_the_target(
    cluster: Cluster, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Post-copy ran the guest on the target, then the job failed (libvirt's test driver cannot
    migrate, so the source's hypervisor plays that part: the guest appears running on the
    target, the source half pauses, then the error). The VM stays recorded on the target, where
    it ran last, and the caller hears the failure instead of a success."""
    a = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=BERLIN)
    b = await cluster.start_agent(
        "edge-b", cluster.test_uri("edge-b"), images, location=BERLIN, migration_host="127.0.0.1"
    )
    vm = await _deploy(cluster, "web-1")
    controller = cluster.server.controller if cluster.server else None
    assert controller is not None
    vm_dir = tmp_path / "landed"
    media = ImageCatalog(images).prepare("tiny", vm_dir)

    def postcopy_that_fails(vm_id: str, *_: object, postcopy: bool = False, **__: object) -> None:
        assert postcopy
        b.hypervisor.create(vm_id, VMSpec("web-1", "tiny", 1, 128), vm.generation, media, "c.log")
        a.hypervisor.suspend(vm_id)
        wait_for(lambda: controller.view.vms[vm_id].node_id == "edge-b", 10, "the arrival")
        raise Internal(f"migrate {vm_id}: link lost; post-copy had begun")

    monkeypatch.setattr(a.hypervisor, "migrate", postcopy_that_fails)
    request = epb.MigrateVMRequest(name_or_id="web-1", target_node_id="edge-b", postcopy=True)
    msg = await expect_error(cluster.api.MigrateVM(request), grpc.StatusCode.INTERNAL)
    assert "post-copy had begun" in msg
    assert msg.endswith(
        "; VM 'web-1' is recorded on 'edge-b', where it ran last: "
        "`novacron vm show web-1` tells its state"
    )
    again = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
    assert again.node_id == "edge-b"
    assert controller.view.vms[vm.id].migrating_to == ""
    assert a.hypervisor.get_vm(vm.id) is not None  # the source's half is kept, not destroyed
    assert_kept_table_matches_records(cluster)


async def _mark_migrating(
    cluster: Cluster, vm: pb.VM, phase: MigrationPhase = MigrationPhase.TRANSFER
) -> None:
    """Write, as a controller that died mid-migration would have left them, a VM record
    holding room on edge-b and its migration record in `phase` (the controller is stopped)."""
    store = SQLiteStore(cluster.tmp / "controller" / "controller.db", create=False)
    try:
        record = next(r for r in (await store.load()).vms if r.id == vm.id)
        active = not phase.terminal
        mig = MigrationRecord(
            id=f"mig-{vm.spec.name}",
            vm_id=vm.id,
            vm_name=vm.spec.name,
            source="edge-a",
            target="edge-b",
            phase=phase,
            from_generation=record.generation,
            to_generation=record.generation + 1,
            started_at=1.0,
        )
        migrating_to = "edge-b" if active else ""
        await store.apply(
            Persist(vms=(replace(record, migrating_to=migrating_to),), migrations=(mig,))
        )
    finally:
        await store.close()


async def test_a_controller_restarted_during_migrations_settles_them_where_the_vms_are(
    cluster: Cluster, images: Path, tmp_path: Path
) -> None:
    """The controller died while two VMs were migrating to edge-b: one had landed there, the
    other never left edge-a. After the restart each migration record says how it ended and
    each VM record follows its VM; nothing is re-created at a source or deleted at a target."""
    a = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=BERLIN)
    b = await cluster.start_agent("edge-b", cluster.test_uri("edge-b"), images, location=BERLIN)
    stayed = await _deploy(cluster, "stayed", pin=True)
    landed = await _deploy(cluster, "landed", pin=True)
    await cluster.stop_controller()
    for vm in (stayed, landed):
        await _mark_migrating(cluster, vm)
    # "landed" moved: defined and running on edge-b (with the generation the move gives it),
    # gone from edge-a
    vm_dir = tmp_path / "landed"
    media = ImageCatalog(images).prepare("tiny", vm_dir)
    spec = VMSpec("landed", "tiny", 1, 128)
    await asyncio.to_thread(
        b.hypervisor.create, landed.id, spec, landed.generation + 1, media, str(vm_dir / "c.log")
    )
    await asyncio.to_thread(a.hypervisor.delete, landed.id)
    await cluster.start_controller()

    async def phases() -> dict[str, int]:
        found = {}
        for name in ("landed", "stayed"):
            mig = await cluster.api.GetMigrationStatus(epb.GetMigrationRequest(vm=name))
            found[name] = mig.phase
        return found

    async def settled() -> bool:
        got = {vm.spec.name: vm for vm in (await cluster.api.ListVMs(epb.ListVMsRequest())).vms}
        b_node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-b"))
        return (
            got["landed"].node_id == "edge-b"
            and got["landed"].state == pb.VM_STATE_RUNNING
            and got["stayed"].node_id == "edge-a"
            and got["stayed"].state == pb.VM_STATE_RUNNING
            and b_node.allocated.memory_mib == 128  # "stayed" no longer holds room there
            # the landed move's clean-up at the source ends after its VM record follows it
            and (await phases())["landed"] != epb.MIGRATION_PHASE_CLEANUP
        )

    await eventually(settled, 20, "both migrations to be settled")
    assert a.hypervisor.get_vm(landed.id) is None and b.hypervisor.get_vm(landed.id) is not None
    assert a.hypervisor.get_vm(stayed.id) is not None and b.hypervisor.get_vm(stayed.id) is None
    for node_id in ("edge-a", "edge-b"):
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id=node_id))
        assert node.allocated.memory_mib == 128, node_id
    got = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="landed"))
    assert got.generation == landed.generation + 1
    assert await phases() == {
        "landed": epb.MIGRATION_PHASE_SUCCEEDED,
        "stayed": epb.MIGRATION_PHASE_FAILED,
    }


async def test_a_vm_landing_after_its_migration_was_given_up_is_followed(
    cluster: Cluster, images: Path, tmp_path: Path
) -> None:
    """A migration was settled as failed (the VM was still on its source), and the guest then
    resumes on the target with the generation only that migration gives it: the record
    follows it there, and the source's copy is not the VM any more."""
    a = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=BERLIN)
    b = await cluster.start_agent("edge-b", cluster.test_uri("edge-b"), images, location=BERLIN)
    late = await _deploy(cluster, "late", pin=True)
    await cluster.stop_controller()
    await _mark_migrating(cluster, late, MigrationPhase.FAILED)
    vm_dir = tmp_path / "late"
    media = ImageCatalog(images).prepare("tiny", vm_dir)
    spec = VMSpec("late", "tiny", 1, 128)
    await asyncio.to_thread(a.hypervisor.delete, late.id)
    await asyncio.to_thread(
        b.hypervisor.create, late.id, spec, late.generation + 1, media, str(vm_dir / "c.log")
    )
    await cluster.start_controller()

    async def followed() -> bool:
        vm = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="late"))
        return vm.node_id == "edge-b" and vm.state == pb.VM_STATE_RUNNING

    await eventually(followed, 10, "the record to follow the VM to edge-b")
    controller = cluster.server.controller if cluster.server else None
    assert controller is not None
    assert controller.view.vms[late.id].migrating_to == ""
    assert_kept_table_matches_records(cluster)
    store = SQLiteStore(cluster.tmp / "controller" / "controller.db", create=False)
    try:
        stored = await store.load()
    finally:
        await store.close()
    assert [(vm.node_id, vm.generation) for vm in stored.vms] == [("edge-b", late.generation + 1)]
    assert b.hypervisor.get_vm(late.id) is not None
