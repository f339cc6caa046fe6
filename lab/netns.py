"""Network namespaces, links and routes of the lab, through `ip`; every name starts with `nclab-`.

Everything the lab creates in the kernel is findable without its state file: namespaces and links
by the `nclab-` prefix, routes by the routing protocol number LAB_PROTO, so `down` can clean up
after a crash.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence

import structlog

log = structlog.get_logger(__name__)

PREFIX = "nclab-"
LAB_PROTO = "213"  # `proto` of the lab's routes (not a registered routing protocol)
MGMT_HOST_IF = "nclab-mgmt"
MGMT_NS_IF = "nclab-mgmt-c"


class NetnsError(RuntimeError):
    """An `ip` or `tc` command failed; the message carries the command and its error."""


def ip(*args: str, check: bool = True) -> str:
    return _run("ip", args, check)


def tc(*args: str, check: bool = True) -> str:
    return _run("tc", args, check)


def _run(tool: str, args: Sequence[str], check: bool) -> str:
    done = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{tool} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def nsenter(netns: str, argv: Sequence[str], mount_pid: int | None = None) -> list[str]:
    """argv that runs `argv` in the namespace (nsenter keeps /sys and cgroups, unlike
    `ip netns exec`), and in the mount namespace of `mount_pid` if given."""
    cmd = ["nsenter", f"--net={netns_path(netns)}"]
    if mount_pid is not None:
        cmd.append(f"--mount=/proc/{mount_pid}/ns/mnt")
    return [*cmd, "--", *argv]


def list_netns() -> list[str]:
    """The lab's namespaces that exist now."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(PREFIX))


def add_netns(name: str) -> None:
    if not name.startswith(PREFIX):
        raise NetnsError(f"refusing to create namespace {name!r} without the {PREFIX} prefix")
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def delete_netns(name: str) -> None:
    if name.startswith(PREFIX):
        ip("netns", "delete", name, check=False)


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (only the lab starts processes there)."""
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def list_links() -> list[str]:
    """The lab's links in the root namespace."""
    names = []
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                names.append(name)
    return names


def delete_link(name: str) -> None:
    if name.startswith(PREFIX):
        ip("link", "delete", name, check=False)


def add_mgmt_link(netns: str, host_ip: str, ns_ip: str, prefixlen: int) -> None:
    """A veth from the host to the controller's namespace, outside the emulated WAN."""
    ip("link", "add", MGMT_HOST_IF, "type", "veth", "peer", "name", MGMT_NS_IF)
    ip("link", "set", MGMT_NS_IF, "netns", netns)
    ip("addr", "add", f"{host_ip}/{prefixlen}", "dev", MGMT_HOST_IF)
    ip("link", "set", MGMT_HOST_IF, "up")
    ip("-n", netns, "addr", "add", f"{ns_ip}/{prefixlen}", "dev", MGMT_NS_IF)
    ip("-n", netns, "link", "set", MGMT_NS_IF, "up")


def add_unreachable(subnet: str) -> None:
    """No packet to the lab subnet leaves this machine from the root namespace."""
    ip("route", "replace", "unreachable", subnet, "proto", LAB_PROTO)


def lab_routes() -> list[str]:
    """Destinations of the lab's routes in the root namespace."""
    out = ip("route", "show", "proto", LAB_PROTO)
    dests = []
    for line in out.splitlines():
        words = line.split()
        if words and words[0] == "unreachable" and len(words) > 1:
            dests.append(words[1])
        elif words:
            dests.append(words[0])
    return dests


def delete_route(dest: str) -> None:
    ip("route", "delete", "unreachable", dest, "proto", LAB_PROTO, check=False)


def subnet_in_use(subnet: str) -> str:
    """A route of this host, not the lab's, that overlaps `subnet` ('' if none)."""
    net = ipaddress.IPv4Network(subnet)
    for line in ip("-4", "route", "show", "table", "all", check=False).splitlines():
        if f"proto {LAB_PROTO}" in line or f"dev {MGMT_HOST_IF}" in line:
            continue
        words = line.split()
        dest = words[1] if words and words[0] in ("unreachable", "local", "broadcast") else ""
        dest = dest or (words[0] if words else "")
        try:
            other = ipaddress.IPv4Network(dest, strict=False)
        except ValueError:
            continue  # "default" and the like
        if other.prefixlen > 0 and other.overlaps(net):
            return line
    return ""
