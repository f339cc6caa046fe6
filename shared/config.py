"""Loading typed, frozen configuration from YAML + environment + flags, refusing bad keys.

A bad file is refused with the dotted path of the bad key (e.g. `agent.location.latitude`),
so an operator never has to guess which line is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NewType, TypeVar

import yaml

from shared.errors import ConfigError

T = TypeVar("T")
Seconds = NewType("Seconds", float)
"""A duration field: accepts 5, 2.5, "100ms", "30s", "5m" in files, env and flags."""
SecondsOrNever = NewType("SecondsOrNever", float)
"""A duration that may also be `never` (infinity)."""
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object, where: str) -> float:
    """Seconds from `5`, `2.5`, `"100ms"`, `"30s"`, `"5m"`."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 5s or 100ms, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    raise ConfigError(f"{where}: expected a duration like 5s or 100ms, got {value!r}")


def read_yaml(path: Path, section: str) -> dict[str, Any]:
    """The mapping under `section` in `path` ({} if the section is absent)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    body = data.get(section, {})
    if body is None:  # a section whose keys are all commented out (the packaged files)
        return {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping")
    return body


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the nearest of `known`, or `` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_sections(path: Path, known: typing.Iterable[str], foreign: Mapping[str, str]) -> None:
    """Refuse a top-level section this daemon does not read: a misspelt one (with the nearest
    valid name), or one that belongs to another daemon's file (`foreign`: name -> why)."""
    text = path.read_text() if path.is_file() else ""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        return  # read_yaml names that problem
    names = list(known)
    for section in data:
        if str(section) in names:
            continue
        if str(section) in foreign:
            raise ConfigError(f"{path}: section {section!r}: {foreign[str(section)]}")
        raise ConfigError(
            f"{path}: unknown section {section!r}{did_you_mean(str(section), names)} "
            f"(this file may hold: {', '.join(names)})"
        )


def env_overrides(prefix: str, cls: type[Any]) -> dict[str, str]:
    """`PREFIX_KEY=value` for each top-level field of `cls` (e.g. NOVACRON_AGENT_NODE_ID)."""
    found = {}
    for f in dataclasses.fields(cls):
        value = os.environ.get(f"{prefix}_{f.name.upper()}")
        if value is not None:
            found[f.name] = value
    return found


def build(cls: type[T], raw: Mapping[str, Any], where: str) -> T:
    """Build the frozen dataclass `cls` from `raw`, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        hint = did_you_mean(unknown[0], names) or f" (known: {', '.join(sorted(names))})"
        raise ConfigError(f"{where}.{unknown[0]}: unknown key{hint}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is Seconds:
        return Seconds(parse_duration(value, where))
    if hint is SecondsOrNever:
        if isinstance(value, str) and value.strip().lower() == "never":
            return SecondsOrNever(math.inf)
        return SecondsOrNever(parse_duration(value, where))
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if hint is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is Path:
        return Path(str(value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    return value
