"""packaging/prometheus/alerts.yaml: valid for Prometheus (`promtool check rules`), each rule
fires when it should (`promtool test rules alerts_test.yaml`), and it has the controller's
rules with the controller's default thresholds. (That every metric it reads is exported is
checked against a real controller: tests/integration/test_events.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from controller.alerts import RULES, AlertsConfig
from tests.conftest import require_backend

RULES_DIR = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
ALERTS = RULES_DIR / "alerts.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    require_backend(found is not None, "promtool not installed (Debian's prometheus package)")
    assert found is not None
    return subprocess.run(
        [found, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def metric_names() -> set[str]:
    """Every novacron_ metric an expression reads (as written: _total, _count included)."""
    return {m for rule in rules() for m in re.findall(r"novacron_[a-z_]+", rule["expr"])}


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_rule_fires_in_promtools_unit_tests() -> None:
    done = promtool("test", "rules", "alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES_DIR / "alerts_test.yaml").read_text()))
    assert tested == {rule["alert"] for rule in rules()}


def test_the_file_has_the_controllers_rules_at_its_default_thresholds() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names == set(RULES) | {"NovacronControllerAlert"}
    for rule in rules():
        assert rule.get("labels", {}).get("severity", "") in ("warning", "critical", ""), rule
        if rule["alert"] in RULES and rule["alert"] != "CertificateExpiring":
            assert rule["labels"]["severity"] == RULES[rule["alert"]].value, rule["alert"]
    defaults = AlertsConfig()
    capacity = [r["expr"] for r in rules() if r["alert"] == "NodeOverCapacity"]
    assert len(capacity) == 2 and all(f"> {defaults.capacity_ratio:g}" in e for e in capacity)
    certificates = [r["expr"] for r in rules() if r["alert"] == "CertificateExpiring"]
    assert f"< {defaults.certificate_warning_days:g} * 86400" in certificates[0]
    window = f"[{defaults.failure_window / 3600:g}h]"
    failures = [r["expr"] for r in rules() if r["alert"] in ("MigrationFailed", "FailoverFailed")]
    assert len(failures) == 2 and all(window in e for e in failures)
