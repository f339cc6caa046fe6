"""The lab: an emulated multi-site edge on this host (see lab/topology.py, lab/wan.py).

    lab = Lab(load_topology("small"), Path("/tmp/nclab"))
    lab.up()                      # sites, WAN, libvirtds, controller, agents; waits until READY
    lab.controller_address        # "10.213.255.254:7700", reachable from the host
    lab.fail("mec-berlin")        # power loss; also partition, restore (lab/faults.py)
    lab.down()                    # idempotent; also cleans up after a crash

Each site is a network namespace `nclab-<site>` attached to the WAN router by a TUN device, with a
private libvirtd (own mount namespace) and a novacron-agent inside. The controller has a namespace
of its own on the WAN and a management veth to the host. `up` records everything it creates in
<state_dir>/state.json before creating it, so `down` can always undo it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
import yaml

from agent.images.builder import build_tiny_image
from lab import netns, pids, trust
from lab.agent_config import agent_config
from lab.errors import LabError as LabError  # re-exported: callers import it from here
from lab.faults import UP, Faults
from lab.libvirtd import PrivateLibvirtd
from lab.processes import BIN, Daemon, start_daemon
from lab.state import DEFAULT_STATE_DIR, STATE_FILE, LabState, ProcessRecord
from lab.teardown import teardown
from lab.topology import CONTROLLER_PORT, Site, Topology, WanProfile, load_topology
from lab.wan import Endpoint, RouterConfig

if TYPE_CHECKING:
    import grpc

    from lab.view import NodeView, VMView

log = structlog.get_logger(__name__)

DEFAULT_IMAGES_DIR = Path("/var/cache/novacron-lab/images")
METRICS_PORT = 9470  # the controller's Prometheus endpoint, on the management veth
DASHBOARD_PORT = 7780  # its web dashboard (HTTPS), on the management veth too
# What `up` creates under the state dir; `down` removes exactly these (never the dir's other files).
# The router lives in a namespace of its own: its TUNs are born there before moving to the sites,
# and a router left over from a crash is found like every other lab process, by its namespace.
WAN_NETNS = "nclab-wan"
_TOOLS = ("ip", "nsenter", "unshare", "libvirtd", "qemu-system-x86_64")


@dataclass(frozen=True, slots=True)
class SiteStatus:
    site: Site
    node: NodeView | None  # None: the controller does not know it
    vms: tuple[VMView, ...]
    condition: str = UP  # up, failed or partitioned (lab.faults)


@dataclass(frozen=True, slots=True)
class LabStatus:
    topology: Topology
    controller_address: str
    controller_reachable: bool
    sites: tuple[SiteStatus, ...]
    wan_stats: dict[str, object]


class Lab(Faults):
    """One lab on this host. Only one can be up at a time (the subnet and names are fixed)."""

    def __init__(
        self,
        topology: Topology | Path | str | None = None,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        images_dir: Path | str | None = None,
        progress: Callable[[str], None] | None = None,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.heartbeat = f"{heartbeat_s:g}s"  # the agents' (and the detector's) beat
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.state_dir = Path(state_dir).absolute()
        self.images_dir = Path(images_dir or DEFAULT_IMAGES_DIR).absolute()
        self._progress = progress or (lambda text: None)
        self._t0 = time.monotonic()
        self._daemons: list[Daemon] = []
        self.state = LabState()
        self.ca_pin = ""  # the installation CA's, from `novacron-controller init` at up

    @classmethod
    def attach(cls, state_dir: Path | str = DEFAULT_STATE_DIR) -> Lab:
        """The lab that `up` (maybe in another process) recorded in `state_dir`."""
        state = LabState.load(Path(state_dir))
        if state is None:
            raise LabError(f"no lab in {state_dir} (start one with `novacron-lab up`)")
        lab = cls(
            state.topology_file or state.topology, state_dir, images_dir=state.images_dir or None
        )
        lab.state = state
        return lab

    # -- addresses ---------------------------------------------------------------------------

    @property
    def metrics_url(self) -> str:
        """The controller's Prometheus endpoint, from the host (management veth)."""
        return f"http://{self.topology.mgmt_controller_ip}:{METRICS_PORT}/metrics"

    @property
    def dashboard_url(self) -> str:
        """The controller's web dashboard, from the host (a service token or client cert)."""
        return f"https://{self.topology.mgmt_controller_ip}:{DASHBOARD_PORT}/"

    @property
    def client_dir(self) -> Path:
        """The admin's client credentials (ca.crt, client.crt, client.key)."""
        return trust.admin_dir(self.state_dir)

    def channel(self) -> grpc.Channel:
        """A channel to the controller's API with the admin's client certificate."""
        return trust.channel(self.controller_address, self.client_dir)

    def cli_env(self) -> dict[str, str]:
        return trust.cli_env(self.client_dir)

    @property
    def controller_address(self) -> str:
        """The controller's EdgeAPI as the host reaches it (management veth, no WAN)."""
        return f"{self.topology.mgmt_controller_ip}:{CONTROLLER_PORT}"

    def site_dir(self, site_id: str) -> Path:
        return self.state_dir / "sites" / site_id

    def libvirtd(self, site_id: str) -> PrivateLibvirtd:
        site = self.topology.site(site_id)
        # No TCP at all: peers reach this libvirtd through its agent's migration gateway on
        # the mesh address, and each migration tells QEMU to listen there too (its
        # listen_address; qemu.conf refuses 127.0.0.1 as a default). docs/security.md
        return PrivateLibvirtd(
            self.site_dir(site.id) / "libvirtd",
            netns=netns.netns_path(site.netns),
            listen=False,
        )

    def libvirt_uri(self, site_id: str) -> str:
        """The site's libvirtd, reachable from the host through its unix socket."""
        return self.libvirtd(site_id).uri

    def exec_argv(self, site_id: str, argv: Sequence[str]) -> list[str]:
        """argv running `argv` inside the site: its network namespace and, for an edge site,
        its libvirtd's mount namespace (so plain `virsh list` talks to that site's daemon)."""
        site = self.topology.site(site_id)
        mount_pid = None
        pid_file = self.libvirtd(site.id).pid_file
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if pids.alive(pid):
                mount_pid = pid
        return netns.nsenter(site.netns, argv, mount_pid)

    # -- up ----------------------------------------------------------------------------------

    def up(self, timeout_s: float = 120.0, cleanup_on_failure: bool = True) -> None:
        """Bring the whole lab up and wait until every agent is READY at the controller."""
        self._t0 = time.monotonic()
        self.preflight()  # refuses before creating anything, so a failure here tears nothing down
        try:
            self._up(timeout_s)
        except BaseException as exc:
            tails = self._log_tails()
            if cleanup_on_failure:
                self.say("up failed: tearing down what was created")
                with contextlib.suppress(Exception):
                    self.down()
            if isinstance(exc, LabError | netns.NetnsError | OSError):
                raise LabError(f"{exc}{tails}") from exc
            raise

    def _up(self, timeout_s: float) -> None:
        topo = self.topology
        self.state = LabState(
            topology=topo.name,
            topology_file=topo.source,
            subnet=topo.subnet,
            controller_address=self.controller_address,
            images_dir=str(self.images_dir),
        )
        self._save()
        self.say(f"lab {topo.name!r}: {len(topo.sites)} sites + controller on {topo.subnet}")
        self.state.routes.append(topo.subnet)
        self._save()
        netns.add_unreachable(topo.subnet)
        with ThreadPoolExecutor(max_workers=len(topo.sites) + 1) as pool:
            image = pool.submit(build_tiny_image, self.images_dir, "tiny")
            for name in (*(site.netns for site in topo.all_sites), WAN_NETNS):
                self.state.netns.append(name)
                self._save()
                netns.add_netns(name)
            self.state.links.append(netns.MGMT_HOST_IF)
            self._save()
            mgmt = topo.mgmt_network
            netns.add_mgmt_link(
                topo.controller.netns, topo.mgmt_host_ip, topo.mgmt_controller_ip, mgmt.prefixlen
            )
            self.say("namespaces ready; starting the WAN router")
            self._start_router()
            self.say("WAN up; starting one libvirtd per site")
            for site in topo.sites:
                self.state.libvirtd[site.id] = str(self.libvirtd(site.id).base_dir)
            self._save()
            started = list(pool.map(self._start_libvirtd, topo.sites))
            self.say(f"{len(started)} libvirtds up; tiny image ready")
            image.result()
        self._start_controller()
        for site in topo.sites:
            self._start_agent(site)
        self.say(f"controller and {len(topo.sites)} agents started; waiting for READY")
        from lab.view import ready_nodes  # gRPC code: imported only when needed, not by `down`

        want = {s.id for s in topo.sites}
        deadline = time.monotonic() + timeout_s
        while not want <= (seen := ready_nodes(self.controller_address, self.client_dir)):
            for d in self._daemons:
                if not d.alive():
                    raise LabError(f"{d.name} exited while waiting for READY:\n{d.log_tail()}")
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(want - seen))
                raise LabError(f"timed out after {timeout_s:g}s: not READY: {missing}")
            time.sleep(0.2)
        self.state.ready = True
        self._save()
        self.say(f"lab up: {len(want)} sites READY at {self.controller_address}")

    def preflight(self) -> None:
        """LabError unless this host can take a lab now (root, tools, no lab already up)."""
        if os.geteuid() != 0:
            raise LabError("novacron-lab needs root (network namespaces, TUN devices, libvirtd)")
        missing = [t for t in _TOOLS if shutil.which(t) is None]
        if missing:
            raise LabError(f"missing tools: {', '.join(missing)} (see MACHINE-NOTES packages)")
        leftovers = netns.list_netns() + netns.list_links() + netns.lab_routes()
        if leftovers or (self.state_dir / STATE_FILE).exists():
            raise LabError(
                f"a lab is already up or was not cleaned up ({', '.join(leftovers) or 'state'}):"
                " run `novacron-lab down` first"
            )
        conflict = netns.subnet_in_use(self.topology.subnet)
        if conflict:
            raise LabError(f"lab subnet {self.topology.subnet} overlaps a host route: {conflict}")

    def _start_router(self) -> None:
        topo = self.topology
        prefix = ipaddress.IPv4Network(topo.subnet).prefixlen
        ready = self.state_dir / "wan.ready"
        ready.unlink(missing_ok=True)
        config = RouterConfig(
            endpoints=tuple(
                _endpoint(site, f"nclab-w{i}", prefix) for i, site in enumerate(topo.all_sites)
            ),
            mtu=topo.mtu,
            ready_file=str(ready),
            stats_file=str(self.state_dir / "wan-stats.json"),
        )
        path = self.state_dir / "wan.json"
        path.write_text(config.to_json())
        argv = [sys.executable, "-m", "lab.wan", "--config", str(path)]
        router = self._spawn("wan-router", netns.nsenter(WAN_NETNS, argv))
        deadline = time.monotonic() + 15
        while not ready.exists():
            if not router.alive():
                raise LabError(f"the WAN router exited:\n{router.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError("the WAN router did not come up within 15s")
            time.sleep(0.02)

    def _start_libvirtd(self, site: Site) -> str:
        daemon = self.libvirtd(site.id)
        daemon.start()
        return daemon.uri

    def _start_controller(self) -> None:
        topo = self.topology
        host = topo.controller_address.rpartition(":")[0]
        self.ca_pin = trust.init_controller(self.state_dir, [host, topo.mgmt_controller_ip])
        argv = [
            str(BIN / "novacron-controller"),
            "--listen", f"0.0.0.0:{CONTROLLER_PORT}",  # and its join port, 7701
            "--state-dir", str(self.state_dir / "controller"),
            "--heartbeat-interval", self.heartbeat, "--log-format", "json",
            "--metrics-listen", f"{topo.mgmt_controller_ip}:{METRICS_PORT}",
            "--dashboard-listen", f"{topo.mgmt_controller_ip}:{DASHBOARD_PORT}",
        ]  # fmt: skip
        self._spawn("controller", netns.nsenter(topo.controller.netns, argv))

    def _start_agent(self, site: Site) -> None:
        """With a new join token at `up`; a restart (`restore`) reuses the config, and the
        agent its stored certificate."""
        path = self.site_dir(site.id) / "agent.yaml"
        if not path.exists():
            token = trust.join_token(self.controller_address, self.client_dir, site.id)
            config = agent_config(self, site, token, self.ca_pin)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the token
            with os.fdopen(fd, "w") as f:
                f.write(yaml.safe_dump(config, sort_keys=False))
        argv = [str(BIN / "novacron-agent"), "--config", str(path), "--log-format", "json"]
        self._spawn(f"agent-{site.id}", netns.nsenter(site.netns, argv))

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        daemon = start_daemon(name, argv, self.state_dir / "logs" / f"{name}.log", detach=True)
        pid = daemon.process.pid
        self.state.processes.append(ProcessRecord(name, pid, pids.start_time(pid)))
        self._save()
        self._daemons.append(daemon)
        return daemon

    # -- down --------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything the lab made; safe to call any time, any number of times."""
        removed = teardown(self.state_dir, self.topology.subnet)
        for d in self._daemons:
            with contextlib.suppress(Exception):
                d.process.poll()
        self._daemons.clear()
        return removed

    # -- status ------------------------------------------------------------------------------

    def status(self) -> LabStatus:
        from lab.view import fetch

        nodes: list[NodeView] = []
        vms: list[VMView] = []
        reachable = True
        try:
            nodes, vms = fetch(self.controller_address, self.client_dir)
        except Exception:  # grpc.RpcError and friends: the controller is down
            reachable = False
        by_id = {n.node_id: n for n in nodes}
        sites = tuple(
            SiteStatus(
                site=s,
                node=by_id.get(s.id),
                vms=tuple(v for v in vms if v.node_id == s.id),
                condition=self.state.conditions.get(s.id, UP),
            )
            for s in self.topology.all_sites
        )
        stats: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads((self.state_dir / "wan-stats.json").read_text())
        return LabStatus(self.topology, self.controller_address, reachable, sites, stats)

    def is_up(self) -> bool:
        state = LabState.load(self.state_dir)
        return bool(state and state.ready)

    # -- helpers -----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self._t0
        log.info("lab", msg=text, t=round(elapsed, 2))
        self._progress(f"[{elapsed:5.1f}s] {text}")

    def _save(self) -> None:
        self.state.save(self.state_dir)

    def _log_tails(self) -> str:
        parts = []
        for d in self._daemons:
            if not d.alive():
                parts.append(f"\n--- {d.name} ({d.log_path}) ---\n{d.log_tail(15)}")
        return "".join(parts)

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


def _endpoint(site: Site, ifname: str, prefixlen: int) -> Endpoint:
    w: WanProfile = site.wan
    return Endpoint(
        site=site.id,
        netns=site.netns,
        ifname=ifname,
        address=site.address,
        prefixlen=prefixlen,
        delay_ms=w.delay_ms,
        jitter_ms=w.jitter_ms,
        loss_pct=w.loss_pct,
        bandwidth_mbit=w.bandwidth_mbit,
    )
