"""Generations that fence: the one rule, on the agent side, for a command that carries a VM's
generation against the copy of that VM this node holds.

- older than the copy held here: refused (`StaleGeneration`, FAILED_PRECONDITION), and the
  result says which generation this node holds, so a node back from a partition cannot be told
  by a stale controller decision to resurrect, overwrite or stop a VM that moved on;
- the same generation: the command is about this very copy (a create is idempotent);
- newer: the controller moved on and this copy follows (a create replaces/updates it, a
  finish_migration writes the new generation into the domain).

The executor applies it to every command with a generation (create, power, prepare, migrate,
finish, and delete when its generation is > 0); the libvirt driver applies it to the domain's
own metadata (create, set_generation, migrate).
"""

from __future__ import annotations

import enum

from shared.errors import FailedPrecondition


class Fence(enum.Enum):
    NONE_HELD = "none_held"  # this node holds no copy
    SAME = "same"
    NEWER = "newer"  # the command is newer than the copy held here


class StaleGeneration(FailedPrecondition):
    """A command older than the copy this node holds."""

    def __init__(self, held: int, generation: int, what: str = "") -> None:
        self.held = held
        self.generation = generation
        prefix = f"{what}: " if what else ""
        super().__init__(
            f"{prefix}stale generation: this node holds generation {held}, "
            f"the command is for generation {generation}"
        )


def fence(held: int | None, generation: int, what: str = "") -> Fence:
    """Judge a command at `generation` against the copy held here (`held`, None = no copy).
    Raises StaleGeneration when the command is older."""
    if held is None:
        return Fence.NONE_HELD
    if generation < held:
        raise StaleGeneration(held, generation, what)
    return Fence.SAME if generation == held else Fence.NEWER
