"""The web dashboard against the lab, in headless Chromium (issue 12, item 6): the page,
signed in with a viewer service token over the controller's HTTPS, shows the lab's sites and
a deployed VM, and redraws itself (no reload) when a live migration moves the VM to the
other site. Keeps the screenshot if NOVACRON_DASHBOARD_SCREENSHOT names a file."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from lab.lab import Lab
from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import admin_pb2_grpc, edge_api_pb2_grpc
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb
from tests import chromium
from tests.conftest import require_backend, wait_for

pytestmark = pytest.mark.lab


def _mesh_converged(lab: Lab) -> bool:
    sites = {s.id for s in lab.topology.sites}
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        for site in sites:
            node = stub.GetNode(api.GetNodeRequest(node_id=site), timeout=5)
            peers = {p.node_id: p.up for p in node.mesh.peers}
            if node.mesh.applied_version != node.mesh_version or node.mesh.error:
                return False
            if set(peers) != sites - {site} or not all(peers.values()):
                return False
    return True


def _exists(selector: str) -> str:
    """JS: does an element match `selector`?"""
    return f"!!document.querySelector({json.dumps(selector)})"


def _row(vm: str, node: str) -> str:
    """JS: is `vm` listed under `node` in the sites panel?"""
    return _exists(f'.site[data-node="{node}"] tr[data-vm="{vm}"]')


def test_the_page_shows_the_sites_and_follows_a_live_migration(lab: Lab, tmp_path: Path) -> None:
    require_backend(chromium.available(), f"{chromium.CHROMIUM} is missing (Debian: chromium)")
    name = f"dash-{uuid.uuid4().hex[:6]}"
    serving = (lab.state_dir / "controller" / "pki" / "controller.crt").read_bytes()
    with lab.channel() as channel:
        admin = admin_pb2_grpc.AdminAPIStub(channel)
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        token = admin.CreateServiceToken(
            adpb.CreateServiceTokenRequest(name="wallboard", role="viewer", ttl_seconds=3600),
            timeout=10,
        ).secret_token
        stub.CordonNode(api.CordonNodeRequest(node_id="iot-munich", cordoned=True), timeout=10)
        try:  # it lands in Berlin, so the move has a known direction
            spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
            vm = stub.DeployVM(api.DeployVMRequest(spec=spec, timeout_seconds=90), timeout=120)
        finally:
            stub.CordonNode(api.CordonNodeRequest(node_id="iot-munich", cordoned=False), timeout=10)
        try:
            assert vm.node_id == "mec-berlin"
            wait_for(lambda: _mesh_converged(lab), 60, "the mesh, which the migration crosses")
            with chromium.browser(spki=chromium.spki_hash(serving)) as b:
                b.open(f"{lab.dashboard_url}?token={token}")
                b.wait_for(_row(name, "mec-berlin"), 30, f"{name} listed under mec-berlin")
                assert b.evaluate("location.search") == ""  # the token left the address bar
                for site in lab.topology.sites:
                    assert b.evaluate(_exists(f'#map [data-node="{site.id}"]'))
                    assert site.id in chromium.text_of(b, "#map")
                assert "MEC · 16 vCPU/32 GiB" in chromium.text_of(b, "#map")  # type, capacity
                latency = chromium.text_of(b, f'tr[data-vm="{name}"] td:nth-child(3)')
                assert latency.endswith("/ 100.0 ms"), latency  # measured / bound
                b.wait_for(  # the deploy is in the event stream
                    f"document.querySelector('#events').textContent.includes({json.dumps(name)})",
                    30,
                    "the deploy in the event stream",
                )
                shot = tmp_path / "dashboard.png"
                b.screenshot(shot)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                before = int(b.evaluate("Number(document.body.dataset.updates)"))
                moved: list[api.MigrateVMResponse] = []
                mover = threading.Thread(
                    target=lambda: moved.append(
                        stub.MigrateVM(
                            api.MigrateVMRequest(
                                name_or_id=name, target_node_id="iot-munich", timeout_seconds=240
                            ),
                            timeout=300,
                        )
                    ),
                    daemon=True,
                )
                mover.start()
                move_row = f'#moves tr[data-vm="{name}"]'
                moving = tmp_path / "moving.png"
                phase = f"document.querySelector({json.dumps(move_row)})?.dataset.phase ?? ''"
                seen: list[str] = []  # the phases the page showed while the VM moved
                try:

                    def arrived() -> bool:
                        shown = str(b.evaluate(phase))
                        if shown and shown not in seen:
                            seen.append(shown)
                            if shown not in ("succeeded", "failed") and not moving.exists():
                                b.screenshot(moving)  # the page with a move in progress
                        return bool(b.evaluate(_row(name, "iot-munich")))

                    wait_for(arrived, 300, f"{name} redrawn under iot-munich", interval_s=0.1)
                finally:
                    mover.join(300)
                print(f"phases shown during the move: {seen}")
                keep = os.environ.get("NOVACRON_DASHBOARD_SCREENSHOT")
                if keep:  # the move in progress if the page caught it, else the deployed VM
                    shutil.copyfile(moving if moving.exists() else shot, keep)
                assert moved and moved[0].vm.node_id == "iot-munich"
                assert not b.evaluate(_row(name, "mec-berlin"))
                assert int(b.evaluate("Number(document.body.dataset.updates)")) > before
                b.wait_for(f"{phase} === 'succeeded'", 30, "the migration's end in the table")
                assert "mec-berlin → iot-munich" in chromium.text_of(b, move_row)
        finally:
            stub.DeleteVM(api.DeleteVMRequest(name_or_id=name), timeout=60)
