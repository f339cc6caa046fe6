"""The configuration's hard placement rules (controller/placement/site_filters.py), from the
YAML keys to a decision: min_edge_resources, the enable_* edge types, allowed_regions and data
residency. Each rejected node says which rule and key; the rules also hold for migrations and
for the slow-placement target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
import yaml

from controller.config import ControllerConfig, load_config
from controller.core import events as ev
from controller.placement import NodeRow, NodeTable, PlacementProfile, ScoredEngine
from shared import commands as c
from shared.domain import Capacity, EdgeType, Location, VMSpec
from shared.errors import ConfigError, FailedPrecondition
from tests.unit.core_driver import Driver, status

BERLIN = Location(52.52, 13.40, "DE")
PARIS = Location(48.86, 2.35, "FR")
OSLO = Location(59.91, 10.75, "NO")
NEW_YORK = Location(40.71, -74.01, "US")


def config(tmp_path: Path, edge: Mapping[str, object], policies: object = None) -> ControllerConfig:
    body: dict[str, object] = {"edge_computing": {"edge_resource_buffer": 0.0, **edge}}
    if policies is not None:
        body["policies"] = policies
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_config(path, {})


def node(node_id: str, location: Location | None = BERLIN, **kw: object) -> NodeRow:
    fields: dict[str, object] = {
        "ready": True,
        "capacity": Capacity(8, 8192, 100),
        "location": location,
        "edge_type": EdgeType.MEC,
        "images": frozenset({"tiny"}),
    }
    fields.update(kw)
    return NodeRow(node_id=node_id, **fields)  # type: ignore[arg-type]


def decide(
    profile: PlacementProfile, rows: list[NodeRow], labels: dict[str, str] | None = None
) -> tuple[str | None, dict[str, str], str]:
    engine = ScoredEngine(profile)
    vm = VMSpec("vm", "tiny", 1, 512, labels=labels or {})
    explanation = engine.decide(NodeTable(rows), engine.request(vm), k=len(rows))
    why = {r.node_id: f"{r.filter}: {r.reason}" for r in explanation.rejections}
    return explanation.node_id, why, explanation.summary


def test_a_node_below_min_edge_resources_is_never_chosen_and_says_why(tmp_path: Path) -> None:
    edge = {"min_edge_resources": {"min_cpu_cores": 4, "min_memory_mb": 4096, "min_storage_gb": 20}}
    profile = config(tmp_path, edge).placement_profile()
    small = node("a-small", capacity=Capacity(2, 8192, 100))  # would win the tie by id
    low_memory = node("b-lowmem", capacity=Capacity(8, 2048, 100))
    no_disk = node("c-nodisk", capacity=Capacity(8, 8192, 10))
    chosen, why, summary = decide(profile, [small, low_memory, no_disk, node("d-big")])
    assert chosen == "d-big"
    assert why["a-small"] == (
        "site: 2 vCPUs is below edge_computing.min_edge_resources.min_cpu_cores (4)"
    )
    assert "min_memory_mb (4096 MiB)" in why["b-lowmem"]
    assert "min_storage_gb (20 GiB)" in why["c-nodisk"]
    assert "1 vCPUs below edge_computing.min_edge_resources.min_cpu_cores" in summary
    # without the key the small node is a candidate: the key is what rejected it
    chosen, why, _ = decide(config(tmp_path, {}).placement_profile(), [small])
    assert chosen == "a-small" and not why


def test_a_node_of_a_disabled_edge_type_is_not_placed_on(tmp_path: Path) -> None:
    profile = config(tmp_path, {"enable_telco_edge": False}).placement_profile()
    rows = [node("a-telco", edge_type=EdgeType.TELCO), node("b-mec")]
    chosen, why, _ = decide(profile, rows)
    assert chosen == "b-mec"
    assert (
        why["a-telco"]
        == "site: edge type telco is disabled (edge_computing.enable_telco_edge: false)"
    )
    assert decide(profile, rows[:1])[0] is None


def test_allowed_regions_is_a_hard_filter_on_the_nodes_country(tmp_path: Path) -> None:
    profile = config(tmp_path, {"allowed_regions": ["EU"]}).placement_profile()
    rows = [
        node("a-ny", NEW_YORK),
        node("b-oslo", OSLO),
        node("c-nowhere", None),
        node("d-paris", PARIS),
    ]
    chosen, why, _ = decide(profile, rows)
    assert chosen == "d-paris"
    assert why["a-ny"].startswith("site: country US is outside edge_computing.allowed_regions")
    assert "country NO" in why["b-oslo"]  # Norway: EEA, not EU
    assert "country unknown" in why["c-nowhere"]
    eea = config(tmp_path, {"allowed_regions": ["EEA", "US"]}).placement_profile()
    assert decide(eea, rows[:2])[0] in ("a-ny", "b-oslo")
    everywhere = config(tmp_path, {"allowed_regions": ["*"]}).placement_profile()
    assert decide(everywhere, rows[:1])[0] == "a-ny"


def test_a_vm_naming_a_regulation_lands_only_where_its_rule_allows(tmp_path: Path) -> None:
    edge = {"data_residency_rules": ["EU:GDPR", "US:CCPA"]}
    profile = config(tmp_path, edge).placement_profile()
    rows = [node("a-ny", NEW_YORK), node("b-paris", PARIS)]
    assert decide(profile, rows, {"regulation": "GDPR"})[0] == "b-paris"
    chosen, why, _ = decide(profile, rows, {"regulation": "ccpa"})  # case does not matter
    assert chosen == "a-ny"
    assert why["b-paris"] == (
        "residency: country FR is not where CCPA allows "
        "([US], edge_computing.data_residency_rules[1])"
    )
    assert decide(profile, rows)[0] == "a-ny"  # a VM naming none: every node (tie by id)
    chosen, why, summary = decide(profile, rows, {"regulation": "HIPAA"})
    assert chosen is None and "no residency rule for regulation 'HIPAA'" in summary
    assert "rules: CCPA, GDPR" in why["a-ny"]


def test_a_data_residency_policy_narrows_its_regulation(tmp_path: Path) -> None:
    policies = {
        "data_residency": [
            {"name": "GDPR Compliance", "allowed_countries": ["DE"], "regulation": "GDPR"}
        ]
    }
    profile = config(tmp_path, {"data_residency_rules": ["EU:GDPR"]}, policies).placement_profile()
    chosen, why, _ = decide(
        profile, [node("a-paris", PARIS), node("b-berlin")], {"regulation": "GDPR"}
    )
    assert chosen == "b-berlin"
    assert (
        "[DE], edge_computing.data_residency_rules[0] and policies.data_residency 'GDPR Compliance'"
        in why["a-paris"]
    )


@pytest.mark.parametrize(
    ("edge", "message"),
    [
        ({"allowed_regions": ["Europe"]}, "edge_computing.allowed_regions[0]: 'Europe' is neither"),
        (
            {"data_residency_rules": ["GDPR"]},
            "edge_computing.data_residency_rules[0]: 'GDPR' is not REGION:REGULATION",
        ),
        ({"data_residency_rules": ["Mars:GDPR"]}, "edge_computing.data_residency_rules[0]: 'Mars'"),
        (
            {"min_edge_resources": {"min_cpu_cores": -1}},
            "min_edge_resources.min_cpu_cores: must be >= 0",
        ),
        ({"min_edge_resources": {"min_cpu_core": 2}}, "did you mean 'min_cpu_cores'?"),
        ({"migration_bandwidth": 1000}, "edge_computing.migration_bandwidth: 1000 bits/s"),
        ({"migration_timeout": "0s"}, "edge_computing.migration_timeout: must be > 0"),
        ({"target_placement_time": "0s"}, "edge_computing.target_placement_time: must be > 0"),
        (
            {"allowed_regions": ["EU"], "placement_filters": ["ready", "resources"]},
            "placement_filters: leaves out 'site'",
        ),
    ],
)
def test_bad_site_rules_are_refused_by_key(
    tmp_path: Path, edge: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        config(tmp_path, edge)


def configured(d: Driver, cfg: ControllerConfig) -> Driver:
    """The driver's core with this configuration's settings and placement profile."""
    d.core.state.settings = replace(d.core.state.settings, **cfg.edge_computing.core_settings())
    d.core.engine = ScoredEngine(cfg.placement_profile())
    return d


def test_migrations_get_the_configured_timeout_and_bandwidth(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"migration_timeout": "45s", "migration_bandwidth": 250_000_000})
    d = configured(Driver(), cfg)
    d.hello("n1")
    d.hello("n2")
    vm = d.deploy("web", "n1")
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", stimulus_id="m1")
    d.answer(
        d.sent(c.PrepareMigration, "n2"),
        migration_target=c.MigrationTarget("qemu+tcp://n2/system", "tcp://n2"),
    )
    sent = d.sent(c.Migrate, "n1")
    migrate = sent.envelope.command
    assert isinstance(migrate, c.Migrate)
    assert migrate.bandwidth_mbit == 250  # bits/s -> the Mbit/s cap the agent applies
    assert sent.envelope.deadline == pytest.approx(d.now + 45.0)
    assert migrate.time_budget_s == pytest.approx(35.0)  # the agent gives up 10 s before
    # a request that names its own still wins
    d2 = configured(Driver(), cfg)
    d2.hello("n1")
    d2.hello("n2")
    vm2 = d2.deploy("web", "n1")
    d2.feed(ev.MigrateRequested, name_or_id=vm2.id, target="n2", bandwidth_mbit=10, timeout=90.0)
    assert d2.migration(vm2.id).bandwidth_mbit == 10 and d2.migration(vm2.id).timeout_s == 90.0


def test_the_migration_target_respects_the_site_rules(tmp_path: Path) -> None:
    d = configured(Driver(), config(tmp_path, {"enable_mec": False}))
    d.hello("n1")
    d.hello("n2")  # both MEC (core_driver's nodes): deploy was before the rule
    d.core.engine = ScoredEngine(config(tmp_path, {}).placement_profile())
    vm = d.deploy("web", "n1")
    d.core.engine = ScoredEngine(config(tmp_path, {"enable_mec": False}).placement_profile())
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", stimulus_id="m")
    error = d.reply("m").error
    assert isinstance(error, FailedPrecondition)
    assert "node 'n2' cannot take VM 'web': site: edge type mec is disabled" in str(error)


def test_a_deploy_or_migration_slower_than_its_target_is_logged(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"target_provision_time": "30s", "target_migration_time": "5s"})
    d = configured(Driver(), cfg)
    d.hello("n1")
    d.hello("n2")
    with structlog.testing.capture_logs() as logs:
        fast = d.deploy("fast", "n1")
        d.feed(ev.DeployRequested, spec=VMSpec("slow", "tiny", 1, 128), stimulus_id="dep")
        create = d.sent(c.CreateVM)
        assert isinstance(create.envelope.command, c.CreateVM)
        d.now += 40.0  # the node took 40 s to start it
        d.answer(create, vm=status(create.envelope.command.vm_id, "slow", 1))
    over = [e for e in logs if e["event"] == "provision over edge_computing.target_provision_time"]
    assert [e["vm"] for e in over] == [d.reply("dep").value.id]  # type: ignore[attr-defined]
    assert over[0]["seconds"] == 40.0 and fast.id not in {e["vm"] for e in over}


def test_a_placement_slower_than_its_target_is_logged(tmp_path: Path) -> None:
    rows = [node(f"n{i}") for i in range(50)]
    slow = replace(config(tmp_path, {}).placement_profile(), target_placement_ms=1e-9)
    with structlog.testing.capture_logs() as logs:
        decide(slow, rows)
        decide(config(tmp_path, {"target_placement_time": "10s"}).placement_profile(), rows)
    over = [e for e in logs if e["event"] == "placement over target_placement_time"]
    assert len(over) == 1 and over[0]["log_level"] == "warning"
