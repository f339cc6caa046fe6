"""The agent's one fencing rule: older than the copy held is refused, same is idempotent,
newer moves on."""

from __future__ import annotations

import pytest

from agent.fencing import Fence, StaleGeneration, fence
from shared.commands import CommandError
from shared.errors import FailedPrecondition


def test_no_copy_held() -> None:
    assert fence(None, 1) is Fence.NONE_HELD
    assert fence(None, 0) is Fence.NONE_HELD


def test_same_and_newer() -> None:
    assert fence(3, 3) is Fence.SAME
    assert fence(3, 4) is Fence.NEWER


def test_older_is_refused_saying_what_the_node_holds() -> None:
    with pytest.raises(StaleGeneration) as caught:
        fence(5, 4, "create")
    exc = caught.value
    assert isinstance(exc, FailedPrecondition)
    assert (exc.held, exc.generation) == (5, 4)
    assert str(exc).startswith("create: stale generation: this node holds generation 5")
    assert CommandError.of(exc).code == "FAILED_PRECONDITION"
