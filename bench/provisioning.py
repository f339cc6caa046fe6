"""Provisioning latency: DeployVM call -> domain running on the node (guest boot excluded).

Baseline, measured in the same run against the same libvirtd and image: the libvirt driver
called directly (overlay + define + start), i.e. the floor any control plane pays. The ratio
is what the controller, the agent and the gRPC stream add on top of libvirt itself.

    .venv/bin/python -m bench.provisioning [--count 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.builder import build_tiny_image
from agent.images.catalog import ImageCatalog
from bench.common import percentile, summary
from lab.libvirtd import PrivateLibvirtd
from lab.processes import free_port, node_ready, start_agent, start_controller, wait_until
from shared.domain import VMSpec
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

GOAL_P95_S = 1.0


def direct_libvirt(uri: str, images: Path, work: Path, count: int) -> list[float]:
    catalog = ImageCatalog(images)
    hv = LibvirtHypervisor(uri)
    times = []
    try:
        for i in range(count):
            vm_id = str(uuid.uuid4())
            vm_dir = work / "direct" / vm_id
            spec = VMSpec(name=f"direct-{i}", image="tiny", vcpus=1, memory_mib=128)
            started = time.perf_counter()
            media = catalog.prepare("tiny", vm_dir)
            hv.create(vm_id, spec, 1, media, str(vm_dir / "console.log"))
            times.append(time.perf_counter() - started)
            hv.delete(vm_id)
            catalog.release(vm_dir)
    finally:
        hv.close()
    return times


def through_controller(address: str, first: int, count: int) -> list[float]:
    times = []
    with grpc.insecure_channel(address) as channel:
        api = edge_api_pb2_grpc.EdgeAPIStub(channel)
        for i in range(first, first + count):
            spec = pb.VMSpec(name=f"bench-{i}", image="tiny", vcpus=1, memory_mib=128)
            started = time.perf_counter()
            vm = api.DeployVM(epb.DeployVMRequest(spec=spec, request_id=f"bench-{i}"))
            times.append(time.perf_counter() - started)
            if vm.state != pb.VM_STATE_RUNNING:
                raise RuntimeError(f"VM {vm.spec.name} is {vm.state}, not running")
            api.DeleteVM(epb.DeleteVMRequest(name_or_id=vm.id))
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=20)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nc-bp-", dir="/tmp"))
    images = work / "images"
    build_tiny_image(images, "tiny")
    libvirtd = PrivateLibvirtd(work / "lvd")
    daemons = []
    try:
        libvirtd.start()
        address = f"127.0.0.1:{free_port()}"
        daemons.append(start_controller(work, address, log_level="warning"))
        daemons.append(
            start_agent(work, address, "bench-node", libvirtd.uri, images, log_level="warning")
        )
        wait_until(lambda: node_ready(address), 60, "the agent to register", daemons)
        direct_libvirt(libvirtd.uri, images, work, 2)  # warm-up: page cache, QEMU binary
        through_controller(address, 0, 2)
        # Interleaved, so that drift in the machine's load hits both sides alike.
        baseline: list[float] = []
        ours: list[float] = []
        for i in range(args.count):
            baseline += direct_libvirt(libvirtd.uri, images, work, 1)
            ours += through_controller(address, i + 2, 1)
    finally:
        for d in reversed(daemons):
            d.stop()
        libvirtd.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"libvirt driver directly (baseline): {summary(baseline)}")
    print(f"DeployVM via controller + agent:    {summary(ours)}")
    for q in (50, 95):
        ratio = percentile(ours, q) / percentile(baseline, q)
        print(f"  p{q} ratio DeployVM / direct libvirt: {ratio:4.2f}x")
    p95 = percentile(ours, 95)
    verdict = "meets" if p95 <= GOAL_P95_S else "misses"
    print(f"  p95 {p95:.3f} s {verdict} the goal of <= {GOAL_P95_S:g} s (spec claims 14 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
