"""The libvirt driver: the real `Hypervisor` for QEMU guests (and libvirt's test driver).

Blocking by design; the agent calls it from a worker thread. Lifecycle events come from libvirt's
default event loop, run by one daemon thread per process and shared by every instance.

`LibvirtHypervisor` is assembled from one part per job, each over the shared connection:
agent.hypervisor.libvirt_connection (the connection, libvirt's event loop, error mapping, finding
and reading our domains), libvirt_lifecycle (create, power, generation, delete), libvirt_events
(lifecycle events to subscribers), libvirt_migration (live migration and its job's stats, with
the domain XML it needs in migration_xml) and libvirt_offline_migration (cold and snapshot
migration). This module adds what it reports about the host.
"""

from __future__ import annotations

import os
import shutil

from agent.hypervisor.base import HostInfo
from agent.hypervisor.libvirt_connection import _mapped
from agent.hypervisor.libvirt_connection import ensure_event_loop as ensure_event_loop
from agent.hypervisor.libvirt_events import LibvirtEvents
from agent.hypervisor.libvirt_lifecycle import LibvirtLifecycle
from agent.hypervisor.libvirt_migration import DEFAULT_PAGE_SIZE as DEFAULT_PAGE_SIZE
from agent.hypervisor.libvirt_migration import MIGRATE_FLAGS as MIGRATE_FLAGS
from agent.hypervisor.libvirt_migration import POSTCOPY_POLL_S as POSTCOPY_POLL_S
from agent.hypervisor.libvirt_migration import LibvirtMigration
from agent.hypervisor.libvirt_migration import _mib_per_s as _mib_per_s
from agent.hypervisor.libvirt_migration import _migration_progress as _migration_progress
from agent.hypervisor.libvirt_migration import _migration_stats as _migration_stats
from agent.hypervisor.libvirt_offline_migration import LibvirtOfflineMigration
from agent.hypervisor.migration_xml import _migrated_disks as _migrated_disks
from agent.hypervisor.migration_xml import _migration_problem as _migration_problem
from agent.hypervisor.migration_xml import _retarget_xml as _retarget_xml
from shared.commands import MigrationProgress
from shared.domain import Capacity


class LibvirtHypervisor(LibvirtLifecycle, LibvirtMigration, LibvirtOfflineMigration, LibvirtEvents):
    """`Hypervisor` over one libvirt connection.

    virt_type: "auto" picks 'test' for the test driver, 'kvm' only when a probe proves KVM works
    on this host, else 'qemu' (TCG); "qemu" or "kvm" force it. storage_path, if given, is the
    directory whose filesystem size is reported as storage capacity (the image directory).
    """

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """A cold or snapshot migration's bytes sent, else the live job's figures."""
        return self.offline_progress(vm_id) or LibvirtMigration.migration_progress(self, vm_id)

    def host_info(self) -> HostInfo:
        with _mapped("host_info"):
            info = self._conn.getInfo()
            hv_type = str(self._conn.getType())
            version = int(self._conn.getVersion())
        storage_gib = 0
        if self._storage_path and os.path.isdir(self._storage_path):
            storage_gib = shutil.disk_usage(self._storage_path).total // (1 << 30)
        if self._is_test:
            hypervisor = "Test"
        else:
            ver = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
            hypervisor = f"{hv_type} {ver} ({'tcg' if self.virt_type == 'qemu' else 'kvm'})"
        return HostInfo(
            capacity=Capacity(vcpus=int(info[2]), memory_mib=int(info[1]), storage_gib=storage_gib),
            arch=str(info[0]),
            hypervisor=hypervisor,
        )

    def __enter__(self) -> LibvirtHypervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
