"""`make demo`: the default novacron-lab (7 edge sites in 5 countries, real WAN latency) and VMs
placed near their users, driven through the `novacron` CLI as an operator would.

Brings the lab up, shows the sites, deploys tiny QEMU guests near given user locations and
prints where each landed and why, explains one decision in full, waits for every guest's first
console line, pings a guest across the mesh, live-migrates it to the cloud while pinging it,
cuts a site's power and times its VM's failover (`lab.demo_failover`), shows the alerts that
raised, shows the lab, deletes the VMs and tears everything down, even on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from lab.cli import credential_exports, render_status
from lab.demo_failover import run_failover
from lab.lab import Lab, LabError
from lab.processes import BIN, wait_until


@dataclass(frozen=True)
class Workload:
    name: str
    story: str
    flags: tuple[str, ...]
    expected_site: str


WORKLOADS = (
    Workload(
        "ar-paris",
        "AR game for players in Paris: MEC only, 10 ms RTT budget",
        ("--near", "48.8566,2.3522", "--max-latency-ms", "10", "--edge-type", "mec"),
        "mec-paris",
    ),
    Workload(
        "shop-nyc",
        "storefront for shoppers in New York",
        ("--near", "40.7306,-73.9866"),
        "telco-newyork",
    ),
    Workload(
        "gdpr-analytics",
        "analytics for users in Madrid whose data must stay in Germany",
        ("--near", "40.4168,-3.7038", "--country", "DE"),
        "",  # whichever German site scores best
    ),
)


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def cli(address: str, *args: str, show: bool = True, check: bool = True) -> str:
    if show:
        print(f"$ novacron {' '.join(args)}", flush=True)
    done = subprocess.run(
        [str(BIN / "novacron"), "--controller", address, *args], capture_output=True, text=True
    )
    if show:
        print(done.stdout, end="", flush=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"novacron {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def first_console_line(address: str, vm: str) -> str:
    out = cli(address, "vm", "console", vm, show=False, check=False)
    return next((line.strip() for line in out.splitlines() if "NovaCron guest" in line), "")


def run(lab: Lab) -> None:
    address = lab.controller_address
    say("Bringing up the lab: one network + mount namespace, libvirtd and agent per site")
    started = time.monotonic()
    lab.up()
    print(f"(lab up in {time.monotonic() - started:.1f}s; controller at {address})")
    say("Secure by default: a CA from `novacron-controller init`; agents joined with tokens")
    for line in credential_exports(lab.client_dir):
        print(f"$ {line}", flush=True)
    os.environ.update(lab.cli_env())  # the operator's admin certificate, for every command below
    cli(address, "token", "list")
    cli(address, "node", "list")

    say("Deploying VMs near their users: the placement engine picks the site")
    placed: dict[str, str] = {}
    for w in WORKLOADS:
        print(f"\n# {w.story}")
        out = cli(address, "vm", "deploy", w.name, "--image", "tiny", "--vcpus", "1",
                  "--memory-mib", "128", *w.flags)  # fmt: skip
        site = next(line.split()[2] for line in out.splitlines() if line.startswith(w.name))
        placed[w.name] = site
        if w.expected_site and site != w.expected_site:
            raise RuntimeError(f"{w.name} landed on {site}, expected {w.expected_site}")

    say("Why not elsewhere? The full explanation for the AR game")
    cli(address, "placement", "explain", "--image", "tiny", "--vcpus", "1", "--memory-mib",
        "128", *WORKLOADS[0].flags)  # fmt: skip

    say("Waiting for every guest's first console line (QEMU under TCG)")
    lines: dict[str, str] = {}

    def all_booted() -> bool:
        for name in placed:
            if name not in lines and (line := first_console_line(address, name)):
                lines[name] = line
                print(f"{name:16} on {placed[name]:14} {line}", flush=True)
        return len(lines) == len(placed)

    wait_until(all_booted, 180, "the guests to boot")
    print(f"(all booted {time.monotonic() - started:.1f}s after the lab started coming up)")

    say("VM network over the WireGuard mesh: Paris's site pings the VM in New York")
    out = cli(address, "vm", "show", "shop-nyc", show=False)
    vm_ip = next(line.split()[-1] for line in out.splitlines() if line.startswith("Address"))
    vm_ip = vm_ip.split("/")[0]
    wait_until(
        lambda: f"net eth0 {vm_ip}" in cli(address, "vm", "console", "shop-nyc", show=False),
        120,
        "shop-nyc to configure its network",
    )
    print(f"$ novacron-lab exec mec-paris -- ping -c 3 {vm_ip}", flush=True)
    ping = subprocess.run(
        lab.exec_argv("mec-paris", ["ping", "-c", "3", "-W", "3", vm_ip]),
        capture_output=True,
        text=True,
    )
    print(ping.stdout.strip().splitlines()[-1] if ping.stdout.strip() else ping.stderr.strip())
    if ping.returncode != 0:
        raise RuntimeError(f"no reply from {vm_ip} across the mesh:\n{ping.stdout}")

    say("Live migration: the New York storefront moves to the cloud while Paris pings it")
    pinger = subprocess.Popen(
        lab.exec_argv("mec-paris", ["ping", "-n", "-i", "0.2", "-W", "1", vm_ip]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        cli(address, "vm", "migrate", "shop-nyc", "--to", "cloud-fra")
        time.sleep(1.0)  # a second of answers after the switch, for the ping summary
    finally:
        pinger.send_signal(signal.SIGINT)
        pinged, _ = pinger.communicate(timeout=10)
    summary = [line for line in pinged.splitlines() if "packets transmitted" in line]
    print(f"paris -> {vm_ip} during the move: {summary[0] if summary else pinged[-200:]}")

    run_failover(lab, address, say, cli)

    say("What the controller raised meanwhile: alerts and node conditions as events")
    cli(address, "events", "--kind", "alert,node.condition", "-n", "10")
    print(f"(live: `novacron events -w`; the same on /metrics, and on the dashboard at "
          f"{lab.dashboard_url})")  # fmt: skip

    say("The lab as it stands")
    print(render_status(lab.status()), end="")

    say("Deleting the VMs")
    for name in placed:
        cli(address, "vm", "delete", name)
    cli(address, "vm", "list")

    say("The audit trail: who did what, with the certificate that proved it")
    cli(address, "audit", "--since", "15m", "--limit", "12")


def main() -> int:
    lab = Lab("default", progress=lambda text: print(f"  {text}", flush=True))
    try:
        lab.preflight()
    except LabError as exc:  # e.g. a lab is already up: not ours to tear down
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        run(lab)
    except (RuntimeError, LabError, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        say("Tearing the lab down")
        removed = lab.down()
        print(f"removed {len(removed)} lab resources")
    say("Demo finished: nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
