"""Compare what should be on a node with what its agent reports, and say what to do.

Pure and level-triggered: the same inputs always give the same actions, so running it on every
(re)connect never replays history and never duplicates a VM.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from controller.records import VMRecord
from shared.domain import DesiredState, VMState, VMStatus


class ActionKind(enum.StrEnum):
    CREATE = "create"  # desired on this node, missing there
    DELETE = "delete"  # present there, not wanted there (deleted, moved, or stale generation)
    FORGET = "forget"  # desired deleted and already gone: drop the record
    SUSPEND = "suspend"
    RESUME = "resume"
    START = "start"
    OBSERVE = "observe"  # nothing to do but record the reported state


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    vm_id: str
    name: str
    generation: int = 0
    observed: VMState | None = None


_WANTED_RUNNING = {DesiredState.RUNNING}


def plan(node_id: str, desired: Iterable[VMRecord], reported: Iterable[VMStatus]) -> list[Action]:
    """Actions that bring `node_id` from `reported` to `desired` (records of all nodes allowed)."""
    records = {vm.id: vm for vm in desired}
    seen = {status.vm_id: status for status in reported}
    actions: list[Action] = []

    for status in seen.values():
        record = records.get(status.vm_id)
        if record is not None and record.migrating_to == node_id:
            continue  # arriving by live migration: the controller decides when it has landed
        stale = (
            record is None
            or record.node_id != node_id
            or record.desired is DesiredState.DELETED
            or status.generation < record.generation
        )
        if stale:
            actions.append(Action(ActionKind.DELETE, status.vm_id, status.name, status.generation))
            continue
        assert record is not None
        actions.append(
            Action(ActionKind.OBSERVE, record.id, record.spec.name, record.generation, status.state)
        )
        if record.desired is DesiredState.RUNNING and status.state is VMState.PAUSED:
            actions.append(Action(ActionKind.RESUME, record.id, record.spec.name))
        elif record.desired is DesiredState.PAUSED and status.state is VMState.RUNNING:
            actions.append(Action(ActionKind.SUSPEND, record.id, record.spec.name))
        elif record.desired in _WANTED_RUNNING and status.state in (
            VMState.STOPPED,
            VMState.CRASHED,
        ):
            actions.append(Action(ActionKind.START, record.id, record.spec.name))

    for record in records.values():
        if record.node_id != node_id or record.id in seen:
            continue
        if record.migrating_to:  # gone from its source: it may be running on the target
            continue
        if record.desired is DesiredState.DELETED:
            actions.append(Action(ActionKind.FORGET, record.id, record.spec.name))
        elif record.state is not VMState.FAILED:
            actions.append(
                Action(ActionKind.CREATE, record.id, record.spec.name, record.generation)
            )
    return actions
