"""The demo's failover act: a German site loses power, its VM comes back on another German
site within seconds (measured here), and the returning site's stale copy is destroyed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from agent.hypervisor import domain_xml
from lab.lab import Lab
from lab.processes import wait_until

Say = Callable[[str], None]
Cli = Callable[..., str]


def run_failover(lab: Lab, address: str, say: Say, cli: Cli) -> None:
    say("A site loses power: its VM runs again elsewhere, then the site's stale copy goes")
    name = "sensor-hub"
    print("\n# a sensor hub for Munich, data kept in Germany; paused by its own agent 3 s after")
    print("# it loses the controller, so the controller may replace it 3 s (+ margin) later")
    cli(address, "vm", "deploy", name, "--image", "tiny", "--vcpus", "1", "--memory-mib", "128",
        "--near", "48.1351,11.5820", "--country", "DE", "--stop-after", "3")  # fmt: skip
    site = str(_vm(address, cli, name)["node_id"])
    print(f"$ novacron-lab fail {site}    # link down, then its agent, libvirtd, QEMU: SIGKILL")
    cut = time.monotonic()
    lab.fail(site)
    wait_until(lambda: _moved(address, cli, name, site), 90, f"{name} to run elsewhere")
    took = time.monotonic() - cut
    vm = _vm(address, cli, name)
    print(
        f"{name} runs on {vm['node_id']} (generation {vm['generation']}) {took:.1f}s after the "
        "power cut (measured; the guest's boot comes after)"
    )
    cli(address, "vm", "show", name)
    print(f"$ novacron-lab restore {site}   # power back: libvirtd and the agent restart")
    back = time.monotonic()
    lab.restore(site)
    wait_until(lambda: not _defined(lab, site, name), 60, f"the stale {name} on {site} to go")
    print(
        f"{site}'s stale copy (generation 1) destroyed {time.monotonic() - back:.1f}s after the "
        "restore; one copy runs, on "
        f"{vm['node_id']}"
    )
    cli(address, "vm", "delete", name)


def _vm(address: str, cli: Cli, name: str) -> dict[str, object]:
    data = json.loads(cli(address, "vm", "show", name, "-o", "json", show=False))
    assert isinstance(data, dict)
    return data


def _moved(address: str, cli: Cli, name: str, site: str) -> bool:
    vm = _vm(address, cli, name)
    return vm["node_id"] != site and vm["state"] == "running"


def _defined(lab: Lab, site: str, name: str) -> bool:
    """Whether the site's own libvirtd still has the domain (running or not)."""
    listed = subprocess.run(
        lab.exec_argv(site, ["virsh", "list", "--all", "--name"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return domain_xml.domain_name(name) in listed.split()
