"""Failover and drain on the lab, judged by each site's own libvirtd: a failed site's VMs run
elsewhere, each exactly once, constraints kept; a partitioned site's VMs pause themselves; the
returning site's stale copies are destroyed; a drained site's VMs move off live."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import libvirt
import pytest

from agent.hypervisor import domain_xml
from lab.lab import Lab
from lab.processes import BIN
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for

pytestmark = pytest.mark.lab

SITE, OTHER = "mec-berlin", "iot-munich"
STOP_AFTER_S = 3.0  # the least the lab's 1 s heartbeat allows (min_stop_after)


@contextmanager
def edge_api(lab: Lab) -> Iterator[edge_api_pb2_grpc.EdgeAPIStub]:
    with lab.channel() as channel:
        yield edge_api_pb2_grpc.EdgeAPIStub(channel)


def copies(lab: Lab, site_id: str, name: str) -> list[tuple[str, int]]:
    """(state, generation) of every domain of VM `name` on the site, from its own libvirtd."""
    conn = libvirt.open(lab.libvirt_uri(site_id))
    try:
        found = []
        for dom in conn.listAllDomains(0):
            if dom.name() != domain_xml.domain_name(name):
                continue
            try:
                meta = domain_xml.parse_metadata(dom.XMLDesc(0))
                code = dom.state()[0]
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # destroyed between the listing and the look (a stale copy)
                raise
            state = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}
            found.append((state.get(code, "other"), meta.generation if meta else 0))
        return found
    finally:
        conn.close()


def deploy(
    stub: edge_api_pb2_grpc.EdgeAPIStub, name: str, *, pinned: bool = False, waits: bool = False
) -> pb.VM:
    spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    if waits:  # replace_after never: it waits for its node (and so never stops on its own)
        spec.disconnect.replace_after_s = float("inf")
    else:
        spec.disconnect.stop_after_s = STOP_AFTER_S
    spec.placement.countries.append("DE")  # residency: both sites qualify
    if pinned:
        spec.placement.required_labels["tier"] = "edge"  # only the failing site has it
    return stub.DeployVM(api.DeployVMRequest(spec=spec, request_id=name), timeout=120)


def deploy_on_site(lab: Lab, names: dict[str, bool], *, waits: bool = False) -> None:
    """Deploy onto SITE (OTHER cordoned meanwhile, so placement has one choice)."""
    with edge_api(lab) as stub:
        stub.CordonNode(api.CordonNodeRequest(node_id=OTHER, cordoned=True), timeout=10)
        try:
            for name, pinned in names.items():
                vm = deploy(stub, name, pinned=pinned, waits=waits)
                assert vm.node_id == SITE and vm.state == pb.VM_STATE_RUNNING
        finally:
            stub.CordonNode(api.CordonNodeRequest(node_id=OTHER, cordoned=False), timeout=10)


def vm(lab: Lab, name: str) -> pb.VM:
    with edge_api(lab) as stub:
        return stub.GetVM(api.GetVMRequest(name_or_id=name), timeout=10)


def delete(lab: Lab, *names: str) -> None:
    with edge_api(lab) as stub:
        for name in names:
            try:
                stub.DeleteVM(api.DeleteVMRequest(name_or_id=name), timeout=60)
            except grpc.RpcError as err:  # report, keep cleaning
                print(f"cleanup of {name}: {err}")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_failed_sites_vms_run_elsewhere_once_and_its_stale_copies_go(lab: Lab) -> None:
    movable, pinned = _unique("fo"), _unique("fopin")
    deploy_on_site(lab, {movable: False, pinned: True})
    assert copies(lab, SITE, movable) == [("running", 1)]
    failed_at = time.monotonic()
    try:
        lab.fail(SITE)
        wait_for(
            lambda: copies(lab, OTHER, movable) == [("running", 2)],
            60,
            f"{movable} running on {OTHER} at generation 2",
            interval_s=0.2,
        )
        took = time.monotonic() - failed_at
        moved = vm(lab, movable)
        assert (moved.node_id, moved.generation) == (OTHER, 2)
        (record,) = moved.failovers
        assert (record.source_node_id, record.target_node_id) == (SITE, OTHER)
        print(f"\n{movable}: running on {OTHER} {took:.1f}s after the power cut; {record}")
        stuck = vm(lab, pinned)  # residency kept: nowhere else has tier=edge
        assert stuck.node_id == SITE and stuck.failover_waiting.startswith("cannot be placed")
        assert not copies(lab, OTHER, pinned)
    finally:
        lab.restore(SITE)
    try:
        # back: the stale copy is destroyed; the pinned VM (still its) runs there again
        wait_for(lambda: not copies(lab, SITE, movable), 60, f"stale {movable} gone", 0.2)
        wait_for(
            lambda: copies(lab, SITE, pinned) == [("running", 1)], 60, f"{pinned} restarted", 0.2
        )
        assert copies(lab, OTHER, movable) == [("running", 2)]
    finally:
        delete(lab, movable, pinned)


def test_a_partitioned_sites_vms_pause_themselves_and_one_copy_survives(lab: Lab) -> None:
    name = _unique("fopart")
    deploy_on_site(lab, {name: False})
    try:
        lab.partition(SITE)
        try:  # the agent, alone, pauses its copy; the controller replaces it elsewhere
            wait_for(
                lambda: copies(lab, SITE, name) == [("paused", 1)],
                30,
                f"{name} paused by its agent",
                interval_s=0.2,
            )
            wait_for(
                lambda: copies(lab, OTHER, name) == [("running", 2)],
                60,
                f"{name} replaced on {OTHER}",
                interval_s=0.2,
            )
        finally:
            lab.restore(SITE)
        wait_for(lambda: not copies(lab, SITE, name), 60, f"the paused {name} destroyed", 0.2)
        assert copies(lab, OTHER, name) == [("running", 2)]
        assert vm(lab, name).node_id == OTHER
    finally:
        delete(lab, name)


def test_a_reboot_while_offline_runs_the_vm_again_before_the_link_returns(lab: Lab) -> None:
    """Partition, then a power cut (guests, libvirtd, agent killed), then power back with the
    uplink still down: the agent starts the VM from its cache on its own; when the link
    returns, the controller finds exactly that copy, at the generation it placed."""
    name = _unique("off")
    deploy_on_site(lab, {name: False}, waits=True)
    try:
        lab.partition(SITE)
        lab.fail(SITE)
        lab.restore(SITE, link=False)  # the reboot, offline
        wait_for(
            lambda: copies(lab, SITE, name) == [("running", 1)],
            90,
            f"{name} running again from the agent's cache, the link still down",
            interval_s=0.5,
        )
        assert lab.condition(SITE) == "partitioned"
    finally:
        lab.restore(SITE)
    wait_for(lambda: vm(lab, name).state == pb.VM_STATE_RUNNING, 60, f"{name} seen running", 0.2)
    shown = vm(lab, name)
    assert (shown.node_id, shown.generation) == (SITE, 1) and not shown.failovers
    assert copies(lab, SITE, name) == [("running", 1)] and not copies(lab, OTHER, name)
    delete(lab, name)


def test_a_drain_moves_vms_off_live_and_lists_what_cannot_move(lab: Lab) -> None:
    """One VM moves (live, over Munich's 20 Mbit/s link); one pinned to Berlin by a label
    cannot, and is listed with placement's reason. Munich (2 vCPUs) has room for one."""
    movable, pinned = _unique("dr"), _unique("drpin")
    deploy_on_site(lab, {movable: False, pinned: True})
    try:
        drained = subprocess.run(
            [str(BIN / "novacron"), "--controller", lab.controller_address,
             "node", "drain", SITE, "--parallel", "2"],
            capture_output=True, text=True, timeout=300, env=lab.cli_env(),
        )  # fmt: skip
        out = drained.stdout + drained.stderr
        assert drained.returncode == 1, out  # one did not move
        assert f"{movable}: moved to {OTHER}" in out and "1 moved, 1 did not" in out
        assert f"{pinned}: not moved: no other node can take VM" in out, out
        assert copies(lab, OTHER, movable) == [("running", 2)]  # the same guest, moved live
        assert not copies(lab, SITE, movable)
        assert copies(lab, SITE, pinned) == [("running", 1)]  # left where it was, running
        with edge_api(lab) as stub:
            node = stub.GetNode(api.GetNodeRequest(node_id=SITE), timeout=10)
            assert node.cordoned and list(node.drain.moved) == [movable]
    finally:
        with edge_api(lab) as stub:
            stub.CordonNode(api.CordonNodeRequest(node_id=SITE, cordoned=False), timeout=10)
        delete(lab, movable, pinned)
