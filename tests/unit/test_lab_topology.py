"""The lab topology: shipped files, the geographic delay formula, and errors naming the bad key."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.topology import (
    ACCESS_MS,
    FIBER_KM_PER_MS,
    derived_delay_ms,
    haversine_km,
    load_topology,
    parse_topology,
)
from shared.domain import EdgeType
from shared.errors import ConfigError

BERLIN = (52.52, 13.405)
PARIS = (48.8566, 2.3522)


def minimal(**site: Any) -> dict[str, Any]:
    base = {
        "id": "mec-a",
        "edge_type": "mec",
        "city": "Berlin",
        "latitude": 52.52,
        "longitude": 13.405,
        "country": "DE",
    }
    return {
        "controller": {"city": "Frankfurt", "latitude": 50.11, "longitude": 8.68, "country": "DE"},
        "sites": [{**base, **site}],
    }


def test_haversine_berlin_paris() -> None:
    assert haversine_km(*BERLIN, *PARIS) == pytest.approx(878, abs=5)


def test_delay_is_access_latency_plus_fiber_distance() -> None:
    km = haversine_km(*BERLIN, *PARIS)
    got = derived_delay_ms(EdgeType.IOT, *BERLIN, *PARIS)
    assert got == pytest.approx(ACCESS_MS[EdgeType.IOT] + km / FIBER_KM_PER_MS, abs=0.01)
    assert derived_delay_ms(EdgeType.CLOUD, *PARIS, *PARIS) == ACCESS_MS[EdgeType.CLOUD]


def test_default_topology_spans_countries_continents_and_edge_types() -> None:
    topo = load_topology("default")
    assert len(topo.sites) >= 6
    assert len({s.country for s in topo.sites}) >= 4
    assert {"US", "DE"} <= {s.country for s in topo.sites}  # North America and Europe
    assert {EdgeType.CLOUD, EdgeType.MEC, EdgeType.CDN, EdgeType.IOT, EdgeType.ONPREM} <= {
        s.edge_type for s in topo.sites
    }
    iot = next(s for s in topo.sites if s.edge_type is EdgeType.IOT)
    assert iot.capacity.vcpus <= 4


def test_default_delays_follow_geography() -> None:
    topo = load_topology("default")
    for s in topo.all_sites:
        km = haversine_km(s.latitude, s.longitude, topo.hub_latitude, topo.hub_longitude)
        assert s.wan.delay_ms == pytest.approx(
            ACCESS_MS[s.edge_type] + km / FIBER_KM_PER_MS, abs=0.01
        ), s.id
    ny = topo.site("telco-newyork")
    assert ny.wan.delay_ms > 5 * topo.site("mec-berlin").wan.delay_ms


def test_small_topology_and_addresses() -> None:
    topo = load_topology("small")
    assert 2 <= len(topo.sites) <= 3
    net = ipaddress.IPv4Network(topo.subnet)
    addresses = [s.address for s in topo.all_sites] + [topo.mgmt_host_ip, topo.mgmt_controller_ip]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.IPv4Address(a) in net for a in addresses)
    assert topo.mgmt_network.prefixlen == 30
    assert all(s.netns.startswith("nclab-") for s in topo.all_sites)
    assert topo.site("iot-munich").wan.loss_pct == 2.0  # the YAML override wins


def test_override_keeps_other_derived_values() -> None:
    topo = parse_topology(minimal(wan={"delay_ms": 42}))
    wan = topo.sites[0].wan
    assert wan.delay_ms == 42
    assert wan.bandwidth_mbit == 1000.0


@pytest.mark.parametrize(
    ("site", "where"),
    [
        ({"country": "Germany"}, "topology.sites[0].country"),
        ({"latitude": 91}, "topology.sites[0].latitude"),
        ({"edge_type": "satellite"}, "topology.sites[0].edge_type"),
        ({"colour": "red"}, "topology.sites[0].colour"),
        ({"wan": {"loss_pct": 100}}, "topology.sites[0].wan.loss_pct"),
        ({"wan": {"bandwidth_mbit": 0}}, "topology.sites[0].wan.bandwidth_mbit"),
        ({"wan": {"delay": 3}}, "topology.sites[0].wan.delay"),
        ({"capacity": {"vcpus": -1}}, "topology.sites[0].capacity.vcpus"),
        ({"id": "Bad_Id"}, "topology.sites[0].id"),
        ({"id": "controller"}, "topology.sites[0].id"),
    ],
)
def test_bad_site_names_the_key(site: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(where)):
        parse_topology(minimal(**site))


def test_duplicate_ids_and_missing_parts_are_refused() -> None:
    body = minimal()
    body["sites"].append(dict(body["sites"][0]))
    with pytest.raises(ConfigError, match=r"topology\.sites\[1\]\.id: 'mec-a' is used twice"):
        parse_topology(body)
    with pytest.raises(ConfigError, match=r"topology\.sites: at least one"):
        parse_topology({**minimal(), "sites": []})
    with pytest.raises(ConfigError, match=r"topology\.controller: required"):
        parse_topology({"sites": minimal()["sites"]})
    with pytest.raises(ConfigError, match=r"topology\.subnet"):
        parse_topology({**minimal(), "subnet": "10.0.0.0/30"})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"topology": minimal(country="de")}))
    with pytest.raises(ConfigError, match=rf"{path}: topology\.sites\[0\]\.country"):
        load_topology(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")


def test_loaded_topology_remembers_its_file() -> None:
    assert load_topology("small").source.endswith("lab/topologies/small.yaml")
