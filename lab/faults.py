"""Failure injection on a running lab: a site's power loss, a WAN cut, and the way back.

- `fail SITE`: the site's WAN link goes down first, then every process of the site is SIGKILLed
  at once, and what a reboot loses is dropped: the kernel state its agent made (the uplink's
  qdisc, bridge, tunnels) and its libvirtd's run dir (a tmpfs /run on a real host). The site's
  processes are those in its network namespace: only the lab starts processes there (agent and
  libvirtd through nsenter; QEMU and wireguard-go as their children), so nothing else is touched.
  Link first, so that no dying word (a VM-crashed event, a FIN) reaches the controller: it
  learns of the loss from the silence alone, as after a real power cut.
- `partition SITE`: only the link goes down: the site's WAN TUN device is set down inside its
  namespace. The kernel then drops the device's routes, so nothing the site sends leaves it and
  the router's writes towards it fail (counted as drops): both directions, established TCP
  streams as much as new connections, and no RST or FIN tells either end. A firewall rule would
  have to catch established flows too (and nft is not installed here); a down link cannot miss
  a packet, takes effect when `ip` returns, and needs no change to the WAN router.
- `restore SITE`: link up (the kernel re-adds the address's routes, so TCP streams that outlived
  a partition resume), then the site's libvirtd and agent are restarted if they are not running,
  with the same config, state dir and node id, so the agent reconnects as the same node. Guests
  of a failed site stay dead, as after a reboot.

Each site's condition is kept in the state file, so `status` shows it and `down`, which finds
processes by the state file and by the namespaces, cleans up in any condition.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lab import netns, pids
from lab.errors import LabError
from lab.libvirtd import LibvirtdError
from lab.state import LabState
from lab.wan import RouterConfig

if TYPE_CHECKING:
    from lab.libvirtd import PrivateLibvirtd
    from lab.processes import Daemon
    from lab.topology import Site, Topology

UP, FAILED, PARTITIONED = "up", "failed", "partitioned"
KILL_TIMEOUT_S = 10.0


class _Lab(Protocol):
    """What the fault commands use of lab.lab.Lab (a protocol: lab.lab imports this module)."""

    topology: Topology
    state_dir: Path
    state: LabState
    _daemons: list[Daemon]

    @property
    def controller_address(self) -> str: ...
    @property
    def client_dir(self) -> Path: ...
    def libvirtd(self, site_id: str) -> PrivateLibvirtd: ...
    def _start_agent(self, site: Site) -> None: ...
    def _save(self) -> None: ...


class Faults:
    """Mixed into lab.lab.Lab. Each command re-reads the state file first (another process may
    have changed it), returns a line for the operator, and raises LabError when it cannot act."""

    def condition(self: _Lab, site_id: str) -> str:
        """up, failed or partitioned, as recorded in the state file."""
        return self.state.conditions.get(_edge_site(self, site_id).id, UP)

    def fail(self: _Lab, site_id: str) -> str:
        """Power loss: link down, then SIGKILL to agent, libvirtd and every guest of the site."""
        site = _edge_site(self, site_id)
        if self.state.conditions.get(site.id) == FAILED:
            return f"{site.id} is already failed: nothing to do (`restore` brings it back)"
        self.state.conditions[site.id] = FAILED  # first: a fail cut short is still restorable
        self._save()
        ifname = _set_link(self, site, up=False)
        killed = _kill_site(self, site)
        _forget_kernel_state(site, ifname)
        shutil.rmtree(self.libvirtd(site.id).dir("run"), ignore_errors=True)  # /run is a tmpfs
        what = ", ".join(f"{name} ({pid})" for pid, name in sorted(killed.items())) or "nothing"
        return f"{site.id} failed: WAN link {ifname} down; SIGKILLed {what}"

    def partition(self: _Lab, site_id: str) -> str:
        """Cut the site's WAN link only; its processes keep running."""
        site = _edge_site(self, site_id)
        condition = self.state.conditions.get(site.id, UP)
        if condition == FAILED:
            raise LabError(f"{site.id} is failed, its link already down: `restore` it first")
        if condition == PARTITIONED:
            return f"{site.id} is already partitioned: nothing to do"
        self.state.conditions[site.id] = PARTITIONED
        self._save()
        ifname = _set_link(self, site, up=False)
        return f"{site.id} partitioned: WAN link {ifname} down, its processes keep running"

    def restore(
        self: _Lab,
        site_id: str,
        timeout_s: float = 60.0,
        wait_ready: bool = True,
        *,
        link: bool = True,
    ) -> str:
        """Link up; libvirtd and agent restarted if not running; wait until the node is READY.
        `link=False`: the power comes back but the uplink stays down (a reboot while offline):
        the daemons restart, the site stays partitioned."""
        site = _edge_site(self, site_id)
        was = self.state.conditions.get(site.id, UP)
        done = [f"WAN link {_set_link(self, site, up=True)} up" if link else "WAN link left down"]
        daemon = self.libvirtd(site.id)
        if _pid_in_site(_read_pid(daemon.pid_file), site) is None:
            shutil.rmtree(daemon.dir("run"), ignore_errors=True)  # stale pid file, socket, guests
            try:
                daemon.start()
            except LibvirtdError as exc:
                raise LabError(f"{site.id}: {exc}") from exc
            done.append(f"libvirtd started ({daemon.pid})")
        if _agent_pid(self, site) is None:
            _restart_agent(self, site)
            done.append(f"agent started ({_agent_pid(self, site)})")
        if link:
            self.state.conditions.pop(site.id, None)
        else:
            self.state.conditions[site.id] = PARTITIONED
            wait_ready = False  # it cannot reach the controller
        self._save()
        if was == UP and len(done) == 1:
            return f"{site.id} is up, its libvirtd and agent running: nothing to restore"
        if wait_ready:
            _wait_ready(self, site, timeout_s)
            done.append("READY at the controller")
        return f"{site.id} restored (was {was}): " + ", ".join(done)


def _edge_site(lab: _Lab, site_id: str) -> Site:
    """The edge site `site_id` of a lab that is up, with lab.state fresh from the state file."""
    state = LabState.load(lab.state_dir)
    if state is None:
        raise LabError(f"no lab in {lab.state_dir} (start one with `novacron-lab up`)")
    if not state.ready:
        raise LabError(
            f"the lab in {lab.state_dir} is not up (still starting, or its `up` failed:"
            " `novacron-lab down` cleans up)"
        )
    lab.state = state
    sites = {s.id: s for s in lab.topology.sites}
    if site_id not in sites:
        what = f"unknown site {site_id!r}"
        if site_id == lab.topology.controller.id:
            what = "the controller is not an edge site"
        raise LabError(f"{what}; the lab's edge sites: {', '.join(sites)}")
    return sites[site_id]


def _set_link(lab: _Lab, site: Site, *, up: bool) -> str:
    """Set the site's WAN device (named in the router's config) up or down; returns its name."""
    path = lab.state_dir / "wan.json"
    try:
        config = RouterConfig.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"cannot read the WAN config {path}: {exc}") from exc
    ifname = next((e.ifname for e in config.endpoints if e.site == site.id), None)
    if ifname is None:
        raise LabError(f"{site.id} has no WAN link in {path}")
    try:
        netns.ip("-n", site.netns, "link", "set", ifname, "up" if up else "down")
    except netns.NetnsError as exc:
        raise LabError(f"{site.id}: WAN link {ifname}: {exc} (is the WAN router running?)") from exc
    return ifname


def _kill_site(lab: _Lab, site: Site) -> dict[int, str]:
    """SIGKILL every process in the site's namespace, again until none is left (one may have
    forked meanwhile); reap those that are our children. Returns pid -> name of the killed."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + KILL_TIMEOUT_S
    agent = _agent_pid(lab, site)
    while procs := [p for p in netns.netns_pids(site.netns) if p != os.getpid() and pids.alive(p)]:
        for pid in procs:
            killed.setdefault(pid, "agent" if pid == agent else _comm(pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise LabError(f"{site.id}: still running after SIGKILL: {procs}")
        time.sleep(0.05)
    name = f"agent-{site.id}"
    for d in [d for d in lab._daemons if d.name == name]:
        d.process.wait(KILL_TIMEOUT_S)  # a child of ours when this process ran `up`: no zombie
        lab._daemons.remove(d)
    return killed


def _forget_kernel_state(site: Site, wan_ifname: str) -> None:
    """What the site's kernel held goes with the power, as on a reboot: the agent's qdisc on the
    uplink, its bridge and tunnels (their routes go with them). Only the lab's WAN device stays."""
    netns.tc("-n", site.netns, "qdisc", "del", "dev", wan_ifname, "root", check=False)
    for line in netns.ip("-n", site.netns, "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name and name not in ("lo", wan_ifname):
            netns.ip("-n", site.netns, "link", "delete", name, check=False)


def _restart_agent(lab: _Lab, site: Site) -> None:
    """The same config file (node id, state dir) as at `up`; the old log is kept aside."""
    name = f"agent-{site.id}"
    lab.state.processes = [p for p in lab.state.processes if p.name != name]
    lab._daemons[:] = [d for d in lab._daemons if d.name != name]
    log_path = lab.state_dir / "logs" / f"{name}.log"
    with contextlib.suppress(OSError):
        os.replace(log_path, log_path.with_name(f"{name}.before-restore.log"))
    lab._start_agent(site)


def _wait_ready(lab: _Lab, site: Site, timeout_s: float) -> None:
    from lab.view import ready_nodes  # gRPC code: imported only when needed

    deadline = time.monotonic() + timeout_s
    while site.id not in ready_nodes(lab.controller_address, lab.client_dir):
        if _agent_pid(lab, site) is None:
            raise LabError(f"agent-{site.id} exited after restore (see {lab.state_dir}/logs)")
        if time.monotonic() > deadline:
            raise LabError(f"{site.id} not READY at the controller {timeout_s:g}s after restore")
        time.sleep(0.2)


def _agent_pid(lab: _Lab, site: Site) -> int | None:
    """The site's recorded agent, if that very process still runs."""
    for p in reversed(lab.state.processes):
        if p.name == f"agent-{site.id}":
            return p.pid if pids.same_process(p.pid, p.start_time) else None
    return None


def _pid_in_site(pid: int | None, site: Site) -> int | None:
    """`pid` if it runs in the site's network namespace (guards against a recycled pid)."""
    if pid is None or not pids.alive(pid):
        return None
    try:
        here = os.stat(f"/proc/{pid}/ns/net")
        there = os.stat(netns.netns_path(site.netns))
    except OSError:
        return None
    return pid if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) else None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
