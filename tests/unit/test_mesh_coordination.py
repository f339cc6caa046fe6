from __future__ import annotations

import pytest

from controller.mesh import KEEPALIVE_S, Ipam, peer_set
from shared.errors import ResourceExhausted
from shared.mesh import MeshIdentity, MeshPeerStatus


def test_ipam_allocates_lowest_free_and_never_reuses_a_held_address() -> None:
    ipam = Ipam("10.250.0.0/29")
    assert [ipam.address(n) for n in ("a", "b", "c")] == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
    assert ipam.address("a") == "10.250.0.1"  # stable
    ipam.release("b")
    assert ipam.address("d") == "10.250.0.2"  # free again only once released
    assert ipam.cidr("a") == "10.250.0.1/29"


def test_ipam_exhaustion_is_a_clear_error() -> None:
    ipam = Ipam("10.250.0.0/30")
    ipam.address("a")
    ipam.address("b")
    with pytest.raises(ResourceExhausted, match=r"pool 10\.250\.0\.0/30 is exhausted"):
        ipam.address("c")


def test_ipam_keeps_addresses_it_was_given() -> None:
    ipam = Ipam("10.250.0.0/24", {"old": "10.250.0.1"})
    assert ipam.address("new") == "10.250.0.2"


def test_full_mesh_with_keepalive_and_no_pair_of_two_nats() -> None:
    members = {
        "a": MeshIdentity("KA", "10.0.0.1:51820"),
        "b": MeshIdentity("KB", "10.0.0.2:51820"),
        "nat1": MeshIdentity("KN1", "", behind_nat=True),
        "nat2": MeshIdentity("KN2", "", behind_nat=True),
    }
    ipam = Ipam("10.250.0.0/24")
    config = peer_set("a", members, ipam, version=7)
    assert config.version == 7
    assert config.address == f"{ipam.address('a')}/24"
    by_id = {p.node_id: p for p in config.peers}
    assert set(by_id) == {"b", "nat1", "nat2"}
    assert by_id["b"].persistent_keepalive_s == KEEPALIVE_S  # idle links still handshake
    assert by_id["b"].allowed_ips == (f"{ipam.address('b')}/32",)
    assert by_id["nat1"].persistent_keepalive_s == KEEPALIVE_S
    nat_view = {p.node_id for p in peer_set("nat1", members, ipam, 7).peers}
    assert nat_view == {"a", "b"}  # two NATed nodes cannot reach each other directly


def test_handshake_age_decides_up_or_down() -> None:
    assert MeshPeerStatus("b", "K", "", 10.0, 0, 0).up
    assert not MeshPeerStatus("b", "K", "", 181.0, 0, 0).up
    assert not MeshPeerStatus("b", "K", "", -1.0, 0, 0).up
