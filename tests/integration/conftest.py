from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import Cluster
from tests.integration.libvirtd_faults import own_libvirtd  # noqa: F401 (a fixture)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.start_controller()
    try:
        yield c
    finally:
        await c.close()
