"""Where each effective setting came from (default, file, env, flag): `config check FILE`.

Both daemons build their configuration from layers (file < environment < flags); this walks
the built, frozen configuration and names, for every leaf key, the highest layer that set it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.config import Seconds, SecondsOrNever
from shared.errors import ConfigError

Layer = tuple[str, Mapping[str, Any]]  # (source name, the raw mapping it gave)


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    path: str
    value: str
    source: str


def _show(value: Any, hint: Any) -> str:
    if value is None:
        return "null"
    if hint in (Seconds, SecondsOrNever) or Seconds in typing.get_args(hint):
        return _duration(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v, None) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if 0 < seconds < 1 else f"{seconds:g}s"


def _given(raw: Any, parts: Sequence[str | int]) -> bool:
    for part in parts:
        if isinstance(part, int):
            if not isinstance(raw, list) or part >= len(raw):
                return False
        elif not isinstance(raw, Mapping) or part not in raw:
            return False
        raw = raw[part]
    return True


def describe(obj: Any, where: str, layers: Sequence[Layer]) -> list[Setting]:
    """Every leaf of the dataclass `obj` (lists of dataclasses by index), with the last of
    `layers` (lowest precedence first) that gave it, else "default"."""
    out: list[Setting] = []

    def walk(value: Any, hint: Any, parts: list[str | int]) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            hints = typing.get_type_hints(type(value))
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), hints[f.name], [*parts, f.name])
            return
        if isinstance(value, tuple) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                walk(item, None, [*parts, i])
            return
        source = "default"
        for name, raw in layers:
            if _given(raw, parts):
                source = name
        path = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
        out.append(Setting(path, _show(value, hint), source))

    walk(obj, None, [])
    return out


def render(settings: Sequence[Setting]) -> str:
    width = min(max((len(s.path) + len(s.value) for s in settings), default=0) + 3, 64)
    return "\n".join(f"{s.path} = {s.value}".ljust(width) + f" # {s.source}" for s in settings)


def run_check(
    prog: str,
    argv: Sequence[str],
    load: Callable[[Path, Sequence[str]], tuple[list[Setting], list[str]]],
) -> int:
    """`PROG config check FILE [daemon flags]`: the effective configuration, each value with
    its source; exit 0 if the file is valid, 2 with the problems otherwise."""
    if not argv or argv[0].startswith("-"):
        print(f"usage: {prog} config check FILE [flags as for {prog}]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"{prog}: {path}: no such file", file=sys.stderr)
        return 2
    try:
        settings, warnings = load(path, argv[1:])
    except ConfigError as exc:
        print(f"{prog}: {path}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    print(render(settings))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: valid", file=sys.stderr)
    return 0
