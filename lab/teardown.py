"""Undo a lab, also after a crash: from its state file, then by what only a lab leaves behind
(processes in its namespaces, `nclab-` links and namespaces, its unreachable routes, its files).
`novacron-lab down` and `Lab.down` both end here; it is idempotent."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import structlog

from lab import netns, pids
from lab.libvirtd import PrivateLibvirtd
from lab.state import STATE_FILE, LabState

log = structlog.get_logger(__name__)

# what a lab writes in its state dir (nothing else there is removed)
_OWNED = (STATE_FILE, "wan.json", "wan.ready", "wan-stats.json", "logs", "sites", "controller")


def teardown(state_dir: Path, subnet: str | None = None) -> list[str]:
    """Undo a lab from its state file and, for anything the file misses, by the `nclab-` prefix
    and the lab's route protocol. Returns what was removed (for the operator)."""
    state = LabState.load(state_dir)
    removed: list[str] = []
    if state:
        agents = [p for p in state.processes if p.name.startswith("agent-")]
        controller = [p for p in state.processes if p.name == "controller"]
        for group in (agents, controller):  # agents first: no reconnect storm, no reconcile
            killed = pids.terminate([(p.pid, p.start_time) for p in group])
            removed += [f"process {p.name} ({p.pid})" for p in group]
            if killed:
                log.warning("lab_sigkill", pids=killed)
        for site, base in state.libvirtd.items():
            with contextlib.suppress(Exception):
                PrivateLibvirtd(Path(base)).stop()
                removed.append(f"libvirtd {site}")
        router = [p for p in state.processes if p.name == "wan-router"]
        pids.terminate([(p.pid, p.start_time) for p in router])
        removed += [f"process wan-router ({p.pid})" for p in router]
    # Leftovers: every process in a lab namespace is the lab's (qemu, libvirtd, agents, ...).
    for name in netns.list_netns():
        stray = netns.netns_pids(name)
        if stray:
            pids.terminate([(pid, pids.start_time(pid)) for pid in stray], timeout=5)
            removed += [f"process {pid} in {name}" for pid in stray]
    for link in netns.list_links():
        netns.delete_link(link)
        removed.append(f"link {link}")
    for name in netns.list_netns():
        netns.delete_netns(name)
        removed.append(f"netns {name}")
    routes = set(netns.lab_routes())
    if state:
        routes |= set(state.routes) & (set(netns.lab_routes()) | {subnet or ""})
    for dest in sorted(r for r in routes if r):
        netns.delete_route(dest)
    removed += [f"route unreachable {r}" for r in sorted(routes) if r]
    for name in _OWNED:
        path = state_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    with contextlib.suppress(OSError):
        (state_dir / f".{STATE_FILE}.tmp").unlink(missing_ok=True)
        state_dir.rmdir()  # only if empty: never remove what we did not create
    return removed
