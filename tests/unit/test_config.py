from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config as load_agent_config
from controller.config import load_config as load_controller_config
from shared.config import parse_duration
from shared.domain import EdgeType
from shared.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_agent_config_from_file_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "agent:\n  node_id: mec-berlin-1\n  edge_type: mec\n  heartbeat_interval: 500ms\n"
        "  location: {latitude: 52.52, longitude: 13.40, country: DE}\n  labels: {zone: a}\n",
    )
    monkeypatch.setenv("NOVACRON_AGENT_CONTROLLER", "10.0.0.1:7700")
    config = load_agent_config(path, {"labels": {"tier": "gold"}, "node_id": None})
    assert config.node_id == "mec-berlin-1"
    assert config.edge_type is EdgeType.MEC
    assert config.heartbeat_interval == 0.5
    assert config.controller == "10.0.0.1:7700"
    assert config.labels == {"zone": "a", "tier": "gold"}
    assert config.location is not None and config.location.country == "DE"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agent:\n  nodeid: x\n", "agent.nodeid: unknown key"),
        ("agent:\n  edge_type: satellite\n", "agent.edge_type: 'satellite' is not one of"),
        ("agent:\n  heartbeat_interval: soon\n", "agent.heartbeat_interval: expected a duration"),
        ("agent:\n  location: {latitude: 95, longitude: 0}\n", "agent.location.latitude"),
        (
            "agent:\n  location: {latitude: 1, longitude: 2, country: germany}\n",
            "agent.location.country",
        ),
        ("agent:\n  capacity: {vcpus: -1}\n", "agent.capacity.vcpus"),
        ("agent:\n  node_id: Not_Valid\n", "agent.node_id"),
        ("agent: [1, 2]\n", "agent: expected a mapping"),
        ("agent:\n  node_id: [\n", "not valid YAML"),
    ],
)
def test_bad_agent_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_agent_config(write(tmp_path, text), {})


def test_controller_config_validation(tmp_path: Path) -> None:
    config = load_controller_config(write(tmp_path, "controller:\n  listen: 0.0.0.0:9000\n"), {})
    assert config.listen == "0.0.0.0:9000"
    with pytest.raises(ConfigError, match=r"controller\.listen"):
        load_controller_config(None, {"listen": "nowhere"})
    with pytest.raises(ConfigError, match=r"controller\.deploy_timeout: must be > 0"):
        load_controller_config(None, {"deploy_timeout": "0s"})
    with pytest.raises(ConfigError, match="cannot read config"):
        load_controller_config(tmp_path / "missing.yaml", {})


@pytest.mark.parametrize(
    ("value", "seconds"), [(5, 5.0), ("100ms", 0.1), ("2.5s", 2.5), ("1m", 60.0)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == seconds


def test_shipped_example_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "packaging"
    agent = load_agent_config(root / "agent.example.yaml", {})
    assert agent.node_id == "mec-berlin-1"
    assert agent.edge_type is EdgeType.MEC
    controller = load_controller_config(root / "controller.example.yaml", {})
    assert not controller.insecure
    assert controller.failure_detector.disconnect_lost_after == 10.0
    assert controller.failure_detector.lost_phi == 8.0
    assert (controller.failover.replace_after, controller.failover.stop_after) == (0.0, 30.0)


def test_failover_durations_take_never_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("controller:\n  failover:\n    replace_after: never\n    stop_after: 5s\n")
    failover = load_controller_config(path, {}).failover
    assert failover.replace_after == float("inf") and failover.stop_after == 5.0
    path.write_text("controller:\n  failover:\n    stop_after: soon\n")
    with pytest.raises(ConfigError, match=r"controller\.failover\.stop_after"):
        load_controller_config(path, {})
    path.write_text("controller:\n  failover:\n    max_per_interval: 0\n")
    with pytest.raises(ConfigError, match=r"controller\.failover"):
        load_controller_config(path, {})


def test_a_bad_failure_detector_key_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("controller:\n  failure_detector:\n    suspect_phi: 9\n    lost_phi: 8\n")
    with pytest.raises(ConfigError, match=r"controller\.failure_detector"):
        load_controller_config(path, {})


# The spec's block without the keys that are refused (tests/unit/test_config_spec.py walks
# every key as written)
SPEC_EDGE_COMPUTING = """
controller:
  insecure: false  # the spec's require_tls: true refuses --insecure
edge_computing:
  placement_weights:
    latency: 0.5
    resources: 0.3
    cost: 0.2
    proximity: 0.0
  max_edge_latency: 100ms
  min_edge_resources:
    min_cpu_cores: 2
    min_memory_mb: 2048
    min_storage_gb: 20
  migration_timeout: 5s
  migration_bandwidth: 1000000000
  enable_mec: true
  enable_iot_gateway: true
  enable_cdn_edge: true
  enable_telco_edge: false
  target_provision_time: 30s
  target_migration_time: 5s
  target_placement_time: 100ms
  max_edge_vms_per_node: 10
  edge_resource_buffer: 0.15
  edge_mesh_enabled: true
  vpn_enabled: true
  offline_mode: false
  health_check_interval: 15s
  require_tls: true
  allowed_regions: ["*"]
  data_residency_rules:
    - "EU:GDPR"
    - "US:CCPA"
"""


def test_the_specs_edge_computing_block_configures_placement(tmp_path: Path) -> None:
    config = load_controller_config(write(tmp_path, SPEC_EDGE_COMPUTING), {})
    profile = config.placement_profile()
    assert profile.weights == {"latency": 0.5, "resources": 0.3, "cost": 0.2, "proximity": 0.0}
    assert profile.max_edge_latency_ms == pytest.approx(100.0)
    assert profile.edge_resource_buffer == 0.15
    assert profile.max_edge_vms_per_node == 10
    assert config.edge_computing.data_residency_rules == ("EU:GDPR", "US:CCPA")
    assert config.tls.require_tls


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("  placement_weights: {latency: -0.5}\n", "edge_computing.placement_weights.latency"),
        ("  placement_weights: {latency: .nan}\n", "edge_computing.placement_weights.latency"),
        (
            "  placement_weights: {speed: 1}\n",
            "edge_computing.placement_weights.speed: unknown key",
        ),
        ("  placement_filters: [ready, telepathy]\n", "unknown filter 'telepathy'"),
        ("  max_edge_latency: fast\n", "edge_computing.max_edge_latency: expected a duration"),
        ("  edge_resource_buffer: 1.5\n", "edge_computing.edge_resource_buffer: must be in"),
        ("  placement_mode: random\n", "edge_computing.placement_mode: 'random' is not one of"),
    ],
)
def test_bad_placement_config_is_refused_at_start(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_controller_config(write(tmp_path, "edge_computing:\n" + block), {})


def test_a_capacity_above_what_libvirt_reports_is_refused_unless_overcommit_is_said() -> None:
    from agent.config import CapacityConfig

    CapacityConfig(vcpus=8, memory_mib=4096).check_against(8, 8192)
    with pytest.raises(ConfigError, match=r"agent.capacity.vcpus: 4294967295 is more than"):
        CapacityConfig(vcpus=2**32 - 1).check_against(8, 8192)
    with pytest.raises(ConfigError, match="memory_mib: 16384 is more than libvirt reports"):
        CapacityConfig(memory_mib=16384).check_against(8, 8192)
    CapacityConfig(vcpus=64, beyond_host=True).check_against(2, 2048)
