"""What one peer change costs an agent, on real wireguard-go, as the mesh grows (issue #5 item 7).

A wireguard-go device in a network namespace of its own holds N peers (random keys, one /32
each, endpoints on a subnet only that namespace could route). Measured, for N = 10, 100, 1000:

- add one peer (`add_peer`: one UAPI peer block) and remove it again;
- roam one peer (`update_peer` with a new endpoint: `update_only`);
- the agent's real path for a peer-set push where one peer changed (`set_peers`: the diff
  against what is applied, then one UAPI block);
- baseline in the same run: what `wg setconf` and PyPI wireguard-tools do, the whole peer set
  replaced (`replace_peers=true` and all N blocks), which also drops every session.

    .venv/bin/python -m bench.mesh_peer_update [--sizes 10,100,1000] [--rounds 50]

Needs root (network namespace) and wireguard-go; the namespace and the device are removed at
the end, also on failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.wireguard.base import Endpoint, InterfaceConfig, PeerConfig, interface_name
from agent.wireguard.keys import generate_private_key, public_key_of
from agent.wireguard.uapi import DeviceUpdate, PeerUpdate, UapiClient, socket_path
from agent.wireguard.userspace import UserspaceWireGuard
from bench.common import percentile
from lab.probe import in_netns
from shared.logging import configure_logging


def random_peer(i: int) -> PeerConfig:
    """Peer `i`: a fresh key, 100.96.x.y/32, an endpoint on 198.18.0.0/15 (benchmarking
    space, RFC 2544) that nothing in the namespace routes: no packet leaves it."""
    overlay = ipaddress.ip_network(f"100.96.{i // 250}.{i % 250 + 1}/32")
    return PeerConfig(
        public_key=public_key_of(generate_private_key()),
        allowed_ips=(overlay,),
        endpoint=Endpoint(ipaddress.ip_address(f"198.18.{i // 250}.{i % 250 + 1}"), 51820),
        persistent_keepalive_s=25,
    )


def timed(rounds: int, step: Callable[[int], None]) -> float:
    """p50 of `step(i)` over `rounds` calls, in milliseconds."""
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        step(i)
        samples.append(time.perf_counter() - started)
    return percentile(samples, 50) * 1000


def measure(driver: UserspaceWireGuard, size: int, rounds: int) -> dict[str, float]:
    peers = [random_peer(i) for i in range(size)]
    driver.set_peers(peers)
    extra = [random_peer(size + i) for i in range(rounds)]
    out: dict[str, float] = {}

    def add_remove(i: int) -> None:
        driver.add_peer(extra[i])
        driver.remove_peer(extra[i].public_key)

    out["add + remove one peer"] = timed(rounds, add_remove)

    def roam(i: int) -> None:
        first = peers[0]
        assert first.endpoint is not None
        driver.update_peer(first.public_key, endpoint=Endpoint(first.endpoint.host, 40000 + i))

    out["roam one peer (update_peer)"] = timed(rounds, roam)

    def push(i: int) -> None:
        changed = list(peers)
        old = changed[i % size]
        assert old.endpoint is not None
        changed[i % size] = dataclasses.replace(
            old, endpoint=Endpoint(old.endpoint.host, 41000 + i)
        )
        driver.set_peers(changed)

    out["peer-set push, one changed (set_peers)"] = timed(rounds, push)

    uapi = UapiClient(socket_path(driver.name))  # the baseline talks to the device directly

    def replace_all(i: int) -> None:
        blocks = tuple(
            PeerUpdate(
                public_key=p.public_key,
                endpoint=p.endpoint,
                persistent_keepalive_s=p.persistent_keepalive_s,
                replace_allowed_ips=True,
                allowed_ips=p.allowed_ips,
            )
            for p in peers
        )
        uapi.set(DeviceUpdate(replace_peers=True, peers=blocks))

    out["baseline: replace the whole set"] = timed(max(5, rounds // 5), replace_all)
    driver.set_peers(peers)  # the driver's view and the device agree again
    return out


def run(sizes: Sequence[int], rounds: int) -> int:
    ns = f"ncbench-wg-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    name = interface_name(f"bench-{ns}")
    try:
        with tempfile.TemporaryDirectory(prefix="ncbench-wg-") as state:
            driver = UserspaceWireGuard(
                InterfaceConfig(name, (ipaddress.ip_interface("100.96.255.1/16"),)), Path(state)
            )

            def body() -> None:
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
                driver.up()
                try:
                    print(f"wireguard-go in {ns}, {rounds} rounds per figure (p50)")
                    for size in sizes:
                        figures = measure(driver, size, rounds)
                        base = figures["baseline: replace the whole set"]
                        print(f"\n== {size:,} peers")
                        for label, ms in figures.items():
                            ratio = "" if label.startswith("baseline") else f"  {base / ms:6.0f}x"
                            print(f"  {label:<42} {ms:8.3f} ms{ratio}")
                finally:
                    driver.down()

            in_netns(ns, body)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    configure_logging("warning")  # the driver logs every peer change at info
    if os.geteuid() != 0:
        print("needs root (a network namespace for wireguard-go)", file=sys.stderr)
        return 2
    return run([int(s) for s in args.sizes.split(",") if s], args.rounds)


if __name__ == "__main__":
    sys.exit(main())
