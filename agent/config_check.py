"""`novacron-agent config check FILE [flags]`: the agent's effective configuration, each
key with where it came from (default, file, env, flag)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.config import ENV_PREFIX, AgentConfig, load_config
from shared.config import env_overrides, read_yaml
from shared.config_sources import Setting, describe, run_check


def describe_config(path: Path, flags: dict[str, Any]) -> tuple[list[Setting], list[str]]:
    config = load_config(path, flags)
    given = {k: v for k, v in flags.items() if v is not None}
    layers = [
        ("file", read_yaml(path, "agent")),
        ("env", env_overrides(ENV_PREFIX, AgentConfig)),
        ("flag", given),
    ]
    return describe(config, "agent", layers), []


def main(argv: Sequence[str], flags_of: Callable[[list[str]], dict[str, Any]]) -> int:
    """`argv` after `config`: `check FILE [flags]`; `flags_of` parses the daemon's flags."""
    if list(argv[:1]) != ["check"]:
        print("usage: novacron-agent config check FILE [flags as for novacron-agent]")
        return 2
    return run_check(
        "novacron-agent", argv[1:], lambda path, rest: describe_config(path, flags_of(list(rest)))
    )
