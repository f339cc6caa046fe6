"""What the agent says about its node in each hello: identity, capacity, location, the
hypervisor's own figures. The last one read is kept, for a hello while libvirt is away."""

from __future__ import annotations

import platform
import socket

from agent import __version__
from agent.config import AgentConfig
from agent.hypervisor.base import Hypervisor
from agent.resources import ResourceSampler
from shared.domain import Capacity, NodeInfo
from shared.errors import NovaCronError


class NodeInfoReader:
    def __init__(
        self, config: AgentConfig, hypervisor: Hypervisor, sampler: ResourceSampler
    ) -> None:
        self.config = config
        self.hypervisor = hypervisor
        self.sampler = sampler
        self._info: NodeInfo | None = None

    def read(self) -> NodeInfo:
        try:
            self._info = self._read()
        except NovaCronError:
            if self._info is None:
                raise
        return self._info

    def _read(self) -> NodeInfo:
        host = self.hypervisor.host_info()
        cap = self.config.capacity
        capacity = Capacity(
            vcpus=cap.vcpus or host.capacity.vcpus,
            memory_mib=cap.memory_mib or host.capacity.memory_mib,
            storage_gib=cap.storage_gib or self.sampler.storage_gib(),
        )
        return NodeInfo(
            node_id=self.config.node_id,
            hostname=socket.gethostname(),
            arch=host.arch or platform.machine(),
            edge_type=self.config.edge_type,
            capacity=capacity,
            location=self.config.location.to_domain() if self.config.location else None,
            labels=dict(self.config.labels),
            hypervisor=host.hypervisor,
            agent_version=__version__,
            cost_per_hour=self.config.cost_per_hour,
        )
