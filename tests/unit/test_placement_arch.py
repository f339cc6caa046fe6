"""Placement never sends an image to a node of another architecture: a node's image counts
only if it is built for the node's own arch, whatever the request says, and the refusal names
both architectures. Through the controller core, from the agents' own reports."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.core import events as ev
from controller.placement import NodeRow, NodeTable, ScoredEngine
from shared import commands as c
from shared.arch import runs_on
from shared.domain import Capacity, EdgeType, ImageInfo, PlacementConstraints, VMSpec
from shared.errors import ResourceExhausted
from tests.unit.core_driver import INSTALLATION, Driver, node_info


def hello(d: Driver, node_id: str, arch: str, *images: ImageInfo) -> None:
    d.sessions[node_id] = f"{node_id}-{d.sid()}"
    d.feed(
        ev.AgentHello,
        node_id=node_id,
        session_id=d.sessions[node_id],
        info=replace(node_info(node_id), arch=arch),
        images=images,
        vms=(),
        known_installation_id=INSTALLATION,
    )


def deploy(d: Driver, image: str, **placement: object) -> tuple[str, str]:
    """(node the CreateVM went to or '', error message or '')."""
    name = f"vm-{d.sid()}"
    spec = VMSpec(name, image, 1, 128, placement=PlacementConstraints(**placement))  # type: ignore[arg-type]
    before = len(d.commands(c.CreateVM))
    d.feed(ev.DeployRequested, spec=spec, stimulus_id=f"deploy-{name}")
    creates = d.commands(c.CreateVM)[before:]
    if creates:  # placed: the reply waits for the agent's answer
        return creates[0].node_id, ""
    reply = d.reply(f"deploy-{name}")
    assert isinstance(reply.error, ResourceExhausted), reply.error
    return "", str(reply.error)


ARM_TINY = ImageInfo("tiny", "kernel", "aarch64")
X86_TINY = ImageInfo("tiny", "kernel", "x86_64")


def test_the_same_image_name_goes_to_the_node_of_its_own_arch() -> None:
    d = Driver()
    hello(d, "gw-arm", "aarch64", ARM_TINY, ImageInfo("web", "kernel", "x86_64"))
    hello(d, "dc-x86", "x86_64", X86_TINY, ImageInfo("web", "kernel", "x86_64"))
    # "web" exists on both nodes but is x86_64 everywhere: only the x86 node may run it
    assert deploy(d, "web")[0] == "dc-x86"
    assert deploy(d, "tiny", arch="aarch64")[0] == "gw-arm"
    assert deploy(d, "tiny", arch="x86_64")[0] == "dc-x86"


def test_an_x86_image_on_an_arm_node_is_refused_with_the_reason() -> None:
    d = Driver()
    hello(d, "gw-arm", "aarch64", ARM_TINY, ImageInfo("tiny-x86", "kernel", "x86_64"))
    node, error = deploy(d, "tiny-x86")
    assert node == ""
    assert "with image 'tiny-x86' only for x86_64" in error, error
    assert deploy(d, "tiny")[0] == "gw-arm"


def test_an_arm_image_on_an_x86_node_is_refused_too() -> None:
    d = Driver()
    hello(d, "dc-x86", "x86_64", ImageInfo("tiny-arm", "kernel", "aarch64"))
    node, error = deploy(d, "tiny-arm")
    assert node == "" and "only for aarch64" in error, error


def test_the_per_node_reason_names_both_architectures() -> None:
    rows = [
        NodeRow(
            node_id="gw",
            ready=True,
            capacity=Capacity(4, 4096, 10),
            edge_type=EdgeType.MEC,
            arch="aarch64",
            images=frozenset({"tiny"}),
            foreign_images={"tiny-x86": "x86_64"},
        ),
        NodeRow(node_id="bare", ready=True, capacity=Capacity(4, 4096, 10)),
    ]
    engine = ScoredEngine()
    request = engine.request(VMSpec("v", "tiny-x86", 1, 128))
    explanation = engine.decide(NodeTable(rows), request, k=2)
    assert explanation.node_id is None
    reasons = {r.node_id: f"{r.filter}: {r.reason}" for r in explanation.rejections}
    assert reasons["gw"] == "image: image 'tiny-x86' is x86_64, node is aarch64", reasons
    assert reasons["bare"] == "image: image 'tiny-x86' not present", reasons


@pytest.mark.parametrize(
    ("image", "node", "ok"),
    [
        ("aarch64", "aarch64", True),
        ("arm64", "aarch64", True),
        ("x86_64", "aarch64", False),
        ("aarch64", "x86_64", False),
        ("", "aarch64", True),  # an image that names no arch: the node's own (older agents)
    ],
)
def test_runs_on(image: str, node: str, ok: bool) -> None:
    assert runs_on(image, node) is ok
