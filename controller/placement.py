"""The placement interface, and first fit: the simplest engine that honours it.

The columnar, scored engine (issue #4) implements the same `PlacementEngine` protocol. Engines are
pure: they see a snapshot of candidates and return a decision; the caller reserves the capacity
(by recording the VM on the chosen node) before any await, so two decisions never oversubscribe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.domain import Capacity, NodeCondition, VMSpec
from shared.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: str
    condition: NodeCondition
    capacity: Capacity
    allocated: Capacity
    images: frozenset[str]

    @property
    def free(self) -> Capacity:
        return self.capacity - self.allocated


@dataclass(frozen=True, slots=True)
class Rejection:
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    node_id: str
    rejections: tuple[Rejection, ...]


class PlacementEngine(Protocol):
    def place(self, spec: VMSpec, candidates: Sequence[Candidate]) -> Decision:
        """The chosen node, or ResourceExhausted naming why each node was rejected."""
        ...


def rejection_reason(spec: VMSpec, node: Candidate) -> str | None:
    """Why `node` cannot take `spec`, or None if it can."""
    if node.condition is not NodeCondition.READY:
        return "not ready"
    if spec.image not in node.images:
        return f"image {spec.image!r} not present"
    free = node.free
    if free.vcpus < spec.vcpus:
        return f"insufficient vcpus (need {spec.vcpus}, free {free.vcpus})"
    if free.memory_mib < spec.memory_mib:
        return f"insufficient memory (need {spec.memory_mib} MiB, free {free.memory_mib})"
    return None


def exhausted_message(total: int, rejections: Sequence[Rejection]) -> str:
    detail = "; ".join(f"{r.node_id}: {r.reason}" for r in rejections)
    return f"0/{total} nodes fit" + (f": {detail}" if detail else " (no nodes registered)")


class FirstFit:
    """Takes the first node, in node-id order, that passes every check."""

    def place(self, spec: VMSpec, candidates: Sequence[Candidate]) -> Decision:
        rejections: list[Rejection] = []
        for node in sorted(candidates, key=lambda c: c.node_id):
            reason = rejection_reason(spec, node)
            if reason is None:
                return Decision(node_id=node.node_id, rejections=tuple(rejections))
            rejections.append(Rejection(node.node_id, reason))
        raise ResourceExhausted(exhausted_message(len(candidates), rejections))
