"""Shared helpers of the benchmarks: percentiles, a controller + agent as real processes."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lab.processes import Daemon, start_daemon

BIN = Path(sys.executable).parent


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1000:7.1f} ms  p95 {percentile(values, 95) * 1000:7.1f} ms"
        f"  mean {statistics.fmean(values) * 1000:7.1f} ms  (n={len(values)})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_controller(work: Path, address: str, heartbeat: str = "1s") -> Daemon:
    return start_daemon(
        "controller",
        [
            str(BIN / "novacron-controller"),
            "--insecure",
            "--listen",
            address,
            "--state-dir",
            str(work / "controller"),
            "--heartbeat-interval",
            heartbeat,
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ],
        work / "controller.log",
    )


def start_agent(work: Path, address: str, uri: str, images: Path, node_id: str) -> Daemon:
    return start_daemon(
        "agent",
        [
            str(BIN / "novacron-agent"),
            "--insecure",
            "--node-id",
            node_id,
            "--controller",
            address,
            "--libvirt-uri",
            uri,
            "--state-dir",
            str(work / "agent"),
            "--images-dir",
            str(images),
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ],
        work / "agent.log",
    )


def wait_node_ready(address: str, daemons: Sequence[Daemon], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in daemons:
            if not d.alive():
                raise RuntimeError(f"{d.name} exited:\n{d.log_tail()}")
        out = subprocess.run(
            [str(BIN / "novacron"), "--controller", address, "node", "list", "-o", "json"],
            capture_output=True,
            text=True,
        ).stdout
        try:
            if any(n.get("condition") == "ready" for n in json.loads(out)["items"]):
                return
        except (ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the agent did not register in time")
