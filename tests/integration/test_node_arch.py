"""The node's architecture is the agent's own machine's, normalised, whatever the libvirtd it
drives runs on (an arm64 agent may drive an amd64 libvirtd; docs/arm64.md)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from shared.pb.v1 import edge_api_pb2 as epb
from tests.integration.harness import Cluster, make_fake_kernel_images


@pytest.mark.parametrize(("machine", "reported"), [("arm64", "aarch64"), ("x86_64", "x86_64")])
async def test_the_agent_reports_its_own_normalised_arch(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, reported: str
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    agent = await cluster.start_agent(
        "edge-a", cluster.test_uri("edge-a"), make_fake_kernel_images(tmp_path / "img")
    )
    assert agent.hypervisor.host_info().arch == "x86_64"  # libvirt's test driver says so
    node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-a"))
    assert node.info.arch == reported
