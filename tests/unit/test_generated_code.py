"""The checked-in generated code must be exactly what scripts/gen-proto makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "shared" / "pb").rglob("*.py*"))
    checked_in = sorted(p.relative_to(ROOT) for p in (ROOT / "shared" / "pb").rglob("*.py*"))
    assert fresh == checked_in, "generated files differ in name: run scripts/gen-proto"
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (ROOT / p).read_bytes()]
    assert not stale, f"generated code is stale, run scripts/gen-proto: {stale}"
