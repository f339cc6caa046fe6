"""Edge <-> cloud migration on the default lab, as a user of the VM sees it.

A tiny guest placed near Paris (on MEC Paris) moves to the Frankfurt cloud region and back,
`--rounds` times per mode (live, then snapshot, then cold), while a user site (Berlin) probes
it every 20 ms (ping). For each move: libvirt's own figures (live: job time, downtime: the
guest paused), the whole call, and what the user saw, the longest run of probes without an
answer. Baseline, measured in the same run: libvirt's downtime of the live moves, the floor no
route switch can beat; the ratios say how much the route switch (live) or the stop, copy and
restore or boot (snapshot, cold) add.

    .venv/bin/python -m bench.migration [--rounds 4] [--modes live,snapshot,cold]

Both sites have clean 1 Gbit/s links (see docs/migration.md for the lossy IoT link).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile

from bench.common import percentile
from lab.lab import Lab
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

GOAL_S = 5.0  # the spec: edge-to-cloud migration with < 5 s downtime
PING_INTERVAL_S = 0.02  # root may probe this often; a 0.2 s probe cannot see a 0.15 s gap
EDGE, CLOUD, USER = "mec-paris", "cloud-fra", "mec-berlin"


def longest_gap_s(output: str) -> tuple[float, int, int]:
    """(longest time without an answer, answers, pings sent) from ping's output."""
    seqs = sorted(
        int(line.split("icmp_seq=")[1].split()[0])
        for line in output.splitlines()
        if "bytes from" in line and "icmp_seq=" in line
    )
    sent = int(output.split(" packets transmitted")[0].rsplit(maxsplit=1)[-1])
    if not seqs:
        return float("inf"), 0, sent
    gaps = [b - a for a, b in zip([0, *seqs], [*seqs, sent + 1], strict=True)]
    return (max(gaps) - 1) * PING_INTERVAL_S, len(seqs), sent


def answers(lab: Lab, ip: str) -> bool:
    probe = ["ping", "-c", "1", "-W", "1", "-q", ip]
    return subprocess.run(lab.exec_argv(USER, probe), capture_output=True).returncode == 0


def move_under_probes(
    lab: Lab,
    stub: edge_api_pb2_grpc.EdgeAPIStub,
    ip: str,
    target: str,
    mode: str,
    max_downtime_ms: int,
) -> tuple[api.MigrateVMResponse, str]:
    """One move while the user site probes the guest every 20 ms; ping's output with it."""
    ping = ["ping", "-n", "-i", str(PING_INTERVAL_S), "-W", "1", ip]
    # into a file: a pipe nobody reads meanwhile fills (64 KiB, ~1100 replies at 20 ms) and
    # stops ping mid-move, which once read as "no silence at all"
    with tempfile.TemporaryFile("w+") as log:
        pinger = subprocess.Popen(lab.exec_argv(USER, ping), stdout=log, text=True)
        try:
            request = api.MigrateVMRequest(
                name_or_id="bench-mig",
                target_node_id=target,
                mode=mode,
                max_downtime_ms=max_downtime_ms,
            )
            moved = stub.MigrateVM(request, timeout=300)
            # answers after the switch (cold: once it has booted, within a minute)
            for _ in range(60 if mode == "cold" else 3):
                subprocess.run(["sleep", "1"], check=True)
                if mode == "cold" and answers(lab, ip):
                    break
        finally:
            pinger.send_signal(signal.SIGINT)
            pinger.wait(timeout=10)
        log.seek(0)
        return moved, log.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=4, help="moves per mode")
    p.add_argument("--modes", default="live,snapshot,cold", help="comma-separated")
    p.add_argument(
        "--max-downtime-ms", type=int, default=0, help="0 = the controller's max_downtime"
    )
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    silences: dict[str, list[float]] = {m: [] for m in modes}
    calls: dict[str, list[float]] = {m: [] for m in modes}
    lab = Lab("default", progress=lambda text: print(f"  {text}", flush=True))
    lab.preflight()
    downtimes, gaps, jobs = [], [], []
    broken = 0
    try:
        lab.up()
        with lab.channel() as channel:
            stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
            spec = pb.VMSpec(name="bench-mig", image="tiny", vcpus=1, memory_mib=128)
            spec.placement.near.CopyFrom(pb.Location(latitude=48.86, longitude=2.35))
            # placement alone prefers roomier sites: only the edge site is open for the deploy
            others = [site.id for site in lab.topology.sites if site.id != EDGE]
            for node_id in others:
                stub.CordonNode(api.CordonNodeRequest(node_id=node_id, cordoned=True), timeout=10)
            try:
                vm = stub.DeployVM(api.DeployVMRequest(spec=spec), timeout=120)
            finally:
                for node_id in others:
                    stub.CordonNode(api.CordonNodeRequest(node_id=node_id), timeout=10)
            if vm.node_id != EDGE:
                raise RuntimeError(f"placement put the guest on {vm.node_id}, not {EDGE}")
            ip = vm.address.split("/")[0]
            moves = [(mode, i) for mode in modes for i in range(args.rounds)]
            for n, (mode, _) in enumerate(moves):
                target = CLOUD if n % 2 == 0 else EDGE
                # the guest must answer before the move (it boots first, then settles)
                if not any(answers(lab, ip) for _ in range(60)):
                    broken += 1
                    print(f"  the guest stopped answering after move {n}: stopping", flush=True)
                    break
                moved, output = move_under_probes(lab, stub, ip, target, mode, args.max_downtime_ms)
                gap, answered, sent = longest_gap_s(output)
                silences[mode].append(gap)
                calls[mode].append(moved.total_ms / 1000)
                figures = ""
                if mode == "live":
                    downtimes.append(moved.downtime_ms / 1000)
                    gaps.append(gap)
                    jobs.append(moved.elapsed_ms / 1000)
                    figures = (
                        f"job {moved.elapsed_ms:.0f} ms, guest paused {moved.downtime_ms:.0f} "
                        f"ms, {moved.memory_bytes / 2**20:.1f} MiB; "
                    )
                print(
                    f"  {mode}: {moved.source_node_id} -> {moved.vm.node_id}: {figures}user at "
                    f"{USER}: longest silence {gap:.2f} s, {answered}/{sent} answered; "
                    f"whole call {moved.total_ms / 1000:.1f} s",
                    flush=True,
                )
            stub.DeleteVM(api.DeleteVMRequest(name_or_id="bench-mig"), timeout=60)
    finally:
        lab.down()
    if broken:
        print("\nTHE GUEST BROKE (it stopped answering): see docs/migration.md, known problem")
    if not downtimes:
        print("\nno live moves: no baseline")
        return 1
    floor = percentile(downtimes, 50)
    print(f"\nlibvirt downtime of live moves (baseline, p50 over {len(downtimes)}): {floor:.3f} s")
    print(
        f"live: user-visible silence p50 {percentile(gaps, 50):.2f} s, p95 "
        f"{percentile(gaps, 95):.2f} s, max {max(gaps):.2f} s "
        f"({percentile(gaps, 50) / floor:.1f}x the guest's own pause); "
        f"migration job p50 {percentile(jobs, 50):.1f} s"
    )
    for mode in modes:
        if mode != "live" and silences[mode]:
            s50 = percentile(silences[mode], 50)
            print(
                f"{mode}: user-visible silence p50 {s50:.1f} s, max {max(silences[mode]):.1f} s "
                f"({s50 / floor:.0f}x live's libvirt pause); whole call p50 "
                f"{percentile(calls[mode], 50):.1f} s"
            )
    verdict = "MET" if max(gaps) < GOAL_S else "MISSED"
    print(f"{verdict} spec goal: edge-to-cloud live migration with < {GOAL_S:g} s downtime")
    verdict = "MET" if percentile(gaps, 95) <= 0.150 else "MISSED"
    print(f"{verdict} issue 10 goal: p95 user-visible silence <= 150 ms (live, default downtime)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
