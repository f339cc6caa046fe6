"""Live utilisation of the node from psutil (what heartbeats carry)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from shared.domain import Utilization

MIB = 1024 * 1024
GIB = 1024 * MIB


class ResourceSampler:
    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # primes the counter: the next call measures from here

    def sample(self) -> Utilization:
        """Blocking but cheap (reads /proc); the agent calls it off the event loop."""
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self._existing(self.disk_path)))
        net = psutil.net_io_counters()
        return Utilization(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used_mib=(memory.total - memory.available) // MIB,
            memory_total_mib=memory.total // MIB,
            disk_used_gib=disk.used // GIB,
            disk_total_gib=disk.total // GIB,
            net_rx_bytes=net.bytes_recv if net else 0,
            net_tx_bytes=net.bytes_sent if net else 0,
            load_1m=os.getloadavg()[0],
        )

    def storage_gib(self) -> int:
        return psutil.disk_usage(str(self._existing(self.disk_path))).total // GIB

    @staticmethod
    def _existing(path: Path) -> Path:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path
