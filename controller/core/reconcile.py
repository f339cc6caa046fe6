"""Compare what should be on a node with what its agent reports, and say what to do.

Pure and level-triggered: the same inputs always give the same actions, so running it on every
(re)connect never replays history and never duplicates a VM. Which reported copy is the VM is
`controller.core.fencing.judge`'s one rule.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.core.fencing import Verdict, judge
from controller.records import MigrationRecord, Tombstone, VMRecord
from shared.domain import DesiredState, VMState, VMStatus


class ActionKind(enum.StrEnum):
    CREATE = "create"  # desired on this node, missing there
    DELETE = "delete"  # present there and provably not the VM (stale generation, deleted)
    FORGET = "forget"  # desired deleted and already gone: drop the record
    SUSPEND = "suspend"
    RESUME = "resume"
    START = "start"
    OBSERVE = "observe"  # nothing to do but record the reported state
    ARRIVED = "arrived"  # the target of a migration reports the VM: it may have landed
    LEAVING = "leaving"  # the source of a migration reports the VM: it may not have left
    ORPHAN = "orphan"  # no record of it (or a conflicting copy): leave it running, show it


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    vm_id: str
    name: str
    generation: int = 0
    observed: VMState | None = None
    reason: str = ""
    status: VMStatus | None = None


_FOR_VERDICT = {
    Verdict.LEAVING: ActionKind.LEAVING,
    Verdict.ARRIVING: ActionKind.ARRIVED,
    Verdict.STALE: ActionKind.DELETE,
    Verdict.ORPHAN: ActionKind.ORPHAN,
}


def plan(
    node_id: str,
    desired: Iterable[VMRecord],
    reported: Iterable[VMStatus],
    tombstones: Mapping[str, Tombstone] | None = None,
    migrations: Mapping[str, MigrationRecord] | None = None,
) -> list[Action]:
    """Actions that bring `node_id` from `reported` to `desired` (records of all nodes
    allowed). `migrations` maps a VM id to its latest migration."""
    records = {vm.id: vm for vm in desired}
    stones = tombstones or {}
    moves = migrations or {}
    seen = {status.vm_id: status for status in reported}
    actions: list[Action] = []

    for status in seen.values():
        record = records.get(status.vm_id)
        mig = moves.get(status.vm_id)
        verdict, why = judge(node_id, status, record, stones.get(status.vm_id), mig)
        kind = _FOR_VERDICT.get(verdict)
        if kind is not None:  # the copy is not simply the VM: what happens to it is its own
            observed = None if kind is ActionKind.DELETE else status.state
            actions.append(
                Action(kind, status.vm_id, status.name, status.generation, observed, why, status)
            )
            continue
        assert record is not None
        actions.append(
            Action(ActionKind.OBSERVE, record.id, record.spec.name, record.generation, status.state)
        )
        if record.desired is DesiredState.RUNNING and status.state is VMState.PAUSED:
            actions.append(Action(ActionKind.RESUME, record.id, record.spec.name))
        elif record.desired is DesiredState.PAUSED and status.state is VMState.RUNNING:
            actions.append(Action(ActionKind.SUSPEND, record.id, record.spec.name))
        elif record.desired is DesiredState.RUNNING and status.state in (
            VMState.STOPPED,
            VMState.CRASHED,
        ):
            actions.append(Action(ActionKind.START, record.id, record.spec.name))

    for record in records.values():
        if record.node_id != node_id or record.id in seen:
            continue
        mig = moves.get(record.id)
        if record.migrating_to or (mig is not None and mig.active):
            continue  # gone from its source: it may be running on the target
        if record.desired is DesiredState.DELETED:
            actions.append(Action(ActionKind.FORGET, record.id, record.spec.name))
        elif record.state is not VMState.FAILED:
            actions.append(
                Action(ActionKind.CREATE, record.id, record.spec.name, record.generation)
            )
    return actions
