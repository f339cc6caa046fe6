"""Explanations: for each rejected node the filter that removed it and why; for each candidate
every scorer's raw and weighted value; and a one-line summary a person can act on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScoreTerm:
    name: str
    raw: float
    weight: float
    note: str

    @property
    def weighted(self) -> float:
        return self.raw * self.weight


@dataclass(frozen=True, slots=True)
class CandidateScore:
    node_id: str
    total: float
    terms: tuple[ScoreTerm, ...]
    latency_ms: float
    latency_estimated: bool
    distance_km: float | None

    def one_line(self) -> str:
        parts = " + ".join(
            f"{t.name} {t.weighted:.3f} ({t.note})" for t in self.terms if t.weight > 0
        )
        return f"{self.node_id} score {self.total:.3f} = {parts}"


@dataclass(frozen=True, slots=True)
class Rejection:
    node_id: str
    filter: str
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    node_id: str | None
    candidates: tuple[CandidateScore, ...]  # best first, at most k
    rejections: tuple[Rejection, ...]
    summary: str
    nodes_total: int
    nodes_feasible: int
    decision_ms: float = 0.0

    def placement_reason(self) -> str:
        """What the controller records on the VM: why this node, and the runner-up."""
        if not self.candidates:
            return self.summary
        best = self.candidates[0].one_line()
        runner = self.candidates[1] if len(self.candidates) > 1 else None
        tail = f"; runner-up {runner.node_id} {runner.total:.3f}" if runner else ""
        return f"{best}; {self.nodes_feasible}/{self.nodes_total} nodes fit{tail}"
