"""The short CI version of `bench/lossy_soak.py` (10 minutes, figures in docs/benchmarks.md):
90 s of a 30 % loss uplink at the default 5 s heartbeat and failover policy. The node is never
declared lost, its VM never failed over, and it never pauses itself: the second contact path
(agent/contact_check.py, docs/failover.md) confirms contact when either half of the session's
TCP stream stalls."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lossy_soak import HEARTBEAT_S, LOSSY, soak
from lab.lab import Lab
from tests.conftest import require_backend
from tests.system.conftest import clear_stale_lab_in_ci, lab_backend_problem, lab_state_dir

pytestmark = pytest.mark.lab

SOAK_S = 90.0


@pytest.fixture(scope="module")
def lossy_lab(tiny_image_dir: Path) -> Iterator[Lab]:
    problem = lab_backend_problem()
    require_backend(not problem, problem)
    clear_stale_lab_in_ci()
    lab = Lab("lossy", lab_state_dir(), images_dir=tiny_image_dir, heartbeat_s=HEARTBEAT_S)
    try:
        lab.up(timeout_s=180)
        yield lab
    finally:
        keep = os.environ.get("NOVACRON_KEEP_LAB_LOGS")
        if keep:  # as the small lab's fixture does
            shutil.copytree(lab.state_dir / "logs", Path(keep), dirs_exist_ok=True)
        lab.down()


def test_a_30_percent_loss_link_raises_no_false_alarm(lossy_lab: Lab) -> None:
    result = soak(lossy_lab, SOAK_S)
    print(f"\n{SOAK_S:g} s at 30 % loss: {result}")
    samples = result["samples"]
    assert isinstance(samples, dict)
    assert samples[LOSSY].get("lost", 0) == 0, result
    assert result["failovers"] == 0 and result["vm_node"] == LOSSY, result
    # never paused itself: by the gateway's own libvirtd (virsh event), and as shown
    assert result["suspended_events"] == 0, result
    assert "paused" not in result["vm_states"], result
    assert result["on_its_site"] == "running", result
