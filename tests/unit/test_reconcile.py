from __future__ import annotations

from dataclasses import replace

from controller.core.reconcile import ActionKind, plan
from controller.records import MigrationPhase, MigrationRecord, Tombstone, VMRecord
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


def test_stale_and_deleted_copies_are_removed() -> None:
    desired = [
        record("moved", node="n2", generation=2),
        record("old", generation=2),
        record("gone", desired=DesiredState.DELETED, state=VMState.DELETING),
    ]
    reported = [status("moved"), status("old", generation=1), status("gone")]
    assert kinds(plan("n1", desired, reported)) == [
        ("delete", "gone"),
        ("delete", "moved"),
        ("delete", "old"),
    ]


def test_absence_of_a_record_is_not_deletion() -> None:
    """A VM the controller has no record of (an emptied state dir, a restored backup) is an
    orphan, left running; only a tombstone proves it was deleted."""
    stones = {"deleted": Tombstone("deleted", "deleted", 3, 100.0)}
    reported = [status("stranger"), status("deleted", generation=3), status("reborn", generation=4)]
    stones["reborn"] = Tombstone("reborn", "reborn", 3, 100.0)
    assert kinds(plan("n1", [], reported, stones)) == [
        ("delete", "deleted"),
        ("orphan", "reborn"),
        ("orphan", "stranger"),
    ]


def test_a_same_generation_copy_on_another_node_is_never_destroyed() -> None:
    """Two copies at one generation cannot be told apart by the rule: neither is destroyed,
    the other one is shown as an orphan for an operator to decide."""
    actions = plan("n1", [record("twin", node="n2")], [status("twin")])
    assert kinds(actions) == [("orphan", "twin")]
    assert "lives on n2" in actions[0].reason


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


def migration(vm_id: str, source: str = "n1", target: str = "n2") -> MigrationRecord:
    return MigrationRecord(
        id="mig-1",
        vm_id=vm_id,
        vm_name=vm_id,
        source=source,
        target=target,
        phase=MigrationPhase.TRANSFER,
        from_generation=1,
        to_generation=2,
    )


def test_a_migrating_vm_is_neither_removed_from_its_target_nor_recreated_at_source() -> None:
    """While a migration is under way (or the controller restarted during one), the target
    reporting the VM must not delete it as stale, and the source not reporting it must not
    re-create it: the migration settles where it is."""
    moving = replace(record("m", node="n1"), migrating_to="n2")
    moves = {"m": migration("m")}
    assert kinds(plan("n2", [moving], [status("m", generation=2)], {}, moves)) == [("arrived", "m")]
    assert plan("n1", [moving], [], {}, moves) == []
    assert kinds(plan("n1", [moving], [status("m")], {}, moves)) == [("leaving", "m")]


def test_after_a_migration_the_source_copy_is_fenced_by_its_generation() -> None:
    landed = record("m", node="n2", generation=2)
    done = replace(migration("m"), phase=MigrationPhase.SUCCEEDED, switched_at=5.0)
    assert kinds(plan("n1", [landed], [status("m", generation=1)], {}, {"m": done})) == [
        ("delete", "m")
    ]
    # the target had not stamped the new generation yet: it is still the VM
    assert kinds(plan("n2", [landed], [status("m", generation=1)], {}, {"m": done})) == [
        ("observe", "m")
    ]
