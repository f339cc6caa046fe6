"""The /etc/novacron/*.yaml a package installs: every key of the example commented out, so each
node starts from the defaults (its own hostname as node id, not the example's) and still finds
every key documented in the file it edits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent.config import load_config as load_agent
from controller.config import load_config as load_controller

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def build_deb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_deb", PACKAGING / "build_deb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_deb", module)
    sys.path.insert(0, str(PACKAGING))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PACKAGING))
    return module


@pytest.mark.parametrize(
    ("short", "load"), [("agent", load_agent), ("controller", load_controller)]
)
def test_the_installed_file_sets_nothing_and_keeps_every_key(
    tmp_path: Path, short: str, load: object
) -> None:
    example = (PACKAGING / f"{short}.example.yaml").read_text()
    installed = tmp_path / f"{short}.yaml"
    installed.write_text(build_deb().commented_out(example))
    assert callable(load)
    assert load(installed, {}) == load(None, {})
    if short == "agent":
        assert "mec-berlin-1" in example  # the example's illustrative id ...
        assert "\n#  node_id: mec-berlin-1" in installed.read_text()  # ... is only a comment
    keys = [line.split(":")[0].strip() for line in example.splitlines() if line[:2] == "  "]
    text = installed.read_text()
    assert all(f"#  {key}" in text or f"#    {key}" in text for key in keys if key[:1] != "#")
