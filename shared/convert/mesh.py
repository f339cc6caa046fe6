"""Protobuf <-> the mesh types of shared.mesh (part of shared.convert)."""

from __future__ import annotations

from shared import mesh
from shared.pb.v1 import types_pb2 as pb

__all__ = [
    "mesh_config_from_pb",
    "mesh_config_to_pb",
    "mesh_identity_from_pb",
    "mesh_identity_to_pb",
    "mesh_status_from_pb",
    "mesh_status_to_pb",
]


def mesh_identity_to_pb(m: mesh.MeshIdentity) -> pb.MeshIdentity:
    return pb.MeshIdentity(public_key=m.public_key, endpoint=m.endpoint, behind_nat=m.behind_nat)


def mesh_identity_from_pb(m: pb.MeshIdentity) -> mesh.MeshIdentity:
    return mesh.MeshIdentity(m.public_key, m.endpoint, m.behind_nat)


def mesh_config_to_pb(c: mesh.MeshConfig) -> pb.MeshConfig:
    return pb.MeshConfig(
        version=c.version,
        address=c.address,
        vm_pool=c.vm_pool,
        vm_gateway=c.vm_gateway,
        peers=[
            pb.MeshPeer(
                node_id=p.node_id,
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=p.allowed_ips,
                persistent_keepalive_s=p.persistent_keepalive_s,
                address=p.address,
            )
            for p in c.peers
        ],
    )


def mesh_config_from_pb(c: pb.MeshConfig) -> mesh.MeshConfig:
    return mesh.MeshConfig(
        version=c.version,
        address=c.address,
        vm_pool=c.vm_pool,
        vm_gateway=c.vm_gateway,
        peers=tuple(
            mesh.MeshPeer(
                node_id=p.node_id,
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=tuple(p.allowed_ips),
                persistent_keepalive_s=p.persistent_keepalive_s,
                address=p.address,
            )
            for p in c.peers
        ),
    )


def mesh_status_to_pb(s: mesh.MeshStatus) -> pb.MeshStatus:
    return pb.MeshStatus(
        applied_version=s.applied_version,
        public_key=s.public_key,
        address=s.address,
        error=s.error,
        peers=[
            pb.MeshPeerStatus(
                node_id=p.node_id,
                public_key=p.public_key,
                endpoint=p.endpoint,
                last_handshake_age_s=p.last_handshake_age_s,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
                up=p.up,
            )
            for p in s.peers
        ],
    )


def mesh_status_from_pb(s: pb.MeshStatus) -> mesh.MeshStatus:
    return mesh.MeshStatus(
        applied_version=s.applied_version,
        public_key=s.public_key,
        address=s.address,
        error=s.error,
        peers=tuple(
            mesh.MeshPeerStatus(
                node_id=p.node_id,
                public_key=p.public_key,
                endpoint=p.endpoint,
                last_handshake_age_s=p.last_handshake_age_s,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
            )
            for p in s.peers
        ),
    )
