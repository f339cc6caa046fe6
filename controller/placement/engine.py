"""The scored placement engine: filters, weighted scores, reservation and explanations.

Fast path: static filters (image, arch, edge type, country, labels, cost, latency) and the
per-row latency depend only on the request's constraints, so they are cached per constraint
set; each decision then costs the dynamic filters (ready, resources, spread), the scores of the
survivors and an argmax. Explanations are built only when asked for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.placement.explain import CandidateScore, Explanation, Rejection, ScoreTerm
from controller.placement.filters import FILTERS, Filter
from controller.placement.profile import PlacementProfile
from controller.placement.request import Context, PlacementRequest
from controller.placement.scores import SCORERS
from controller.placement.table import BOOL, NodeTable
from shared.domain import VMSpec
from shared.errors import ResourceExhausted

F64 = npt.NDArray[np.float64]
IDX = npt.NDArray[np.intp]
# Static evaluations cached per constraint set, bounded by rows held (memory, and fresh
# allocations page-faulting at 100k nodes cost more than the cache saves).
CACHE_ROWS = 1_000_000
TIE = 1e-12


@dataclass(frozen=True, slots=True)
class _Static:
    ctx: Context
    masks: dict[str, BOOL]  # each static filter's pass-mask over ctx.rows
    passed: BOOL  # all of them
    total: F64  # weighted sum of the static scores over ctx.rows


@dataclass(frozen=True, slots=True)
class Evaluation:
    ctx: Context
    static: _Static
    alive: BOOL  # passes every filter, over ctx.rows
    totals: F64  # weighted score over ctx.rows; -inf where not alive
    best: int  # slice-relative row of the winner, or -1

    @property
    def node_id(self) -> str | None:
        if self.best < 0:
            return None
        node_id: str = self.ctx.table.ids[self.ctx.rows.start + self.best]
        return node_id

    @property
    def candidates(self) -> IDX:
        return np.flatnonzero(self.alive)


@dataclass(slots=True)
class _Hot:
    """The last decision of `place`, kept so that the next identical request only re-scores
    the one row its reservation changed."""

    request: PlacementRequest
    table: NodeTable
    version: int
    evaluation: Evaluation


class ScoredEngine:
    def __init__(self, profile: PlacementProfile | None = None) -> None:
        self.profile = profile or PlacementProfile()
        self.filters: list[Filter] = [FILTERS[name] for name in self.profile.filters]
        self._static_filters = [f for f in self.filters if f.static]
        self._dynamic_filters = [f for f in self.filters if not f.static]
        weighted = [(SCORERS[n], w) for n, w in self.profile.weights.items() if w > 0]
        self._static_scores = [(s, w) for s, w in weighted if s.static]
        self._dynamic_scores = [(s, w) for s, w in weighted if not s.static]
        self._cache: OrderedDict[tuple[object, ...], _Static] = OrderedDict()
        self._cache_table: NodeTable | None = None
        self._hot: _Hot | None = None

    def request(self, spec: VMSpec) -> PlacementRequest:
        p = self.profile
        return PlacementRequest.from_spec(
            spec,
            max_latency_ms=p.max_edge_latency_ms,
            mode=p.mode,
            buffer=p.edge_resource_buffer,
            max_vms_per_node=p.max_edge_vms_per_node,
        )

    # -- deciding ----------------------------------------------------------------------------

    def evaluate(self, table: NodeTable, request: PlacementRequest) -> Evaluation:
        static = self._static(table, request)
        ctx = static.ctx.for_request(request)
        alive, totals = self._dynamic(ctx, static.passed, static.total)
        return Evaluation(ctx, static, alive, totals, self._best(table, ctx, totals))

    def _dynamic(self, ctx: Context, passed: BOOL, static_total: F64) -> tuple[BOOL, F64]:
        alive = passed.copy()
        for f in self._dynamic_filters:
            alive &= f.mask(ctx)
        totals = static_total.copy()
        for scorer, weight in self._dynamic_scores:
            part = scorer.score(ctx)
            part *= weight
            totals += part
        totals[~alive] = -np.inf
        return alive, totals

    @staticmethod
    def _best(table: NodeTable, ctx: Context, totals: F64) -> int:
        if len(totals) == 0:
            return -1
        best = int(np.argmax(totals))
        top = totals[best]
        if top == -np.inf:
            return -1
        ties = np.flatnonzero(totals >= top - TIE)
        if len(ties) > 1:  # deterministic: the lowest node id among equal scores
            best = int(ties[int(np.argmin(table.id_rank[ctx.rows.start + ties]))])
        return best

    def place(self, table: NodeTable, request: PlacementRequest, reserve: bool = True) -> str:
        """The chosen node id, its capacity reserved in `table`; ResourceExhausted otherwise."""
        evaluation = self._incremental(table, request) or self.evaluate(table, request)
        node_id = evaluation.node_id
        if node_id is None:
            self._hot = None
            raise ResourceExhausted(self.explain(evaluation, k=0, max_rejections=0).summary)
        if reserve:
            table.reserve(table.index[node_id], request.need, request.constraints.spread_group)
            self._hot = _Hot(request, table, table.dynamic_version, evaluation)
        return node_id

    def _incremental(self, table: NodeTable, request: PlacementRequest) -> Evaluation | None:
        """Same request again, and nothing changed but our own reservation: re-score one row."""
        hot = self._hot
        if (
            hot is None
            or hot.table is not table
            or hot.version != table.dynamic_version
            or hot.request != request
            or request.constraints.spread_group  # a group booking changes other rows' masks
        ):
            return None
        ev = hot.evaluation
        rel = ev.best
        one = ev.ctx.narrowed(rel)
        alive, totals = self._dynamic(
            one, ev.static.passed[rel : rel + 1], ev.static.total[rel : rel + 1]
        )
        ev.alive[rel] = alive[0]
        ev.totals[rel] = totals[0]
        best = self._best(table, ev.ctx, ev.totals)
        return Evaluation(ev.ctx, ev.static, ev.alive, ev.totals, best)

    def decide(self, table: NodeTable, request: PlacementRequest, k: int = 3) -> Explanation:
        """Evaluate and explain (no reservation): what PlaceVM and RecommendPlacement return."""
        started = time.perf_counter()
        evaluation = self.evaluate(table, request)
        explanation = self.explain(evaluation, k)
        elapsed = (time.perf_counter() - started) * 1000
        return Explanation(
            node_id=explanation.node_id,
            candidates=explanation.candidates,
            rejections=explanation.rejections,
            summary=explanation.summary,
            nodes_total=explanation.nodes_total,
            nodes_feasible=explanation.nodes_feasible,
            decision_ms=elapsed,
        )

    def _static(self, table: NodeTable, request: PlacementRequest) -> _Static:
        if self._cache_table is not table:
            self._cache.clear()
            self._cache_table = table
        key = request.static_key()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        ctx = Context.build(table, request)
        masks = {f.name: f.mask(ctx) for f in self._static_filters}
        passed = np.ones(ctx.rows.stop - ctx.rows.start, dtype=bool)
        for mask in masks.values():
            passed &= mask
        total = np.zeros(len(passed))
        for scorer, weight in self._static_scores:
            part = scorer.score(ctx)
            part *= weight
            total += part
        static = _Static(ctx, masks, passed, total)
        self._cache[key] = static
        while len(self._cache) > 1 and len(self._cache) * len(passed) > CACHE_ROWS:
            self._cache.popitem(last=False)
        return static

    # -- explaining --------------------------------------------------------------------------

    def explain(
        self, evaluation: Evaluation, k: int = 3, max_rejections: int = 1000
    ) -> Explanation:
        ctx = evaluation.ctx
        table, rows = ctx.table, ctx.rows
        rejected_by: list[tuple[Filter, IDX]] = []
        alive = np.ones(rows.stop - rows.start, dtype=bool)
        for f in self.filters:
            mask = evaluation.static.masks.get(f.name)
            if mask is None:
                mask = f.mask(ctx)
            out = np.flatnonzero(alive & ~mask) + rows.start
            if len(out):
                rejected_by.append((f, out))
            alive &= mask
        pruned = np.concatenate(
            [np.arange(0, rows.start), np.arange(rows.stop, len(table))]
        ).astype(np.intp)
        latency = FILTERS["latency"]
        if len(pruned):
            rejected_by.append((latency, pruned))

        rejections: list[Rejection] = []
        for f, out in rejected_by:
            for row in out[: max(0, max_rejections - len(rejections))]:
                rejections.append(Rejection(table.ids[int(row)], f.name, f.reason(ctx, int(row))))
        total, feasible = len(table), int(evaluation.alive.sum())
        detail = ", ".join(_grouped(g for f, out in rejected_by for g in f.summary(ctx, out)))
        if evaluation.best < 0:
            summary = f"0/{total} nodes fit" + (f": {detail}" if detail else "")
            if total == 0:
                summary = "0/0 nodes fit: no nodes registered"
        else:
            summary = f"placed on {evaluation.node_id}: {feasible}/{total} nodes fit" + (
                f"; rejected: {detail}" if detail else ""
            )
        return Explanation(
            node_id=evaluation.node_id,
            candidates=self._top(evaluation, k),
            rejections=tuple(rejections),
            summary=summary,
            nodes_total=total,
            nodes_feasible=feasible,
        )

    def _top(self, evaluation: Evaluation, k: int) -> tuple[CandidateScore, ...]:
        if k <= 0 or evaluation.best < 0:
            return ()
        ctx, totals = evaluation.ctx, evaluation.totals
        cands = evaluation.candidates
        ranks = ctx.table.id_rank[ctx.rows.start + cands]
        order = cands[np.lexsort((ranks, -totals[cands]))[:k]]
        raw = {name: SCORERS[name].score(ctx)[order] for name in self.profile.weights}
        out = []
        for j, rel in enumerate(int(r) for r in order):
            terms = tuple(
                ScoreTerm(name, float(raw[name][j]), weight, SCORERS[name].note(ctx, rel))
                for name, weight in self.profile.weights.items()
            )
            out.append(
                CandidateScore(
                    node_id=ctx.table.ids[ctx.rows.start + rel],
                    total=float(totals[rel]),
                    terms=terms,
                    latency_ms=float(ctx.latency_ms[rel]),
                    latency_estimated=bool(ctx.latency_estimated[rel]),
                    distance_km=None if ctx.distance_km is None else float(ctx.distance_km[rel]),
                )
            )
        return tuple(out)


def _grouped(groups: Iterable[tuple[int, str]]) -> list[str]:
    """Equal phrases (nodes pruned by distance, nodes measured too slow) merged, then the
    biggest groups first: "5 insufficient memory (...), 4 latency > 50 ms"."""
    counts: dict[str, int] = {}
    for count, phrase in groups:
        counts[phrase] = counts.get(phrase, 0) + count
    order = list(counts)
    return [f"{counts[p]} {p}" for p in sorted(order, key=lambda p: (-counts[p], order.index(p)))]
