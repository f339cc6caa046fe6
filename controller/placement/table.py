"""The candidate nodes as a columnar table (DESIGN principle 7): one numpy array per attribute.

Rows are sorted by latitude so that the nodes within a latitude band are one contiguous slice:
a request with a user location and a latency bound only ever touches that slice. Categorical
columns (country, arch, edge type, site) are small integer codes so filters are array compares.
Free capacity is mutable: `reserve`/`release` keep it exact between decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.placement.geo import ACCESS_RTT_MS, unit_vectors
from shared.domain import Capacity, EdgeType, Location

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
BOOL = npt.NDArray[np.bool_]
EDGE_TYPES = list(EdgeType)
CHANGE_LOG = 4096  # row changes remembered for incremental cache updates


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the table's builder sees it."""

    node_id: str
    ready: bool
    capacity: Capacity
    not_ready_reason: str = "not ready"  # or "cordoned", for explanations
    allocated: Capacity = field(default_factory=Capacity)
    vm_count: int = 0
    location: Location | None = None
    edge_type: EdgeType = EdgeType.ONPREM
    arch: str = "x86_64"
    labels: dict[str, str] = field(default_factory=dict)
    images: frozenset[str] = frozenset()  # those it can run: of its own arch
    foreign_images: dict[str, str] = field(default_factory=dict)  # name -> arch, not its own
    cost_per_hour: float = 0.0
    rtt_ms: tuple[float, float, float] | None = None  # measured p50, p95, p99
    groups: dict[str, int] = field(default_factory=dict)  # spread group -> VMs of it here


class Vocabulary:
    """Strings <-> small integer codes, so categorical filters are integer compares."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.words: list[str] = []

    def code(self, word: str) -> int:
        found = self._codes.get(word)
        if found is None:
            found = self._codes[word] = len(self.words)
            self.words.append(word)
        return found

    def lookup(self, word: str) -> int:
        """-1 if never seen: matches no row."""
        return self._codes.get(word, -1)


class NodeTable:
    def __init__(self, rows: Sequence[NodeRow]) -> None:
        ordered = sorted(
            rows, key=lambda r: (r.location.latitude if r.location else 0.0, r.node_id)
        )
        n = len(ordered)
        self.ids: list[str] = [r.node_id for r in ordered]
        self.index: dict[str, int] = {node_id: i for i, node_id in enumerate(self.ids)}
        self.id_rank: I32 = np.empty(n, dtype=np.int32)  # for deterministic tie-breaks
        self.id_rank[np.argsort(np.array(self.ids, dtype=object), kind="stable")] = np.arange(
            n, dtype=np.int32
        )
        self.ready: BOOL = np.array([r.ready for r in ordered], dtype=np.bool_)
        self.not_ready_reason: list[str] = [r.not_ready_reason for r in ordered]
        self.cap = np.array(
            [[r.capacity.vcpus, r.capacity.memory_mib, r.capacity.storage_gib] for r in ordered],
            dtype=np.float64,
        ).reshape(n, 3)
        self.alloc = np.array(
            [[r.allocated.vcpus, r.allocated.memory_mib, r.allocated.storage_gib] for r in ordered],
            dtype=np.float64,
        ).reshape(n, 3)
        self.vm_count: I32 = np.array([r.vm_count for r in ordered], dtype=np.int32)
        self.has_location: BOOL = np.array([r.location is not None for r in ordered], dtype=bool)
        self.lat: F64 = np.array([r.location.latitude if r.location else 0.0 for r in ordered])
        self.lon: F64 = np.array([r.location.longitude if r.location else 0.0 for r in ordered])
        # (3, n) float32 unit vectors: one contiguous row per axis for the distance kernel
        self.xyz: npt.NDArray[np.float32] = np.ascontiguousarray(
            unit_vectors(self.lat, self.lon).reshape(n, 3).T, dtype=np.float32
        )
        self.countries = Vocabulary()
        self.country: I32 = np.array(
            [self.countries.code(r.location.country_code if r.location else "") for r in ordered],
            dtype=np.int32,
        )
        self.arches = Vocabulary()
        self.arch: I32 = np.array([self.arches.code(r.arch) for r in ordered], dtype=np.int32)
        self.edge_type: I32 = np.array(
            [EDGE_TYPES.index(r.edge_type) for r in ordered], dtype=np.int32
        )
        self.access_ms: npt.NDArray[np.float32] = np.array(
            [ACCESS_RTT_MS[r.edge_type] for r in ordered], dtype=np.float32
        )
        self.sites = Vocabulary()
        self.site: I32 = np.array(
            [self.sites.code(r.labels.get("site", r.node_id)) for r in ordered], dtype=np.int32
        )
        self.cost: F64 = np.array([r.cost_per_hour for r in ordered])
        self.rtt: F64 = np.array(
            [r.rtt_ms if r.rtt_ms else (np.nan, np.nan, np.nan) for r in ordered]
        ).reshape(n, 3)
        self.max_cost = float(self.cost.max()) if n else 0.0  # fleet-wide: stable cost scores
        self._code_masks: dict[tuple[str, tuple[int, ...]], BOOL] = {}
        self._labels: list[dict[str, str]] = [r.labels for r in ordered]
        self._label_masks: dict[tuple[str, str], BOOL] = {}
        self._images: list[frozenset[str]] = [r.images for r in ordered]
        self._image_masks: dict[str, BOOL] = {}
        self._foreign_images: list[dict[str, str]] = [r.foreign_images for r in ordered]
        self.group_counts: dict[str, I32] = {}
        for i, r in enumerate(ordered):
            for group, count in r.groups.items():
                self._group(group)[i] = count
        self._free: dict[float, F64] = {}  # head-room buffer -> (3, n) free vcpus/MiB/GiB
        self._inv_usable: dict[float, F64] = {}
        self.dynamic_version = 0  # bumped by every reserve/release/readiness change
        self._changed: list[int] = []  # row changed by version _log_base + i + 1
        self._log_base = 0

    def __len__(self) -> int:
        return len(self.ids)

    # -- derived masks, built once per distinct value -------------------------------------

    def label_mask(self, key: str, value: str) -> BOOL:
        mask = self._label_masks.get((key, value))
        if mask is None:
            mask = np.array([labels.get(key) == value for labels in self._labels], dtype=bool)
            self._label_masks[(key, value)] = mask
        return mask

    def foreign_image_arch(self, row: int, image: str) -> str:
        """The arch of `image` where the node at `row` has it for another arch, else ''."""
        return self._foreign_images[row].get(image, "")

    def image_mask(self, image: str) -> BOOL:
        mask = self._image_masks.get(image)
        if mask is None:
            mask = np.array([image in images for images in self._images], dtype=bool)
            self._image_masks[image] = mask
        return mask

    def codes_mask(self, column: str, codes: tuple[int, ...]) -> BOOL:
        """Rows whose integer-coded `column` (country, edge_type, arch) is one of `codes`;
        built once per distinct set (np.isin on 100k rows costs ~100x an OR of masks)."""
        key = (column, codes)
        mask = self._code_masks.get(key)
        if mask is None:
            mask = np.isin(getattr(self, column), codes)
            self._code_masks[key] = mask
        return mask

    def labels_of(self, i: int) -> dict[str, str]:
        return self._labels[i]

    def _group(self, group: str) -> I32:
        counts = self.group_counts.get(group)
        if counts is None:
            counts = self.group_counts[group] = np.zeros(len(self.ids), dtype=np.int32)
        return counts

    def latitude_band(self, lat: float, radius_km: float) -> slice:
        """Rows whose latitude is within `radius_km` of `lat` (plus nodes without location)."""
        degrees = radius_km / 111.19 + 1e-9
        lo = int(np.searchsorted(self.lat, lat - degrees, side="left"))
        hi = int(np.searchsorted(self.lat, lat + degrees, side="right"))
        return slice(lo, hi)

    def free(self, buffer: float) -> F64:
        """(3, n) free capacity after keeping `buffer` of it spare, one contiguous row per
        resource; kept up to date by reserve/release."""
        free = self._free.get(buffer)
        if free is None:
            free = np.ascontiguousarray((self.cap * (1.0 - buffer) - self.alloc).T)
            self._free[buffer] = free
        return free

    def inv_usable(self, buffer: float) -> F64:
        """(2, n) 1 / usable vCPUs and memory (0 where a node has none)."""
        inv = self._inv_usable.get(buffer)
        if inv is None:
            usable = self.cap[:, :2].T * (1.0 - buffer)
            inv = np.divide(1.0, usable, out=np.zeros_like(usable), where=usable > 0)
            self._inv_usable[buffer] = np.ascontiguousarray(inv)
            inv = self._inv_usable[buffer]
        return inv

    # -- mutation --------------------------------------------------------------------------

    def changed_since(self, version: int) -> list[int] | None:
        """Rows whose mutable columns changed after `version`; None when the log no longer
        reaches that far back (the caller recomputes everything)."""
        if version < self._log_base:
            return None
        return self._changed[version - self._log_base :]

    def _changed_row(self, i: int) -> None:
        self._changed.append(i)
        self.dynamic_version += 1
        if len(self._changed) > CHANGE_LOG:  # consumers that far behind recompute in full
            drop = len(self._changed) // 2
            del self._changed[:drop]
            self._log_base += drop

    def reserve(self, i: int, need: Capacity, group: str = "") -> None:
        self._book(i, need, 1.0)
        self.vm_count[i] += 1
        if group:
            self._group(group)[i] += 1
        self._changed_row(i)

    def release(self, i: int, need: Capacity, group: str = "") -> None:
        self._book(i, need, -1.0)
        self.vm_count[i] -= 1
        if group:
            self._group(group)[i] -= 1
        self._changed_row(i)

    def _book(self, i: int, need: Capacity, sign: float) -> None:
        amounts = (need.vcpus * sign, need.memory_mib * sign, need.storage_gib * sign)
        self.alloc[i] += amounts
        for free in self._free.values():
            free[0, i] -= amounts[0]
            free[1, i] -= amounts[1]
            free[2, i] -= amounts[2]

    def set_ready(self, node_ids: Iterable[str], ready: bool) -> None:
        for node_id in node_ids:
            i = self.index[node_id]
            self.ready[i] = ready
            self._changed_row(i)
