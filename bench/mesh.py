"""Mesh convergence on the default lab (7 sites): how long until a site with a NEW WireGuard
identity is reachable again from every other site, and what one peer update costs.

The join is a key rotation: the site gets a new key pair, exactly as a new node would, and every
peer must learn it from the controller before traffic flows again. Baseline, measured in the
same run: one ping between the same sites over the same emulated WAN (the physical floor).

    .venv/bin/python -m bench.mesh [--rounds 5] [--site cdn-amsterdam]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import percentile
from lab.lab import Lab
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc

GOAL_S = 2.0


def overlay(stub: edge_api_pb2_grpc.EdgeAPIStub, node_id: str) -> str:
    return stub.GetNode(api.GetNodeRequest(node_id=node_id), timeout=5).mesh_address


def ping_once(lab: Lab, src: str, dst_ip: str, wait_s: float = 1.0) -> bool:
    argv = lab.exec_argv(src, ["ping", "-c", "1", "-W", f"{wait_s:g}", dst_ip])
    return subprocess.run(argv, capture_output=True).returncode == 0


def reachable_from_all(
    lab: Lab, sites: list[str], target_ip: str, deadline: float
) -> tuple[float, str]:
    """Seconds until every site got an echo reply from `target_ip` (inf after the deadline),
    and the site that was last."""
    started = time.monotonic()
    pending = set(sites)
    last = ""
    while pending and time.monotonic() < deadline:
        last = sorted(pending)[0] if len(pending) == 1 else last
        pending = {s for s in pending if not ping_once(lab, s, target_ip, wait_s=0.2)}
    return (time.monotonic() - started if not pending else float("inf")), last


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--site", default="cdn-amsterdam")
    args = p.parse_args()
    lab = Lab("default", progress=lambda text: print(f"  {text}", flush=True))
    lab.preflight()
    try:
        lab.up()
        channel = lab.channel()
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        others = [s.id for s in lab.topology.sites if s.id != args.site]
        target = overlay(stub, args.site)
        # the mesh must be up before we time anything
        if reachable_from_all(lab, others, target, time.monotonic() + 60)[0] == float("inf"):
            raise RuntimeError("the mesh did not converge within 60 s")
        floor = []
        for site in others:
            started = time.monotonic()
            ping_once(lab, site, target)
            floor.append(time.monotonic() - started)
        times = []
        for _ in range(args.rounds):
            started = time.monotonic()
            stub.RotateMeshKey(api.GetNodeRequest(node_id=args.site), timeout=30)
            pushed = time.monotonic() - started
            waited, last = reachable_from_all(lab, others, target, time.monotonic() + 30)
            took = pushed + waited
            times.append(took)
            print(f"  new key on {args.site}: reachable from all {len(others)} sites in "
                  f"{took:.2f} s (controller call {pushed:.2f} s, last: {last or '-'})",
                  flush=True)  # fmt: skip
        channel.close()
    finally:
        lab.down()
    base = percentile(floor, 50)
    print(
        f"\none ping across the WAN (baseline, p50 over {len(floor)} sites): {base * 1000:.1f} ms"
    )
    print(f"new identity reachable from all: p50 {percentile(times, 50):.2f} s, "
          f"max {max(times):.2f} s ({percentile(times, 50) / base:.0f}x one ping)")  # fmt: skip
    verdict = "MET" if max(times) <= GOAL_S else "MISSED"
    print(f"{verdict} goal: reachable from all others <= {GOAL_S:g} s after joining")
    return 0


if __name__ == "__main__":
    sys.exit(main())
