"""The `agent:` block of one lab site's agent: what a real site's /etc/novacron/agent.yaml
would hold, with this site's address, WAN and capacity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from lab.topology import COST_PER_HOUR, Site, Topology


class _Lab(Protocol):
    topology: Topology
    heartbeat: str
    images_dir: Path

    def site_dir(self, site_id: str) -> Path: ...
    def libvirt_uri(self, site_id: str) -> str: ...


def agent_config(lab: _Lab, site: Site, join_token: str, ca_pin: str) -> dict[str, Any]:
    return {
        "agent": {
            "node_id": site.id,
            "controller": lab.topology.controller_address,
            # enrols once with these (one-use, bound to this node id), then uses its certificate
            "join_token": join_token,
            "ca_pin": ca_pin,
            "libvirt_uri": lab.libvirt_uri(site.id),
            # no migration_host: migrations arrive over the mesh only (agent/migration_gateway)
            "edge_type": site.edge_type.value,
            "labels": {"site": site.id, "city": site.city, **site.labels},
            "location": {
                "latitude": site.latitude,
                "longitude": site.longitude,
                "country": site.country,
            },
            "cost_per_hour": COST_PER_HOUR[site.edge_type],
            "capacity": {
                "vcpus": site.capacity.vcpus,
                "memory_mib": site.capacity.memory_mib,
                "storage_gib": site.capacity.storage_gib,
                "beyond_host": True,  # an emulated site: bigger than this host
            },
            "state_dir": str(lab.site_dir(site.id) / "agent"),
            "images_dir": str(lab.images_dir),
            "heartbeat_interval": lab.heartbeat,
            # the edge mesh: WireGuard between sites, across the emulated WAN
            "mesh": {"enabled": True, "endpoint_host": site.address, "listen_port": 51820},
            # htb classes on the uplink: control first, migration capped at half the link
            "qos": {
                "enabled": True,
                "link_mbit": site.wan.bandwidth_mbit,
                "migration_mbit": site.wan.bandwidth_mbit / 2,
            },
        }
    }
