"""Absence is not deletion, the agent's side: the node remembers its controller installation
and refuses destructive commands from one that is new to it, unless told to be taken over."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.installation import FILE, InstallationGuard
from shared.errors import FailedPrecondition


def test_first_welcome_is_remembered(tmp_path: Path) -> None:
    state = tmp_path / "state"  # not there yet: the guard creates it
    guard = InstallationGuard(state)
    assert guard.known == ""
    guard.welcome("inst-a", take_over=False)
    assert guard.known == "inst-a"
    assert (state / FILE).read_text().strip() == "inst-a"
    assert [p.name for p in state.iterdir()] == [FILE]  # no temporary file left behind
    guard.check_destructive("delete")
    assert InstallationGuard(state).known == "inst-a"  # survives a restart


def test_a_new_installation_is_refused_destructive_commands(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text("inst-a\n")
    guard = InstallationGuard(tmp_path)
    guard.welcome("inst-b", take_over=False)
    assert guard.known == "inst-a"
    with pytest.raises(FailedPrecondition) as caught:
        guard.check_destructive("delete of vm 'web-1'")
    assert str(caught.value) == (
        "delete of vm 'web-1' refused: this node belongs to installation inst-a; controller "
        "installation inst-b is new to it: restart the controller on its original state dir, "
        "or with --new-installation to take this node over"
    )
    assert (tmp_path / FILE).read_text().strip() == "inst-a"
    guard.welcome("inst-a", take_over=False)  # the original controller is back
    guard.check_destructive("delete")


def test_take_over_adopts_the_new_installation(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text("inst-a\n")
    guard = InstallationGuard(tmp_path)
    guard.welcome("inst-b", take_over=True)
    assert guard.known == "inst-b"
    guard.check_destructive("delete")
    assert InstallationGuard(tmp_path).known == "inst-b"
    guard.welcome("inst-a", take_over=False)  # now the old one is the stranger
    with pytest.raises(FailedPrecondition, match="belongs to installation inst-b"):
        guard.check_destructive("delete")


def test_a_controller_that_names_no_installation_changes_nothing(tmp_path: Path) -> None:
    guard = InstallationGuard(tmp_path)
    guard.welcome("", take_over=False)
    assert guard.known == "" and not (tmp_path / FILE).exists()
    guard.check_destructive("delete")
