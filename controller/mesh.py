"""Mesh coordination: overlay addresses (IPAM) and each node's versioned peer set.

Pure: the controller feeds it what agents reported and pushes what it returns. A full mesh
among the nodes that joined; a pair with a node behind NAT gets persistent keepalive on both
ends (the NATed side must keep its mapping open, the other must not wait to be spoken to).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from shared.errors import ResourceExhausted
from shared.mesh import MeshConfig, MeshIdentity, MeshPeer

NAT_KEEPALIVE_S = 25


class Ipam:
    """One overlay address per node from a pool, kept for as long as the node holds it."""

    def __init__(self, pool: str, held: Mapping[str, str] | None = None) -> None:
        self.network = ipaddress.ip_network(pool)
        self.held: dict[str, str] = dict(held or {})

    def address(self, node_id: str) -> str:
        """The node's address, allocating the lowest free one on first use."""
        found = self.held.get(node_id)
        if found is not None:
            return found
        taken = set(self.held.values())
        for host in self.network.hosts():
            if str(host) not in taken:
                self.held[node_id] = str(host)
                return str(host)
        raise ResourceExhausted(f"mesh address pool {self.network} is exhausted")

    def release(self, node_id: str) -> None:
        self.held.pop(node_id, None)

    def cidr(self, node_id: str) -> str:
        return f"{self.address(node_id)}/{self.network.prefixlen}"


def peer_set(
    node_id: str,
    members: Mapping[str, MeshIdentity],
    ipam: Ipam,
    version: int,
) -> MeshConfig:
    """What `node_id` should have: every other member, reachable at its endpoint, routing its
    overlay address (/32) through the tunnel."""
    me = members[node_id]
    peers = []
    for other_id in sorted(members):
        if other_id == node_id:
            continue
        other = members[other_id]
        if not other.endpoint and not me.endpoint:
            continue  # both behind NAT: neither can reach the other (a relay is a later issue)
        host = ipam.address(other_id)
        peers.append(
            MeshPeer(
                node_id=other_id,
                public_key=other.public_key,
                endpoint=other.endpoint,
                allowed_ips=(f"{host}/32",),
                persistent_keepalive_s=NAT_KEEPALIVE_S
                if (me.behind_nat or other.behind_nat)
                else 0,
                address=host,
            )
        )
    return MeshConfig(version=version, address=ipam.cidr(node_id), peers=tuple(peers))
