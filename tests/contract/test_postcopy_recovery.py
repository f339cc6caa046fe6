"""Post-copy recovery on two real nodes: a post-copy whose path drops mid-way is paused by the
source's driver and resumed (VIR_MIGRATE_POSTCOPY_RESUME) once the path is back.

Two outcomes are right, and the test says which it saw: the guest ends up whole on the target
(its console there keeps printing heartbeats, which it can only do with all its memory), or,
when libvirt leaves the resume unanswered (under TCG, see agent/hypervisor/postcopy_recovery.py),
the move fails within its budget with an error that says so, and the source keeps its half
paused. What is never right: a move that does not return, or a source half destroyed."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.images.builder import FIRST_LINE
from shared.domain import VMState
from shared.errors import Internal
from tests.conftest import wait_for
from tests.contract.migration_pair import (
    HEARTBEAT_TIMEOUT_S,
    Node,
    Pair,
    _booted,
    _qemu_alive,
    _unique,
)

BUDGET_S = 90.0
MOVE_TIMEOUT_S = BUDGET_S + 60.0


def _iptables(netns: str, *rule: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", *rule], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def _path_down(a: Node, b: Node) -> Iterator[None]:
    """Every packet between the two nodes dropped (a link that goes dark, no resets), in A's
    namespace, both ways; the rules go even when the test fails."""
    rules = [("INPUT", "-s", b.address), ("OUTPUT", "-d", b.address)]
    for chain, match, address in rules:
        _iptables(a.netns, "-I", chain, match, address, "-j", "DROP")
    try:
        yield
    finally:
        for chain, match, address in rules:
            _iptables(a.netns, "-D", chain, match, address, "-j", "DROP")


def _heartbeats(log: Path, name: str) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(f"NovaCron guest {name} heartbeat")


def test_a_postcopy_whose_path_drops_is_paused_then_resumed_when_it_returns(pair: Pair) -> None:
    a, b = pair.a, pair.b
    name = _unique("resume")
    vm_id, _ = pair.create(a, name)
    _booted(a, vm_id, name)
    target = b.target(vm_id)
    errors: list[BaseException] = []

    def move() -> None:
        try:  # 20 Mbit/s: ~30 s of post-copy, room for the break
            a.driver.migrate(
                vm_id, target, bandwidth_mbit=20, postcopy=True, time_budget_s=BUDGET_S
            )
        except BaseException as err:
            errors.append(err)

    mover = threading.Thread(target=move)
    mover.start()
    try:
        b.events.wait(vm_id, "resumed", VMState.RUNNING, reason="post-copy: pulling memory")
        with _path_down(a, b):
            # the driver sees memory stop moving and pauses the job: QEMU's postcopy-paused
            a.events.wait(vm_id, "suspended", VMState.PAUSED, reason="post-copy failed")
    finally:
        mover.join(timeout=MOVE_TIMEOUT_S)
    assert not mover.is_alive(), f"migrate() did not return within {MOVE_TIMEOUT_S} s"
    print(f"\nevents on A: {a.events.of(vm_id)}\nevents on B: {b.events.of(vm_id)}")
    if errors:  # the resume went unanswered: the failure is bounded, clear, and loses nothing
        print(f"outcome: not resumed within the budget: {errors[0]}")
        assert len(errors) == 1 and isinstance(errors[0], Internal), errors
        message = str(errors[0])
        assert "post-copy had begun" in message and "keeps it paused" in message
        assert "resuming it for" in message
        on_a = a.driver.get_vm(vm_id)
        assert on_a is not None and on_a.state == VMState.PAUSED and _qemu_alive(a, name)
        return
    print("outcome: resumed, the guest is whole on B")
    on_b = b.driver.get_vm(vm_id)
    assert on_b is not None and on_b.state == VMState.RUNNING
    assert a.driver.get_vm(vm_id) is None and not _qemu_alive(a, name)
    log = Path(target.console_log)
    assert FIRST_LINE.format(name=name, kernel="") not in log.read_text(errors="replace")
    before = _heartbeats(log, name)  # the guest on B runs on: its memory all arrived
    wait_for(
        lambda: _heartbeats(log, name) > before,
        HEARTBEAT_TIMEOUT_S,
        f"a new heartbeat of {name} in {log}",
        interval_s=0.2,
    )
