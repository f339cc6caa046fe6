"""Placement options shared by `vm deploy` and `placement explain`, and the explanation views."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cli import args as types
from cli.render import describe, table
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb

_EDGE = {name: getattr(pb, f"EDGE_TYPE_{name.upper()}") for name in types.EDGE_TYPES}
_SCOPES = {"node": pb.SPREAD_SCOPE_NODE, "site": pb.SPREAD_SCOPE_SITE}
_MODES = {"spread": pb.PLACEMENT_MODE_SPREAD, "binpack": pb.PLACEMENT_MODE_BINPACK}
MAX_REJECTIONS_SHOWN = 20


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("placement constraints")
    g.add_argument("--near", type=types.lat_lon, metavar="LAT,LON", help="where the users are")
    g.add_argument(
        "--max-latency-ms",
        type=types.non_negative_float,
        default=0.0,
        metavar="MS",
        help="RTT bound (default: the controller's max_edge_latency)",
    )
    g.add_argument(
        "--latency-percentile", type=int, choices=(50, 95, 99), help="of measured RTT (95)"
    )
    g.add_argument(
        "--country",
        dest="countries",
        type=types.countries,
        action="extend",
        default=[],
        metavar="CC[,CC]",
        help="allowed countries (data residency), e.g. DE,FR",
    )
    g.add_argument(
        "--edge-type",
        dest="edge_types",
        type=types.edge_types,
        action="extend",
        default=[],
        metavar="TYPE[,TYPE]",
        help=f"required edge type, one of {', '.join(types.EDGE_TYPES)}",
    )
    g.add_argument(
        "--exclude-edge-type",
        dest="exclude_edge_types",
        type=types.edge_types,
        action="extend",
        default=[],
        metavar="TYPE[,TYPE]",
    )
    g.add_argument("--arch", choices=("x86_64", "aarch64"))
    g.add_argument(
        "--require-label",
        dest="required_labels",
        type=types.label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label the node must have (repeatable)",
    )
    g.add_argument("--spread-group", metavar="GROUP", help="no two VMs of GROUP per node/site")
    g.add_argument("--spread-scope", choices=("node", "site"), help="default node")
    g.add_argument("--max-cost", type=types.non_negative_float, default=0.0, metavar="PER_HOUR")
    g.add_argument("--mode", choices=tuple(_MODES), help="resource score: spread or binpack")


def constraints(args: argparse.Namespace) -> pb.PlacementConstraints:
    msg = pb.PlacementConstraints(
        max_latency_ms=args.max_latency_ms,
        latency_percentile=args.latency_percentile or 0,
        countries=args.countries,
        edge_types=[_EDGE[e] for e in args.edge_types],
        exclude_edge_types=[_EDGE[e] for e in args.exclude_edge_types],
        arch=args.arch or "",
        required_labels=dict(args.required_labels),
        spread_group=args.spread_group or "",
        spread_scope=_SCOPES.get(args.spread_scope or "", pb.SPREAD_SCOPE_UNSPECIFIED),
        max_cost_per_hour=args.max_cost,
        mode=_MODES.get(args.mode or "", pb.PLACEMENT_MODE_UNSPECIFIED),
    )
    if args.near is not None:
        msg.near.CopyFrom(pb.Location(latitude=args.near[0], longitude=args.near[1]))
    return msg


def decision_view(d: api.PlacementDecision) -> str:
    lines = [d.summary, f"(decided in {d.decision_ms:.2f} ms)", ""]
    if d.candidates:
        rows = []
        for rank, c in enumerate(d.candidates, 1):
            latency = f"{c.latency_ms:.1f}{' est.' if c.latency_estimated else ''}"
            terms = "  ".join(f"{t.name} {t.weighted:.3f}" for t in c.terms if t.weight > 0)
            rows.append([str(rank), c.node_id, f"{c.total:.3f}", latency, terms])
        lines.append(table(("RANK", "NODE", "SCORE", "LATENCY-MS", "WEIGHTED TERMS"), rows))
        best = d.candidates[0]
        lines.append(
            describe(
                [
                    (t.name, f"raw {t.raw:.3f} x {t.weight:g} = {t.weighted:.3f}  ({t.note})")
                    for t in best.terms
                ]
            )
        )
    if d.rejections:
        shown: Sequence[api.Rejection] = d.rejections[:MAX_REJECTIONS_SHOWN]
        lines.append(
            table(
                ("REJECTED", "FILTER", "REASON"), [[r.node_id, r.filter, r.reason] for r in shown]
            )
        )
        if len(d.rejections) > len(shown):
            lines.append(f"... and {len(d.rejections) - len(shown)} more (-o json lists all)")
    return "\n".join(line.rstrip("\n") for line in lines) + "\n"


def nearest_view(nodes: Sequence[api.NodeDistance]) -> str:
    rows = [
        [
            n.node_id,
            f"{n.distance_km:.0f}",
            f"{n.estimated_rtt_ms:.1f}",
            pb.EdgeType.Name(n.edge_type).removeprefix("EDGE_TYPE_").lower(),
            n.country_code or "-",
            pb.NodeCondition.Name(n.condition).removeprefix("NODE_CONDITION_").lower(),
        ]
        for n in nodes
    ]
    return table(("NODE", "DISTANCE-KM", "EST-RTT-MS", "EDGE-TYPE", "COUNTRY", "CONDITION"), rows)
