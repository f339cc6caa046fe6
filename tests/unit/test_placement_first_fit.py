from __future__ import annotations

import pytest

from controller.placement import Candidate, FirstFit
from shared.domain import Capacity, NodeCondition, VMSpec
from shared.errors import ResourceExhausted

SPEC = VMSpec(name="vm", image="tiny", vcpus=2, memory_mib=1024)


def node(
    node_id: str,
    *,
    ready: bool = True,
    vcpus: int = 4,
    mem: int = 2048,
    used: int = 0,
    images: frozenset[str] = frozenset({"tiny"}),
) -> Candidate:
    return Candidate(
        node_id=node_id,
        condition=NodeCondition.READY if ready else NodeCondition.NOT_READY,
        capacity=Capacity(vcpus=vcpus, memory_mib=mem),
        allocated=Capacity(memory_mib=used),
        images=images,
    )


def test_first_fitting_node_in_id_order_wins() -> None:
    decision = FirstFit().place(SPEC, [node("c"), node("b", mem=512), node("a", ready=False)])
    assert decision.node_id == "c"
    assert [(r.node_id, r.reason) for r in decision.rejections] == [
        ("a", "not ready"),
        ("b", "insufficient memory (need 1024 MiB, free 512)"),
    ]


def test_allocated_capacity_counts() -> None:
    with pytest.raises(ResourceExhausted) as info:
        FirstFit().place(SPEC, [node("a", used=1536)])
    assert str(info.value) == "0/1 nodes fit: a: insufficient memory (need 1024 MiB, free 512)"


def test_every_rejection_is_named() -> None:
    with pytest.raises(ResourceExhausted) as info:
        FirstFit().place(
            SPEC,
            [node("a", vcpus=1), node("b", images=frozenset({"other"})), node("c", ready=False)],
        )
    assert str(info.value) == (
        "0/3 nodes fit: a: insufficient vcpus (need 2, free 1); "
        "b: image 'tiny' not present; c: not ready"
    )


def test_no_nodes() -> None:
    with pytest.raises(ResourceExhausted, match="no nodes registered"):
        FirstFit().place(SPEC, [])
