"""Agent footprint: RSS and CPU of an idle, connected agent at a 1 s heartbeat, and what each
import adds. Baseline: a bare Python interpreter measured in the same run.

    .venv/bin/python -m bench.agent_footprint [--seconds 30] [--qemu]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lab.libvirtd import PrivateLibvirtd
from lab.processes import free_port, node_ready, start_agent, start_controller, wait_until

MIB = 1024 * 1024
RSS_GOAL_MB = 60.0
IMPORTS = [
    "psutil",
    "yaml",
    "structlog",
    "google.protobuf",
    "grpc",
    "libvirt",
    "shared.pb.v1.agent_pb2_grpc",
    "agent.session",
    "agent.main",
]
TEST_NODE = (
    "<node><cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><max>4</max></cpu>"
    "<memory>4194304</memory></node>"
)


def rss_after_import(module: str) -> float:
    code = (
        f"import {module}\n" if module else ""
    ) + "import re\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def measure_imports() -> float:
    bare = rss_after_import("")
    print(f"bare interpreter (baseline)      {bare:6.1f} MB RSS")
    for module in IMPORTS:
        rss = rss_after_import(module)
        print(
            f"  import {module:<26} {rss:6.1f} MB  (+{rss - bare:5.1f} MB, {rss / bare:4.2f}x bare)"
        )
    return bare


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=30.0, help="idle window measured")
    p.add_argument(
        "--qemu",
        action="store_true",
        help="connect the agent to a private QEMU libvirtd (root) instead of the test driver",
    )
    args = p.parse_args()

    bare = measure_imports()
    work = Path(tempfile.mkdtemp(prefix="nc-bf-", dir="/tmp"))
    images = work / "images"
    images.mkdir()
    libvirtd = PrivateLibvirtd(work / "lvd") if args.qemu else None
    if libvirtd is not None:
        libvirtd.start()
        uri = libvirtd.uri
    else:
        (work / "node.xml").write_text(TEST_NODE)
        uri = f"test://{work / 'node.xml'}"
    address = f"127.0.0.1:{free_port()}"
    controller = start_controller(work, address, heartbeat="1s", log_level="warning")
    agent = start_agent(work, address, "bench-node", uri, images, log_level="warning")
    try:
        wait_until(lambda: node_ready(address), 60, "the agent to register", [controller, agent])
        proc = psutil.Process(agent.process.pid)
        time.sleep(5)  # settle after connect (first heartbeats, lazy imports)
        t0, cpu0 = time.monotonic(), proc.cpu_times()
        rss_samples = []
        end = t0 + args.seconds
        while time.monotonic() < end:
            rss_samples.append(proc.memory_info().rss / MIB)
            time.sleep(1)
        t1, cpu1 = time.monotonic(), proc.cpu_times()
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
        uss = proc.memory_full_info().uss / MIB
        rss = max(rss_samples)
        print(
            f"\nidle connected agent, 1 s heartbeat, {args.seconds:g} s window "
            f"({uri.split(':')[0]})"
        )
        print(
            f"  RSS max {rss:6.1f} MB  ({rss / bare:4.2f}x bare interpreter; "
            f"goal <= {RSS_GOAL_MB:g} MB)"
        )
        print(f"  USS     {uss:6.1f} MB")
        print(f"  CPU     {cpu:6.2f} % of one core")
        print("  reference, not measured here: KubeEdge edgecore ~70 MB, K3s agent ~275 MB")
    finally:
        agent.stop()
        controller.stop()
        if libvirtd is not None:
            libvirtd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
