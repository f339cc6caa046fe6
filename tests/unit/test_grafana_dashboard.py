"""packaging/grafana/novacron-edge.json: every PromQL expression parses (promtool), and every
metric it names is exported by one of the daemons (the names seen in their collectors'
expositions); plus both expositions pass `promtool check metrics`."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.metrics_check import PROMTOOL, promtool_check, samples
from tests.unit.metrics_fixtures import agent_text, controller_text

DASHBOARD = Path(__file__).parents[2] / "packaging" / "grafana" / "novacron-edge.json"

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query, rows' panels included."""
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation
        if text[max(0, match.start() - 1)].isdigit():
            continue  # the exponent or unit of a number
        names.add(word)
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return set(samples(agent_text())) | set(samples(controller_text()))


def test_both_expositions_pass_promtool() -> None:
    promtool_check(agent_text())
    promtool_check(controller_text())


def test_every_metric_the_dashboard_uses_is_exported(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name: title for title, expr in exprs(dashboard) for name in metric_names(expr)}
    assert len(used) >= 15, sorted(used)  # the parser found the dashboard's metrics
    missing = {name: title for name, title in used.items() if name not in exported}
    assert not missing, f"not exported by either daemon: {missing}"


def test_every_expression_parses(tmp_path: Path) -> None:
    """As recording rules, which promtool parses with Prometheus's own PromQL parser."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {"record": f"dashboard:query{i}", "expr": expr}
        for i, (_, expr) in enumerate(sorted(exprs(dashboard)))
    ]
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_parser_finds_names_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, mode) (rate(a_seconds_bucket{x="y"}[1h]))) '
        "* on (instance) group_left (node) b_info > 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_info"}
    assert metric_names("not_exported_total") == {"not_exported_total"}


def test_a_missing_metric_is_named(exported: set[str]) -> None:
    """The check above can fail: a made-up name is not among the exported ones."""
    assert "novacron_vm_cpu_seconds_total" in exported
    assert "novacron_no_such_metric" not in exported
