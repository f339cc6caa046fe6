"""`novacron-lab`: bring an emulated multi-site edge up on this host, inspect it, tear it down."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lab import probe
from lab.lab import Lab, LabError, LabStatus
from lab.state import DEFAULT_STATE_DIR
from lab.teardown import teardown
from lab.topology import Site
from shared.errors import ConfigError
from shared.logging import configure_logging

MAX_PROBED_MBIT = 100.0  # the userspace router cannot fill faster links; their caps are not probed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="novacron-lab", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default %(default)s")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create the sites, the WAN, libvirtds, controller and agents")
    up.add_argument(
        "--topology", default="default", help="YAML file, or a shipped name: default, small"
    )
    up.add_argument("--images-dir", type=Path, help="where the tiny guest image is cached")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for READY")
    sub.add_parser("status", help="sites, their agents as the controller sees them, WAN, VMs")
    verify = sub.add_parser("verify", help="measure RTT, loss and bandwidth against the profiles")
    verify.add_argument("--pairs", type=int, default=3, help="site pairs to probe (default 3)")
    ex = sub.add_parser("exec", help="run a command inside a site (netns + libvirtd mount ns)")
    ex.add_argument("site")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    for name, text in (
        ("fail", "power loss: WAN link down, SIGKILL the site's agent, libvirtd and guests"),
        ("partition", "cut the site's WAN link only (its processes keep running)"),
        ("restore", "link up, restart the site's libvirtd and agent if needed, wait for READY"),
    ):
        fault = sub.add_parser(name, help=text)
        fault.add_argument("site")
    # the last one is restore's
    fault.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for READY")
    fault.add_argument("--no-wait", action="store_true", help="do not wait for READY")
    fault.add_argument(
        "--link-down",
        action="store_true",
        help="power back, uplink still down: restart the daemons only (a reboot while offline)",
    )
    sub.add_parser("down", help="remove everything the lab created (idempotent)")
    return p.parse_args(argv)


def _attached(state_dir: Path) -> Lab:
    return Lab.attach(state_dir)


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(
        args.topology,
        args.state_dir,
        images_dir=args.images_dir,
        progress=lambda line: print(line, flush=True),
    )
    started = time.monotonic()
    lab.up(timeout_s=args.timeout)
    print(f"\nlab up in {time.monotonic() - started:.1f}s. The controller's EdgeAPI (mTLS, admin):")
    print(f"  export NOVACRON_CONTROLLER={lab.controller_address}")
    for line in credential_exports(lab.client_dir):
        print(f"  {line}")
    print("  novacron node list")
    print("  novacron-lab status | novacron-lab verify | novacron-lab exec SITE -- virsh list")
    print("  novacron-lab down")
    return 0


def credential_exports(client_dir: Path) -> list[str]:
    """The shell lines that give `novacron` the lab's admin certificate."""
    return [
        f"export NOVACRON_CA={client_dir}/ca.crt",
        f"export NOVACRON_CERT={client_dir}/client.crt NOVACRON_KEY={client_dir}/client.key",
    ]


def render_status(st: LabStatus) -> str:
    cols = ("SITE", "TYPE", "CITY", "ADDRESS", "STATE", "AGENT", "DELAY", "JITTER", "LOSS", "BW")
    rows = [(*cols, "VMS")]
    for s in st.sites:
        w = s.site.wan
        agent = "-" if s.site.id == "controller" else (s.node.condition if s.node else "absent")
        vms = ", ".join(f"{v.name}({v.state})" for v in s.vms) or "-"
        rows.append(
            (
                s.site.id,
                s.site.edge_type.value,
                f"{s.site.city} {s.site.country}",
                s.site.address,
                s.condition,
                agent,
                f"{w.delay_ms:g}ms",
                f"{w.jitter_ms:g}ms",
                f"{w.loss_pct:g}%",
                f"{w.bandwidth_mbit:g}M",
                vms,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    head = f"lab {st.topology.name!r}, controller {st.controller_address}"
    if not st.controller_reachable:
        head += " (NOT REACHABLE)"
    cpu = st.wan_stats.get("cpu_s")
    if cpu is not None:
        head += f", WAN router CPU {cpu}s"
    return "\n".join([head, *lines])


def cmd_status(args: argparse.Namespace) -> int:
    print(render_status(_attached(args.state_dir).status()))
    return 0


def _pairs(sites: Sequence[Site], n: int) -> list[tuple[Site, Site]]:
    out = [(a, b) for i, a in enumerate(sites) for b in sites[i + 1 :]]
    return out[:n]


def cmd_verify(args: argparse.Namespace) -> int:
    lab = _attached(args.state_dir)
    topo = lab.topology
    print(f"{'PAIR':34} {'RTT conf':>9} {'RTT p50':>9} {'LOSS conf':>9} {'LOSS meas':>9}")
    for a, b in [(topo.controller, s) for s in topo.sites[:1]] + _pairs(topo.sites, args.pairs):
        rtt = probe.ping(a, b, count=40, interval_s=0.05)
        loss = probe.udp_loss(a, b, count=2000, rate_pps=2000)
        print(
            f"{a.id + ' -> ' + b.id:34} {probe.expected_rtt_ms(a, b):8.2f}m {rtt.median_ms:8.2f}m"
            f" {probe.expected_loss_pct(a, b):8.2f}% {loss.loss_pct:8.2f}%",
            flush=True,
        )
    slow = [
        (a, b)
        for a, b in _pairs(topo.all_sites, 10**6)
        if probe.expected_bandwidth_mbit(a, b) <= MAX_PROBED_MBIT
    ][:2]
    for a, b in slow:
        mbit = probe.udp_bandwidth(a, b, seconds=2.0)
        cap = probe.expected_bandwidth_mbit(a, b)
        print(f"bandwidth {a.id} -> {b.id}: cap {cap:g} Mbit/s, measured {mbit:.1f} Mbit/s")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LabError("usage: novacron-lab exec SITE -- COMMAND [ARGS...]")
    argv = _attached(args.state_dir).exec_argv(args.site, cmd)
    os.execvp(argv[0], argv)
    return 127  # not reached


def cmd_fault(args: argparse.Namespace) -> int:
    lab = _attached(args.state_dir)
    if args.command == "restore":
        print(
            lab.restore(
                args.site, timeout_s=args.timeout, wait_ready=not args.no_wait,
                link=not args.link_down,
            )
        )  # fmt: skip
    else:
        print(lab.fail(args.site) if args.command == "fail" else lab.partition(args.site))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    removed = teardown(args.state_dir)
    for item in removed:
        print(f"removed {item}")
    print("lab down: nothing left" if removed else "lab down: nothing to remove")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(os.environ.get("NOVACRON_LAB_LOG_LEVEL", "warning"))
    handlers = {
        "up": cmd_up,
        "status": cmd_status,
        "verify": cmd_verify,
        "exec": cmd_exec,
        "fail": cmd_fault,
        "partition": cmd_fault,
        "restore": cmd_fault,
        "down": cmd_down,
    }
    try:
        return handlers[args.command](args)
    except (LabError, ConfigError) as exc:
        print(f"novacron-lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
