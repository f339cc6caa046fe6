"""Mesh coordination: overlay addresses (IPAM) and each node's versioned peer set.

Pure: the controller feeds it what agents reported and pushes what it returns. A full mesh
among the nodes that joined, every peer with persistent keepalive: a NATed side must keep its
mapping open, and link health needs handshakes even on an idle link (a peer with no handshake
for 180 s is down).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from shared.errors import ResourceExhausted
from shared.mesh import MeshConfig, MeshIdentity, MeshPeer

KEEPALIVE_S = 25


class Ipam:
    """One address per holder (a node, or a VM) from a pool, kept for as long as it is held:
    a VM keeps its address wherever it runs."""

    def __init__(
        self, pool: str, held: Mapping[str, str] | None = None, reserved: tuple[str, ...] = ()
    ) -> None:
        self.network = ipaddress.ip_network(pool)
        self.held: dict[str, str] = dict(held or {})
        self.reserved = frozenset(reserved)

    def address(self, node_id: str) -> str:
        """The node's address, allocating the lowest free one on first use."""
        found = self.peek(node_id)
        self.held[node_id] = found
        return found

    def peek(self, node_id: str) -> str:
        """The address `node_id` holds, or the one it would get (nothing is allocated)."""
        found = self.held.get(node_id)
        if found is not None:
            return found
        taken = set(self.held.values()) | self.reserved
        for host in self.network.hosts():
            if str(host) not in taken:
                return str(host)
        raise ResourceExhausted(f"address pool {self.network} is exhausted")

    def release(self, node_id: str) -> None:
        self.held.pop(node_id, None)

    def cidr(self, node_id: str) -> str:
        return f"{self.address(node_id)}/{self.network.prefixlen}"


def gateway_of(pool: str) -> str:
    """The VM network's anycast gateway: the pool's last host, answered by every site."""
    return str(ipaddress.ip_network(pool).broadcast_address - 1)


def peer_set(
    node_id: str,
    members: Mapping[str, MeshIdentity],
    ipam: Ipam,
    version: int,
    vm_routes: Mapping[str, tuple[str, ...]] | None = None,
    vm_pool: str = "",
) -> MeshConfig:
    """What `node_id` should have: every other member, reachable at its endpoint, routing its
    overlay address and the addresses of the VMs it hosts (/32 each) through the tunnel. When
    a VM moves, its /32 moves to its new node's entry: the route follows the VM."""
    routes = vm_routes or {}
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
                allowed_ips=(f"{host}/32", *routes.get(other_id, ())),
                persistent_keepalive_s=KEEPALIVE_S,
                address=host,
            )
        )
    return MeshConfig(
        version=version,
        address=ipam.cidr(node_id),
        peers=tuple(peers),
        vm_pool=vm_pool,
        vm_gateway=gateway_of(vm_pool) if vm_pool else "",
    )
