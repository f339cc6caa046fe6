"""A 30 % loss link for minutes, with default settings: is the node ever declared lost, is a
VM ever failed over, does it ever pause itself? (Goal: never; Nomad flaps on such links.)

The lossy lab: an IoT gateway whose uplink drops 30 % of packets each way (the WAN router's
loss, `lab/topologies/lossy.yaml`), at a real site's 5 s heartbeat and the default failover
policy (`stop_after` 30 s). A tiny guest runs on it throughout. Every second the controller's
view of the node is sampled; `virsh event` on the gateway's own libvirtd records every
lifecycle event of the guest (a self-fence is a "Suspended" one); at the end the VM's failover
records and its state there are read. Baseline, in the same run: the clean MEC site.

    .venv/bin/python -m bench.lossy_soak [--minutes 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import libvirt

from agent.hypervisor import domain_xml
from lab.lab import Lab
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

LOSSY, CLEAN = "iot-rural", "mec-berlin"
HEARTBEAT_S = 5.0  # a real site's default


def soak(lab: Lab, seconds: float) -> dict[str, object]:
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        spec = pb.VMSpec(name="soak", image="tiny", vcpus=1, memory_mib=128)
        spec.placement.required_labels["site"] = LOSSY
        stub.DeployVM(api.DeployVMRequest(spec=spec, request_id="soak"), timeout=300)
        events = lab.state_dir / "soak-events.txt"
        witness = _lifecycle_witness(lab.libvirt_uri(LOSSY), domain_xml.domain_name("soak"),
                                     seconds, events)  # fmt: skip
        seen: dict[str, Counter[str]] = {LOSSY: Counter(), CLEAN: Counter()}
        worst: dict[str, str] = {}
        vm_states: Counter[str] = Counter()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            shown = stub.GetVM(api.GetVMRequest(name_or_id="soak"), timeout=30)
            vm_states[pb.VMState.Name(shown.state).removeprefix("VM_STATE_").lower()] += 1
            for node_id in (LOSSY, CLEAN):
                node = stub.GetNode(api.GetNodeRequest(node_id=node_id), timeout=30)
                condition = pb.NodeCondition.Name(node.condition).removeprefix("NODE_CONDITION_")
                seen[node_id][condition.lower()] += 1
                if node.condition != pb.NODE_CONDITION_READY and node_id not in worst:
                    worst[node_id] = node.condition_reason
            time.sleep(1.0)  # the sampling rate of this measurement
        try:
            witness.wait(timeout=30)  # it ends by itself at `seconds`
        except subprocess.TimeoutExpired:
            witness.kill()
            witness.wait()
        output = events.read_text()
        if "events received:" not in output:  # it ends so (exit 1 on its timeout), or failed
            raise RuntimeError(f"virsh event did not watch to the end: {output[-2000:]}")
        lifecycle = [line for line in output.splitlines() if "lifecycle" in line]
        vm = stub.GetVM(api.GetVMRequest(name_or_id="soak"), timeout=30)
        conn = libvirt.open(lab.libvirt_uri(LOSSY))
        try:
            dom = conn.lookupByName(domain_xml.domain_name("soak"))
            state = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}
            on_site = state.get(dom.state()[0], "other")
        finally:
            conn.close()
        stub.DeleteVM(api.DeleteVMRequest(name_or_id="soak"), timeout=120)
    return {
        "samples": dict(seen),
        "vm_states": dict(vm_states),
        "first_not_ready": worst,
        "failovers": len(vm.failovers),
        "vm_node": vm.node_id,
        "on_its_site": on_site,
        "suspended_events": sum("Suspended" in line for line in lifecycle),
        "lifecycle_events": lifecycle,
    }


def _lifecycle_witness(uri: str, domain: str, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """`virsh event` on the site's own libvirtd: every lifecycle event of the guest, by a
    witness that is neither the agent nor the controller. It exits by itself after
    `seconds` (so its output is flushed), or is killed by its pid."""
    argv = ["virsh", "-c", uri, "event", "--domain", domain, "--event", "lifecycle",
            "--loop", "--timestamp", "--timeout", str(max(1, int(seconds)))]  # fmt: skip
    with out.open("wb") as sink:
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0)
    args = p.parse_args()
    lab = Lab(
        "lossy", progress=lambda text: print(f"  {text}", flush=True), heartbeat_s=HEARTBEAT_S
    )
    lab.preflight()
    try:
        lab.up(timeout_s=180)
        result = soak(lab, args.minutes * 60)
    finally:
        keep = Path("/tmp/bench-lossy-soak-logs")  # the daemons' logs, read after the lab
        shutil.copytree(lab.state_dir / "logs", keep, dirs_exist_ok=True)
        print(f"the daemons' logs are in {keep}")
        lab.down()
    samples = result["samples"]
    assert isinstance(samples, dict)
    lossy, clean = samples[LOSSY], samples[CLEAN]
    print(f"{args.minutes:g} min, 30 % loss each way, {HEARTBEAT_S:g} s heartbeat, defaults:")
    print(f"  lossy site: {dict(lossy)}; clean site (baseline): {dict(clean)}")
    print(f"  the VM as the controller saw it: {result['vm_states']}")
    print(f"  first not-ready reason: {result['first_not_ready'] or 'none'}")
    print(
        f"  failovers: {result['failovers']}; the VM on {result['vm_node']}, "
        f"{result['on_its_site']} on its own libvirtd"
    )
    print(f"  its libvirtd's lifecycle events: {result['lifecycle_events'] or 'none'}")
    false_alarm = lossy.get("lost", 0) or result["failovers"] or result["suspended_events"]
    return 1 if false_alarm else 0


if __name__ == "__main__":
    sys.exit(main())
