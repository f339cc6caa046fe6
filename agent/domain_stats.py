"""Per-VM figures from libvirt's bulk domain statistics (virConnectGetAllDomainStats), read
at scrape time in one call: state, CPU time, memory (balloon) and network counters.

libvirt leaves out what a domain cannot report (a shut-off guest has no CPU time, a guest
without a balloon driver no `usable` memory); so does this: a missing figure is absent, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import libvirt

from agent.hypervisor.domain_xml import VMMetadata
from agent.hypervisor.libvirt_connection import _STATES  # libvirt's states, as ours
from shared.domain import VMState

STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)


# (metric suffix, libvirt's key under net.<n>.) of the interface counters
NET_COUNTERS = (
    ("receive_bytes", "rx.bytes"),
    ("receive_packets", "rx.pkts"),
    ("receive_errors", "rx.errs"),
    ("receive_drops", "rx.drop"),
    ("transmit_bytes", "tx.bytes"),
    ("transmit_packets", "tx.pkts"),
    ("transmit_errors", "tx.errs"),
    ("transmit_drops", "tx.drop"),
)

# (metric suffix, libvirt's balloon key), values in KiB
MEMORY_GAUGES = (
    ("memory_bytes", "balloon.current"),  # what the guest has now
    ("memory_max_bytes", "balloon.maximum"),
    ("memory_rss_bytes", "balloon.rss"),  # resident on the host (the QEMU process)
    ("memory_usable_bytes", "balloon.usable"),  # free inside the guest (balloon driver)
)


@dataclass(frozen=True, slots=True)
class InterfaceSample:
    name: str  # the host-side device (tap), bounded by the VM's NICs
    counters: dict[str, int]  # NET_COUNTERS suffix -> value


@dataclass(frozen=True, slots=True)
class DomainSample:
    vm_id: str
    name: str
    state: VMState
    cpu_seconds: float | None
    memory: dict[str, int]  # MEMORY_GAUGES suffix -> bytes
    interfaces: tuple[InterfaceSample, ...]


class StatsSource(Protocol):
    """What the sampler needs of agent.hypervisor.libvirt_connection.LibvirtConnection."""

    def domain_stats(self, stats: int) -> list[tuple[VMMetadata, dict[str, Any]]]: ...


def sample(meta: VMMetadata, record: dict[str, Any]) -> DomainSample:
    """One domain's libvirt record, in base units (seconds, bytes)."""
    state = _STATES.get(int(record.get("state.state", libvirt.VIR_DOMAIN_NOSTATE)))
    cpu_ns = record.get("cpu.time")
    memory = {suffix: int(record[key]) * 1024 for suffix, key in MEMORY_GAUGES if key in record}
    interfaces = []
    for n in range(int(record.get("net.count", 0))):
        prefix = f"net.{n}."
        name = str(record.get(prefix + "name", f"net{n}"))
        counters = {
            suffix: int(record[prefix + key])
            for suffix, key in NET_COUNTERS
            if prefix + key in record
        }
        interfaces.append(InterfaceSample(name, counters))
    return DomainSample(
        vm_id=meta.vm_id,
        name=meta.name,
        state=state or VMState.UNKNOWN,
        cpu_seconds=None if cpu_ns is None else int(cpu_ns) / 1e9,
        memory=memory,
        interfaces=tuple(interfaces),
    )


def read_all(source: StatsSource) -> list[DomainSample]:
    """Every one of our domains, sorted by name. Raises shared.errors (Unavailable when
    libvirtd is away)."""
    found = [sample(meta, record) for meta, record in source.domain_stats(STATS)]
    return sorted(found, key=lambda s: (s.name, s.vm_id))
