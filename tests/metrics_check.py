"""Scraping a /metrics endpoint for real and checking it with Prometheus's own linter."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = "/usr/bin/promtool"  # Debian's `prometheus` package (scripts/bootstrap installs it)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def promtool_check(text: str) -> None:
    """`promtool check metrics` on the exposition: lint problems fail the test."""
    promtool = shutil.which("promtool") or PROMTOOL
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"promtool check metrics:\n{done.stdout}{done.stderr}"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] (names as exposed: `_total`, `_bucket`, ...)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The one sample `name` with these labels (a subset), else None."""
    matching = [v for got, v in samples(text).get(name, []) if labels.items() <= got.items()]
    assert len(matching) <= 1, f"{name}{labels}: {len(matching)} samples"
    return matching[0] if matching else None
