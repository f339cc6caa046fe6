"""Placement: which node a VM runs on, and why (issue #4; DESIGN principle 7).

`ScoredEngine` over a columnar `NodeTable`: filters remove nodes (each says why), scorers rank
the survivors, the weighted sum picks the winner, `reserve` books its capacity.
"""

from controller.placement.batch import BatchPlacer, BatchPlan
from controller.placement.engine import Evaluation, ScoredEngine
from controller.placement.explain import CandidateScore, Explanation, Rejection, ScoreTerm
from controller.placement.profile import DEFAULT_WEIGHTS, PlacementProfile
from controller.placement.request import PlacementRequest
from controller.placement.table import NodeRow, NodeTable

__all__ = [
    "DEFAULT_WEIGHTS",
    "BatchPlacer",
    "BatchPlan",
    "CandidateScore",
    "Evaluation",
    "Explanation",
    "NodeRow",
    "NodeTable",
    "PlacementProfile",
    "PlacementRequest",
    "Rejection",
    "ScoreTerm",
    "ScoredEngine",
]
