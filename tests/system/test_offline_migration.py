"""Cold and snapshot migration on the lab, through the CLI, judged by each site's own libvirtd
and by the guest's console: a snapshot-migrated guest goes on counting its uptime on the target
without booting again; a cold-drained one boots there; a transfer the target's libvirtd refuses
leaves the guest running on its source, where it was."""

from __future__ import annotations

import re
import subprocess

import pytest

from agent.images.builder import FIRST_LINE, HEARTBEAT_S
from lab.lab import Lab
from lab.processes import BIN
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for
from tests.system.test_failover import (
    OTHER,
    SITE,
    _unique,
    copies,
    delete,
    deploy_on_site,
    edge_api,
    vm,
)

pytestmark = pytest.mark.lab

UPTIME = re.compile(r"heartbeat: up (\d+)s")
CONSOLE_WAIT_S = 3 * HEARTBEAT_S + 30


def console(lab: Lab, name: str) -> str:
    with edge_api(lab) as stub:
        return stub.GetVMConsole(api.GetVMConsoleRequest(name_or_id=name), timeout=30).text


def uptime(lab: Lab, name: str, above: int = 0) -> int:
    """The guest's latest uptime once it is above `above`, from its console where it runs."""

    def seen() -> bool:
        return any(int(u) > above for u in UPTIME.findall(console(lab, name)))

    wait_for(seen, CONSOLE_WAIT_S, f"{name} counting its uptime past {above}s", interval_s=1)
    return max(int(u) for u in UPTIME.findall(console(lab, name)))


def novacron(lab: Lab, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "novacron"), "--controller", lab.controller_address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=lab.cli_env(),
    )


def test_a_snapshot_migration_continues_the_guest_on_the_target(lab: Lab) -> None:
    name = _unique("snap")
    deploy_on_site(lab, {name: False})
    try:
        before = uptime(lab, name)
        moved = novacron(lab, "vm", "migrate", name, "--to", OTHER, "--mode", "snapshot")
        out = moved.stdout + moved.stderr
        print(out)
        assert moved.returncode == 0, out
        assert f"{name} migrated {SITE} -> {OTHER}" in out and "snapshot" in out
        assert copies(lab, OTHER, name) == [("running", 2)]
        assert not copies(lab, SITE, name)  # the source's stopped copy is gone
        after = uptime(lab, name, before)
        text = console(lab, name)
        assert FIRST_LINE.format(name=name, kernel="") not in text  # never booted there
        print(f"uptime before {before}s, after {after}s on {OTHER}")
        shown = vm(lab, name)
        assert (shown.node_id, shown.state) == (OTHER, pb.VM_STATE_RUNNING)
        with edge_api(lab) as stub:
            mig = stub.GetMigrationStatus(api.GetMigrationRequest(vm=name), timeout=10)
        assert mig.mode == "snapshot" and mig.phase == api.MIGRATION_PHASE_SUCCEEDED
    finally:
        delete(lab, name)


def test_a_cold_drain_boots_the_guest_on_the_other_site(lab: Lab) -> None:
    name = _unique("cold")
    deploy_on_site(lab, {name: False})
    try:
        uptime(lab, name)
        drained = novacron(lab, "node", "drain", SITE, "--cold")
        out = drained.stdout + drained.stderr
        print(out)
        assert drained.returncode == 0, out
        assert f"{name}: moved to {OTHER}" in out
        assert copies(lab, OTHER, name) == [("running", 2)]
        assert not copies(lab, SITE, name)
        first = FIRST_LINE.format(name=name, kernel="")
        wait_for(lambda: first in console(lab, name), CONSOLE_WAIT_S, f"{name} booting again")
    finally:
        with edge_api(lab) as stub:
            stub.CordonNode(api.CordonNodeRequest(node_id=SITE, cordoned=False), timeout=10)
        delete(lab, name)


def test_a_refused_transfer_leaves_the_guest_running_where_it_was(lab: Lab) -> None:
    """The target's libvirtd port rejects the source (a firewall inside the target's
    namespace): the source has saved the guest by then; it restores it, and the guest goes on
    counting on its source."""
    name = _unique("snapno")
    deploy_on_site(lab, {name: False})
    rule = ["INPUT", "-p", "tcp", "--dport", "16509", "-j", "REJECT"]
    try:
        before = uptime(lab, name)
        subprocess.run(lab.exec_argv(OTHER, ["iptables", "-I", *rule]), check=True)
        try:
            moved = novacron(lab, "vm", "migrate", name, "--to", OTHER, "--mode", "snapshot")
        finally:
            subprocess.run(lab.exec_argv(OTHER, ["iptables", "-D", *rule]), check=True)
        out = moved.stdout + moved.stderr
        print(out)
        assert moved.returncode != 0, out
        assert "the vm runs here again" in out and f"keeps running on '{SITE}'" in out
        assert copies(lab, SITE, name) == [("running", 1)]
        assert not copies(lab, OTHER, name)  # its staging went
        uptime(lab, name, before)  # the same guest, going on
        assert console(lab, name).count(FIRST_LINE.format(name=name, kernel="")) == 1
    finally:
        delete(lab, name)
