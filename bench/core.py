"""The pure controller core's own cost: a deploy through `handle` (validate, place, record,
command, answer) against the placement decision alone, measured in the same run on the same
fleet; and a heartbeat event (which writes nothing).

    .venv/bin/python -m bench.core [--nodes 1000] [--deploys 500]
"""

from __future__ import annotations

import argparse
import logging
import time

import structlog

from bench.common import percentile
from controller.core import ControllerCore, Settings
from controller.core import events as ev
from controller.core.instructions import Persist, SendCommand
from controller.placement import ScoredEngine
from shared.commands import CommandResult, CreateVM
from shared.domain import (
    Capacity,
    EdgeType,
    ImageInfo,
    Location,
    NodeInfo,
    Utilization,
    VMSpec,
    VMState,
    VMStatus,
)


def build(nodes: int) -> ControllerCore:
    core = ControllerCore(Settings(installation_id="bench"), ScoredEngine())
    for i in range(nodes):
        info = NodeInfo(
            node_id=f"n{i}",
            hostname=f"n{i}",
            arch="x86_64",
            edge_type=EdgeType.MEC,
            capacity=Capacity(vcpus=64, memory_mib=262144, storage_gib=1000),
            location=Location(40 + (i % 20) * 0.5, -10 + (i // 20 % 40) * 0.8, "DE"),
        )
        core.handle(
            ev.AgentHello(
                stimulus_id=f"h{i}",
                now=0.0,
                node_id=info.node_id,
                session_id=f"s{i}",
                info=info,
                images=(ImageInfo("tiny", "kernel", "x86_64"),),
            )
        )
    return core


def micro(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1e6:6.0f} us  p95 {percentile(values, 95) * 1e6:6.0f} us"
        f"  (n={len(values)})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--deploys", type=int, default=500)
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    core = build(args.nodes)
    now = 1.0
    spec = VMSpec("x", "tiny", 1, 128)
    baseline, through_core = [], []
    for i in range(args.deploys):
        s = VMSpec(f"vm-{i}", "tiny", 1, 128, placement=spec.placement)
        # baseline: the placement decision the deploy needs, on the same kept table
        t0 = time.perf_counter()
        core.explain_placement(s, now, k=2)
        baseline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = core.handle(ev.DeployRequested(stimulus_id=f"d{i}", now=now, spec=s))
        assert isinstance(out[0], Persist)
        send = next(o for o in out if isinstance(o, SendCommand))
        cmd = send.envelope.command
        assert isinstance(cmd, CreateVM)
        status = VMStatus(cmd.vm_id, s.name, VMState.RUNNING, 1)
        core.handle(
            ev.AgentResult(
                stimulus_id=f"r{i}",
                now=now,
                node_id=send.node_id,
                session_id=send.session_id,
                result=CommandResult(send.envelope.id, vm=status),
            )
        )
        through_core.append(time.perf_counter() - t0)
    heartbeats = []
    for i in range(2000):
        node = f"n{i % args.nodes}"
        t0 = time.perf_counter()
        out = core.handle(
            ev.AgentHeartbeat(
                stimulus_id=f"hb{i}",
                now=now,
                node_id=node,
                session_id=f"s{i % args.nodes}",
                utilization=Utilization(),
            )
        )
        heartbeats.append(time.perf_counter() - t0)
        assert not out, "a heartbeat wrote something"
    print(f"{args.nodes} nodes, {args.deploys} deploys")
    print(f"placement decision alone (baseline): {micro(baseline)}")
    print(f"deploy through the core:             {micro(through_core)}")
    b, c = percentile(baseline, 50), percentile(through_core, 50)
    print(f"  p50 ratio core deploy / decision alone: {c / b:.2f}x")
    print(f"heartbeat event:                     {micro(heartbeats)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
