"""Domain objects of the edge mesh, shared by the agent (applies) and controller (decides)."""

from __future__ import annotations

from dataclasses import dataclass

HANDSHAKE_DOWN_S = 180.0  # no handshake for this long: the peer is down


@dataclass(frozen=True, slots=True)
class MeshIdentity:
    public_key: str  # base64
    endpoint: str  # host:port, "" when unreachable from outside (NAT)
    behind_nat: bool = False


@dataclass(frozen=True, slots=True)
class MeshPeer:
    node_id: str
    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    persistent_keepalive_s: int = 0
    address: str = ""  # overlay address, for probes


@dataclass(frozen=True, slots=True)
class MeshConfig:
    version: int
    address: str  # this node's overlay address, CIDR
    peers: tuple[MeshPeer, ...]
    vm_pool: str = ""  # VM addresses, routed over the mesh
    vm_gateway: str = ""  # the anycast gateway of every site's VM bridge


@dataclass(frozen=True, slots=True)
class MeshPeerStatus:
    node_id: str
    public_key: str
    endpoint: str
    last_handshake_age_s: float  # -1 = never
    rx_bytes: int
    tx_bytes: int

    @property
    def up(self) -> bool:
        return 0 <= self.last_handshake_age_s <= HANDSHAKE_DOWN_S


@dataclass(frozen=True, slots=True)
class MeshStatus:
    applied_version: int
    public_key: str
    address: str
    peers: tuple[MeshPeerStatus, ...] = ()
    error: str = ""
