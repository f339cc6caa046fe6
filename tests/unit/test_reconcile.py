from __future__ import annotations

from controller.reconcile import ActionKind, plan
from controller.records import VMRecord
from shared.domain import DesiredState, VMSpec, VMState, VMStatus


def record(
    vm_id: str,
    node: str = "n1",
    desired: DesiredState = DesiredState.RUNNING,
    state: VMState = VMState.RUNNING,
    generation: int = 1,
) -> VMRecord:
    return VMRecord(
        id=vm_id,
        spec=VMSpec(vm_id, "tiny", 1, 64),
        node_id=node,
        desired=desired,
        state=state,
        generation=generation,
        created_at=0,
        updated_at=0,
    )


def status(vm_id: str, state: VMState = VMState.RUNNING, generation: int = 1) -> VMStatus:
    return VMStatus(vm_id=vm_id, name=vm_id, state=state, generation=generation)


def kinds(actions: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return sorted((a.kind.value, a.vm_id) for a in actions)


def test_in_sync_only_observes() -> None:
    assert kinds(plan("n1", [record("a")], [status("a")])) == [("observe", "a")]


def test_missing_vm_is_created_and_failed_one_is_not() -> None:
    actions = plan("n1", [record("a"), record("b", state=VMState.FAILED)], [])
    assert kinds(actions) == [("create", "a")]


def test_unknown_moved_stale_and_deleted_vms_are_removed() -> None:
    desired = [
        record("moved", node="n2"),
        record("old", generation=2),
        record("gone", desired=DesiredState.DELETED, state=VMState.DELETING),
    ]
    reported = [status("stranger"), status("moved"), status("old", generation=1), status("gone")]
    assert kinds(plan("n1", desired, reported)) == [
        ("delete", "gone"),
        ("delete", "moved"),
        ("delete", "old"),
        ("delete", "stranger"),
    ]


def test_deleted_and_absent_is_forgotten() -> None:
    desired = [record("gone", desired=DesiredState.DELETED, state=VMState.DELETING)]
    assert kinds(plan("n1", desired, [])) == [("forget", "gone")]


def test_power_state_converges() -> None:
    desired = [
        record("p", desired=DesiredState.PAUSED),
        record("r"),
        record("s"),
    ]
    reported = [status("p"), status("r", VMState.PAUSED), status("s", VMState.STOPPED)]
    got = [
        (a.kind, a.vm_id) for a in plan("n1", desired, reported) if a.kind is not ActionKind.OBSERVE
    ]
    assert sorted(got) == [
        (ActionKind.RESUME, "r"),
        (ActionKind.START, "s"),
        (ActionKind.SUSPEND, "p"),
    ]


def test_other_nodes_vms_are_left_alone() -> None:
    assert plan("n1", [record("x", node="n2")], []) == []


def test_a_vm_marked_migrating_is_neither_removed_from_its_target_nor_recreated_at_source() -> None:
    """While a record says "migrating to n2" (or the controller restarted during a migration),
    the target reporting it must not delete it as stale, and the source not reporting it must
    not re-create it: the controller settles where it is first."""
    moving = record("m", node="n1")
    moving.migrating_to = "n2"
    assert plan("n2", [moving], [status("m")]) == []
    assert plan("n1", [moving], []) == []
    assert kinds(plan("n1", [moving], [status("m")])) == [("observe", "m")]
