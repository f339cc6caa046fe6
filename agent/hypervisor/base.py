"""The hypervisor interface. Every driver passes tests/contract/test_hypervisor_contract.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shared.commands import MigrationProgress, MigrationStats, MigrationTarget
from shared.domain import Capacity, VMSpec, VMStatus

__all__ = [
    "BootMedia",
    "HostInfo",
    "Hypervisor",
    "MigrationProgress",
    "MigrationStats",
    "MigrationTarget",
    "NetworkAttachment",
    "VMEventCallback",
    "mac_for",
]

VMEventCallback = Callable[[VMStatus, str], None]
"""Called (from any thread) with the VM's new status and the lifecycle event name."""


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """One NIC on a host bridge; the guest configures `address` itself (no DHCP on the sites)."""

    bridge: str  # an existing Linux bridge on the host (libvirt networks are not used)
    mac: str  # e.g. mac_for(vm_id)
    address: str  # CIDR, e.g. 10.251.0.5/32
    gateway: str  # e.g. 10.251.255.254; reached on-link even when outside `address`'s prefix


@dataclass(frozen=True, slots=True)
class BootMedia:
    """What the driver needs to boot a VM, resolved from an image by the agent."""

    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    disk: str = ""  # path of the VM's own qcow2 (an overlay on the image's base), or ""
    network: NetworkAttachment | None = None  # no NIC when None
    arch: str = ""  # the guest's: its image's architecture ("" = the host's)


def mac_for(vm_id: str) -> str:
    """A stable MAC for a VM: QEMU's locally administered unicast 52:54:00 prefix plus 3 bytes
    of a hash of the id, so that a recreated or migrated VM keeps its MAC (and ARP entries)."""
    digest = hashlib.sha256(vm_id.strip().lower().encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


@dataclass(frozen=True, slots=True)
class HostInfo:
    capacity: Capacity  # vCPUs and memory from the hypervisor; storage from the image dir's disk
    arch: str
    hypervisor: str  # human readable, e.g. "QEMU 7.2.0 (tcg)"


class Hypervisor(Protocol):
    """Blocking API (the agent calls it from a worker thread). All operations are idempotent:
    creating a VM that already exists with the same id and generation, deleting one that is gone,
    suspending a paused one, all succeed without change."""

    def host_info(self) -> HostInfo: ...

    def list_vms(self) -> list[VMStatus]:
        """Every VM this agent manages (domains carrying our metadata)."""
        ...

    def get_vm(self, vm_id: str) -> VMStatus | None: ...

    def create(
        self,
        vm_id: str,
        spec: VMSpec,
        generation: int,
        media: BootMedia,
        console_log: str,
        start_paused: bool = False,
    ) -> VMStatus:
        """Define the VM persistently and start it; returns once libvirt reports it running."""
        ...

    def start(self, vm_id: str) -> VMStatus: ...

    def stop(self, vm_id: str) -> VMStatus:
        """Hard stop (destroy); the definition stays."""
        ...

    def suspend(self, vm_id: str) -> VMStatus: ...

    def resume(self, vm_id: str) -> VMStatus: ...

    def interface_devices(self, vm_id: str) -> list[str]:
        """The host-side devices (taps) of the VM's NICs, e.g. ["vnet0"]; [] when none."""
        ...

    def delete(self, vm_id: str) -> None:
        """Stop if running and undefine. Deleting an unknown VM is not an error."""
        ...

    def migrate(
        self,
        vm_id: str,
        target: MigrationTarget,
        bandwidth_mbit: int = 0,
        max_downtime_ms: int = 0,
        *,
        postcopy: bool = False,
        generation: int = 0,
        time_budget_s: float = 0.0,
    ) -> None:
        """Live-migrate a running (or paused) VM to `target` and return when it runs there:
        persistent on the destination, undefined here. On failure the VM keeps running here
        and the error says why (with `postcopy`, only if it failed before the switch to
        post-copy; after it the source keeps its half paused). A VM's one disk (its qcow2
        overlay) is copied incrementally: the target must hold an overlay on the same base
        image at `target.disk`. The copy that arrives carries `generation` (0 = this copy's
        own; older than this copy's: StaleGeneration); a copy left here keeps its own.
        A pre-copy that has not converged within `time_budget_s` (0 = no bound) has its
        allowed pause raised step by step, then is aborted (DeadlineExceeded, the VM runs on
        here)."""
        ...

    def send_offline(
        self,
        vm_id: str,
        target: MigrationTarget,
        mode: str,
        generation: int = 0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        """Cold ("cold": shut down, forced after the timeout) or snapshot ("snapshot": saved
        with memory and device state) migration's part here: stop the guest and put its files
        into the target's staged directory. The copy here stays defined and startable; on
        failure it runs again as it did and the error says so."""
        ...

    def land(self, vm_id: str, vm_dir: str, generation: int, *, start: bool = True) -> VMStatus:
        """The target's part: define the VM whose files arrived in `vm_dir` (its disk already
        adopted) and run it, restored from its save file or booted; nothing left on failure."""
        ...

    def restore_saved(self, vm_id: str, save_path: str) -> VMStatus:
        """Run a stopped VM from the save file a snapshot migration left (then removed)."""
        ...

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """On the source while `migrate` runs (from another thread): the job's figures so far,
        with migration_id "" (None when no job runs, it has no figures yet, or the driver has no
        job stats)."""
        ...

    def migration_stats(self, vm_id: str) -> MigrationStats | None:
        """On the destination, after `migrate` returned on the source: the completed job's
        figures (None when libvirt has none, e.g. after a libvirtd restart)."""
        ...

    def set_generation(self, vm_id: str, generation: int) -> VMStatus:
        """Write `generation` into the VM's own record (its live and persistent definition):
        the same one is a no-op, an older one is refused (agent.fencing: StaleGeneration);
        NotFound for an unknown VM."""
        ...

    def subscribe(self, callback: VMEventCallback) -> None:
        """Deliver lifecycle events of managed VMs to `callback` until close()."""
        ...

    def problem(self) -> str:
        """Why the hypervisor cannot be used now (its daemon went away), or ""."""
        ...

    def reconnect(self) -> None:
        """Connect again after `problem()`: subscriptions renewed, domains read again.
        Unavailable while the daemon is still away."""
        ...

    def close(self) -> None: ...
