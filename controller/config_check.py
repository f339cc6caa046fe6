"""`novacron-controller config check FILE [flags]`: the controller's effective configuration,
each key with where it came from (default, file, env, flag), and the file's warnings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from controller.config import describe_config
from shared.config_sources import run_check


def main(argv: Sequence[str], flags_of: Callable[[list[str]], dict[str, Any]]) -> int:
    """`argv` after `config`: `check FILE [flags]`; `flags_of` parses the daemon's flags."""
    if list(argv[:1]) != ["check"]:
        print("usage: novacron-controller config check FILE [flags as for novacron-controller]")
        return 2
    return run_check(
        "novacron-controller",
        argv[1:],
        lambda path, rest: describe_config(path, flags_of(list(rest))),
    )
