"""What mutual TLS costs (issue 11): DeployVM p50/p95 and the stream's round trip (the
agent's ping/pong over its session, what heartbeats and commands ride on), with TLS and
with --insecure, in the same run against the same libvirtd and real QEMU guests.

Two controller + agent pairs run side by side, one enrolled with a join token (mTLS, TLS 1.3)
and one --insecure; deploys alternate between them, so drift in the machine's load hits both
alike. The ratio is TLS / insecure; the goal is at most 1.10 on DeployVM p95.

    .venv/bin/python -m bench.tls [--count 30]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

from agent.images.builder import build_tiny_image
from bench.common import percentile, summary
from lab import trust
from lab.libvirtd import PrivateLibvirtd
from lab.processes import Daemon, free_port, node_ready, start_agent, start_controller, wait_until
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

GOAL_RATIO = 1.10


def deploy_once(api: edge_api_pb2_grpc.EdgeAPIStub, name: str) -> float:
    spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    started = time.perf_counter()
    vm = api.DeployVM(epb.DeployVMRequest(spec=spec, request_id=name), timeout=120)
    took = time.perf_counter() - started
    if vm.state != pb.VM_STATE_RUNNING:
        raise RuntimeError(f"VM {name} is {vm.state}, not running")
    api.DeleteVM(epb.DeleteVMRequest(name_or_id=vm.id), timeout=60)
    return took


def stream_rtt(api: edge_api_pb2_grpc.EdgeAPIStub, node_id: str) -> tuple[float, float, int]:
    node = api.GetNode(epb.GetNodeRequest(node_id=node_id), timeout=10)
    s = next(s for s in node.latencies if s.target == "controller")
    return s.p50_ms, s.p95_ms, s.samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=30, help="deploys per mode (default 30)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nc-btls-", dir="/tmp"))
    images = work / "images"
    build_tiny_image(images, "tiny")
    libvirtd = PrivateLibvirtd(work / "lvd")
    daemons: list[Daemon] = []
    try:
        libvirtd.start()
        plain_dir, tls_dir = work / "plain", work / "tls"
        plain, secure = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        enrol = f"127.0.0.1:{free_port()}"
        # two controllers: one metrics (and dashboard) port each would clash
        off = ("--metrics-listen", "", "--dashboard-listen", "")
        daemons.append(start_controller(plain_dir, plain, *off, log_level="warning"))
        pin = trust.init_controller(tls_dir, ["127.0.0.1"])
        daemons.append(
            start_controller(
                tls_dir, secure, "--enrol-listen", enrol, *off, log_level="warning", insecure=False
            )
        )
        client = trust.admin_dir(tls_dir)
        token = trust.join_token(secure, client, "bench-tls")
        daemons.append(
            start_agent(plain_dir, plain, "bench-plain", libvirtd.uri, images, log_level="warning")
        )
        daemons.append(
            start_agent(
                tls_dir,
                secure,
                "bench-tls",
                libvirtd.uri,
                images,
                "--join-token",
                token,
                "--ca-pin",
                pin,
                "--enrol-address",
                enrol,
                log_level="warning",
                insecure=False,
            )
        )
        wait_until(lambda: node_ready(plain), 60, "the insecure agent", daemons)
        env = trust.cli_env(client)
        wait_until(lambda: node_ready(secure, env=env), 60, "the enrolled agent", daemons)
        with (
            grpc.insecure_channel(plain) as plain_channel,
            trust.channel(secure, client) as tls_channel,
        ):
            apis = {
                "insecure": edge_api_pb2_grpc.EdgeAPIStub(plain_channel),
                "tls": edge_api_pb2_grpc.EdgeAPIStub(tls_channel),
            }
            for mode, api in apis.items():  # warm-up: page cache, QEMU binary, channels
                deploy_once(api, f"warm-{mode}")
            times: dict[str, list[float]] = {"insecure": [], "tls": []}
            for i in range(args.count):
                for mode, api in apis.items() if i % 2 else reversed(apis.items()):
                    times[mode].append(deploy_once(api, f"b-{mode}-{i}"))
            rtt = {
                "insecure": stream_rtt(apis["insecure"], "bench-plain"),
                "tls": stream_rtt(apis["tls"], "bench-tls"),
            }
    finally:
        for d in reversed(daemons):
            d.stop()
        libvirtd.stop()
        shutil.rmtree(work, ignore_errors=True)

    for mode in ("insecure", "tls"):
        print(f"DeployVM, {mode:8s}: {summary(times[mode])}")
    for q in (50, 95):
        ratio = percentile(times["tls"], q) / percentile(times["insecure"], q)
        print(f"  p{q} ratio DeployVM TLS / insecure: {ratio:4.2f}x")
    for mode in ("insecure", "tls"):
        p50, p95, n = rtt[mode]
        print(f"stream ping/pong, {mode:8s}: p50 {p50:.2f} ms  p95 {p95:.2f} ms  (n={n})")
    print(
        f"  p50 ratio stream round trip TLS / insecure: {rtt['tls'][0] / rtt['insecure'][0]:4.2f}x"
    )
    p95_ratio = percentile(times["tls"], 95) / percentile(times["insecure"], 95)
    verdict = "meets" if p95_ratio <= GOAL_RATIO else "misses"
    print(f"  DeployVM p95 ratio {p95_ratio:.2f} {verdict} the goal of <= {GOAL_RATIO:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
