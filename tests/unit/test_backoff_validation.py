from __future__ import annotations

import random

import pytest

from agent.backoff import Backoff
from controller.validation import validate_spec
from shared.domain import VMSpec
from shared.errors import InvalidArgument


def test_backoff_grows_to_cap_with_jitter_and_resets() -> None:
    b = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays[5:]) > 0.5  # it grew past the base
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    b.reset()
    assert b.next_delay() <= 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (VMSpec("", "tiny", 1, 64), "name is required"),
        (VMSpec("Web_1", "tiny", 1, 64), "name 'Web_1' is invalid"),
        (VMSpec("web", "", 1, 64), "image is required"),
        (VMSpec("web", "tiny", 0, 64), "vcpus must be > 0"),
        (VMSpec("web", "tiny", 1, 0), "memory_mib must be > 0"),
        (VMSpec("web", "tiny", 1, 8), "memory_mib must be >= 16"),
        (VMSpec("web", "tiny", 1, 64, {"bad key": "x"}), "label key 'bad key' is invalid"),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(spec: VMSpec, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_spec(spec)


def test_valid_spec_passes() -> None:
    validate_spec(VMSpec("web-1", "tiny", 2, 128, {"app": "cdn"}))
