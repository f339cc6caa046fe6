"""The scored placement engine: filters, weighted scores, reservation and explanations.

Fast path: every plugin says what its result depends on (`Reads`) and which parts of the
request (`key`), so the engine keeps results across decisions: static masks and scores per key,
row-local dynamic ones (free capacity, readiness) per key with only the rows a reservation
changed recomputed, spatial ones (distance, latency) per user location. A fresh decision then
costs its latency figures, a few ANDs and adds over the latitude band, and an argmax.
Explanations are built only when asked for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from controller.placement.explain import CandidateScore, Explanation, Rejection, ScoreTerm
from controller.placement.filters import FILTERS, Filter
from controller.placement.profile import PlacementProfile
from controller.placement.request import Context, PlacementRequest, Reads
from controller.placement.scores import SCORERS, Scorer
from controller.placement.table import BOOL, NodeTable
from shared.domain import VMSpec
from shared.errors import ResourceExhausted

F64 = npt.NDArray[np.float64]
IDX = npt.NDArray[np.intp]
ANY = npt.NDArray[Any]
# Results kept across decisions, bounded in array cells: static/row-local ones are few per
# fleet, spatial ones one set per user location (fresh allocations page-faulting at 100k
# nodes cost more than a cache that large would save).
SHARED_CELLS = 8_000_000
SPATIAL_CELLS = 4_000_000
TIE = 1e-12
V = TypeVar("V")
log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Kept:
    mask: ANY | None  # a group's filters ANDed (None: the group has no filters)
    score: ANY | None  # its weighted scores summed (None: no scores)
    version: int  # table.dynamic_version it is up to date with


@dataclass(frozen=True, slots=True)
class _Group:
    """The plugins that depend on the same things (`Reads`): their results are kept, and
    refreshed, together."""

    reads: Reads
    filters: tuple[Filter, ...]
    scores: tuple[tuple[Scorer, float], ...]

    def key(self, request: PlacementRequest) -> Hashable:
        return (
            self.reads,
            tuple(f.key(request) for f in self.filters),
            tuple(s.key(request) for s, _ in self.scores),
        )

    def compute(self, ctx: Context) -> tuple[ANY | None, ANY | None]:
        mask: ANY | None = None
        for f in self.filters:
            part = f.mask(ctx)
            mask = part.copy() if mask is None else np.logical_and(mask, part, out=mask)
        score: ANY | None = None
        for scorer, weight in self.scores:
            values = scorer.score(ctx) * weight
            score = values if score is None else np.add(score, values, out=score)
        return mask, score


@dataclass(frozen=True, slots=True)
class Evaluation:
    ctx: Context
    alive: BOOL  # passes every filter, over the band
    shifted: F64  # weighted score + 1 where alive, 0 where not (argmax needs no masking)
    best: int  # band-relative row of the winner, or -1

    @property
    def totals(self) -> F64:
        """Weighted score over the band; -inf where a filter rejected the node."""
        return np.where(self.alive, self.shifted - 1.0, -np.inf)

    @property
    def node_id(self) -> str | None:
        if self.best < 0:
            return None
        node_id: str = self.ctx.table.ids[self.ctx.absolute(self.best)]
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
        weighted = [(SCORERS[n], w) for n, w in self.profile.weights.items() if w > 0]
        self._groups = [
            _Group(
                reads,
                tuple(f for f in self.filters if f.reads is reads),
                tuple((s, w) for s, w in weighted if s.reads is reads),
            )
            for reads in Reads
        ]
        self._groups = [g for g in self._groups if g.filters or g.scores]
        self._shared = _Lru[_Kept](SHARED_CELLS, _cells)
        self._spatial = _Lru[_Kept](SPATIAL_CELLS, _cells)
        self._cache_table: NodeTable | None = None
        self._hot: _Hot | None = None
        self._last_keys: tuple[PlacementRequest, list[Hashable]] | None = None

    def request(self, spec: VMSpec) -> PlacementRequest:
        p = self.profile
        return PlacementRequest.from_spec(
            spec,
            max_latency_ms=p.max_edge_latency_ms,
            mode=p.mode,
            buffer=p.edge_resource_buffer,
            max_vms_per_node=p.max_edge_vms_per_node,
            policy=p.site_policy,
        )

    # -- deciding ----------------------------------------------------------------------------

    def evaluate(self, table: NodeTable, request: PlacementRequest) -> Evaluation:
        ctx = Context.for_decision(self._bind(table), request)
        alive, shifted = self._combine(ctx)
        return Evaluation(ctx, alive, shifted, self._best(ctx, shifted))

    def _combine(self, ctx: Context, at: IDX | None = None) -> tuple[BOOL, F64]:
        """Every filter ANDed and every weighted score summed (+1) over `ctx.rows`, or only
        at its rows `at` (context-relative)."""
        alive: BOOL | None = None
        shifted: F64 | None = None
        keys = self._keys(ctx.request)
        narrow = None if at is None else Context(ctx.table, ctx.request, ctx.absolute_rows(at))
        for group, key in zip(self._groups, keys, strict=True):
            if narrow is not None and group.reads is Reads.FLEET:
                mask, score = group.compute(narrow)
            else:
                mask, score = self._result(group, key, ctx)
                if at is not None:
                    mask = None if mask is None else mask[at]
                    score = None if score is None else score[at]
            if mask is not None:
                alive = mask.copy() if alive is None else np.logical_and(alive, mask, out=alive)
            if score is not None:
                # float64 even where a part is float32; +1 keeps alive rows above dead ones
                shifted = score + 1.0 if shifted is None else np.add(shifted, score, out=shifted)
        if alive is None:
            alive = np.ones(ctx.size if at is None else len(at), dtype=bool)
        assert shifted is not None  # the profile insists on one positive weight
        shifted *= alive
        return alive, shifted

    def _keys(self, request: PlacementRequest) -> list[Hashable]:
        """Each group's cache key for `request` (the last request's kept: `place` in a loop
        asks for the same request again and again)."""
        last = self._last_keys
        if last is not None and (last[0] is request or last[0] == request):
            return last[1]
        keys = [group.key(request) for group in self._groups]
        self._last_keys = (request, keys)
        return keys

    def _result(self, group: _Group, key: Hashable, ctx: Context) -> tuple[ANY | None, ANY | None]:
        """The group's mask and weighted score over `ctx.rows`, from what earlier decisions
        kept where the group's plugins allow it. Shared arrays: callers copy to modify."""
        if group.reads is Reads.FLEET:
            return group.compute(ctx)
        if group.reads is Reads.SPATIAL:
            hit = self._spatial.get(key)
            if hit is None:
                hit = self._spatial.put(key, _Kept(*group.compute(ctx), version=0))
            return hit.mask, hit.score
        table = ctx.table
        kept = self._shared.get(key)
        if kept is None:
            whole = Context(table, ctx.request, slice(0, len(table)))
            kept = self._shared.put(key, _Kept(*group.compute(whole), table.dynamic_version))
        elif group.reads is Reads.ROW and kept.version != table.dynamic_version:
            changed = table.changed_since(kept.version)
            if changed is None:
                whole = Context(table, ctx.request, slice(0, len(table)))
                kept.mask, kept.score = group.compute(whole)
            else:
                touched = np.array(sorted(set(changed)), dtype=np.intp)
                mask, score = group.compute(Context(table, ctx.request, touched))
                if kept.mask is not None:
                    kept.mask[touched] = mask
                if kept.score is not None:
                    kept.score[touched] = score
            kept.version = table.dynamic_version
        rows = ctx.rows
        return (
            None if kept.mask is None else kept.mask[rows],
            None if kept.score is None else kept.score[rows],
        )

    def _bind(self, table: NodeTable) -> NodeTable:
        """Kept results belong to one table: a new table starts afresh."""
        if self._cache_table is not table:
            self._shared.clear()
            self._spatial.clear()
            self._cache_table = table
            self._hot = None
        return table

    @staticmethod
    def _best(ctx: Context, shifted: F64) -> int:
        if len(shifted) == 0:
            return -1
        best = int(np.argmax(shifted))
        top = shifted[best]
        if top <= 0.0:  # alive rows are >= 1
            return -1
        ties = np.flatnonzero(shifted >= top - TIE)
        if len(ties) > 1:  # deterministic: the lowest node id among equal scores
            rows = ctx.band.start + ties if isinstance(ctx.rows, slice) else ctx.rows[ties]
            ranks = ctx.table.id_rank[rows]
            best = int(ties[int(np.argmin(ranks))])
        return best

    def place(self, table: NodeTable, request: PlacementRequest, reserve: bool = True) -> str:
        """The chosen node id, its capacity reserved in `table`; ResourceExhausted otherwise."""
        self._bind(table)
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
        alive, shifted = self._combine(ev.ctx, np.array([ev.best], dtype=np.intp))
        ev.alive[ev.best] = alive[0]
        ev.shifted[ev.best] = shifted[0]
        best = self._best(ev.ctx, ev.shifted)
        return Evaluation(ev.ctx, ev.alive, ev.shifted, best)

    def batch_planned(self, decision_ms: float, vms: int) -> None:
        """The batch placer (controller.placement.batch) finished a plan of `vms` VMs: a hook
        for whoever times decisions (controller.metrics_records.TimedEngine)."""

    def decide(self, table: NodeTable, request: PlacementRequest, k: int = 3) -> Explanation:
        """Evaluate and explain (no reservation): what PlaceVM and RecommendPlacement return."""
        started = time.perf_counter()
        evaluation = self.evaluate(table, request)
        explanation = self.explain(evaluation, k)
        elapsed = (time.perf_counter() - started) * 1000
        if elapsed > self.profile.target_placement_ms:
            log.warning("placement over target_placement_time", ms=round(elapsed, 1))
        return Explanation(
            node_id=explanation.node_id,
            candidates=explanation.candidates,
            rejections=explanation.rejections,
            summary=explanation.summary,
            nodes_total=explanation.nodes_total,
            nodes_feasible=explanation.nodes_feasible,
            decision_ms=elapsed,
        )

    # -- explaining --------------------------------------------------------------------------

    def explain(
        self, evaluation: Evaluation, k: int = 3, max_rejections: int = 1000
    ) -> Explanation:
        ctx = evaluation.ctx
        table, rows = ctx.table, ctx.band
        rejected_by: list[tuple[Filter, IDX]] = []
        alive = np.ones(ctx.size, dtype=bool)
        for f in self.filters:
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
        ranks = ctx.table.id_rank[ctx.band.start + cands]
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
                    node_id=ctx.table.ids[ctx.absolute(rel)],
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


def _cells(kept: _Kept) -> int:
    return sum(len(a) for a in (kept.mask, kept.score) if a is not None)


class _Lru(Generic[V]):
    """Least recently used entries evicted once the values hold more than `limit` cells."""

    def __init__(self, limit: int, cells: Callable[[V], int]) -> None:
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._limit, self._cells, self._held = limit, cells, 0

    def get(self, key: Hashable) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        self._entries[key] = value
        self._held += self._cells(value)
        while len(self._entries) > 1 and self._held > self._limit:
            _, evicted = self._entries.popitem(last=False)
            self._held -= self._cells(evicted)
        return value

    def clear(self) -> None:
        self._entries.clear()
        self._held = 0
