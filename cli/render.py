"""Output formats: protobuf messages as plain data (for json/yaml), tables, describe blocks.

Conventions (stated in `novacron --help`, kept for every command):
- field names are the proto names (`memory_mib`, not `memoryMib`);
- enums are lowercase short names (`running`, `not_ready`, `mec`), not `VM_STATE_RUNNING`;
- 64-bit integers are JSON numbers, not the strings of the proto3 JSON mapping;
- fields at their default value are always present, so scripts can rely on the keys;
- timestamps are RFC 3339 strings;
- lists are `{"items": [...]}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_WELL_KNOWN_PREFIX = "google.protobuf."


def enum_prefix(enum: EnumDescriptor) -> str:
    """The shared prefix of an enum's value names (`VM_STATE_` for VMState)."""
    zero = enum.values_by_number.get(0)
    if zero is not None and zero.name.endswith("UNSPECIFIED"):
        return zero.name[: -len("UNSPECIFIED")]
    names = [v.name for v in enum.values]
    prefix = names[0] if names else ""
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("_") + 1]


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """Lowercase short name of an enum value (`VM_STATE_RUNNING` -> `running`)."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name[len(enum_prefix(enum)) :].lower()


def _convert_scalar(field: FieldDescriptor, value: Any) -> Any:
    enum = field.enum_type
    if enum is not None and isinstance(value, str):
        full = enum.values_by_name.get(value)
        return enum_name(enum, full.number) if full is not None else value
    if field.type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    return value


def _convert(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """Walk MessageToDict output with the descriptor to apply the conventions above."""
    if descriptor.full_name.startswith(_WELL_KNOWN_PREFIX):
        return data
    for field in descriptor.fields:
        key = field.name
        if key not in data:
            continue
        value = data[key]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[key] = {k: _convert_value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            data[key] = [_convert_value(field, v) for v in value]
        else:
            data[key] = _convert_value(field, value)
    return data


def _convert_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and isinstance(value, dict):
        return _convert(field.message_type, value)
    return _convert_scalar(field, value)


def to_data(message: Message) -> dict[str, Any]:
    """A message as plain JSON/YAML-ready data, following the module conventions."""
    raw = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    # The runtime class is upb's Descriptor; the stubs type it as a union with the Python one.
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    return _convert(descriptor, raw)


def list_data(messages: Sequence[Message]) -> dict[str, Any]:
    return {"items": [to_data(m) for m in messages]}


def dump(data: Any, fmt: str) -> str:
    """Serialise data as json or yaml (always ending with a newline)."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    raise ValueError(f"unknown format {fmt!r}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """`text` with control characters escaped (\x1b -> \\x1b): whatever a node or a client
    stored, it cannot move the operator's cursor or recolour the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl-style table: left-aligned columns separated by three spaces."""
    rows = [[safe(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def describe(pairs: Sequence[tuple[str, str | Mapping[str, str] | Sequence[str]]]) -> str:
    """Describe-style block: `Key:  value`; mappings and lists are indented beneath their key."""
    width = max((len(k) for k, v in pairs if isinstance(v, str)), default=0) + 2
    lines: list[str] = []
    for key, value in pairs:
        if isinstance(value, str):
            lines.append(f"{key + ':':<{width}}{safe(value)}".rstrip())
        elif isinstance(value, Mapping):
            lines.append(f"{key}:" + ("" if value else "  <none>"))
            lines.extend(f"  {safe(k)}={safe(v)}" for k, v in sorted(value.items()))
        else:
            lines.append(f"{key}:" + ("" if value else "  <none>"))
            lines.extend(f"  {safe(item)}" for item in value)
    return "\n".join(lines) + "\n"


def age(seconds: float) -> str:
    """Compact age as kubectl prints it: 42s, 5m, 3h, 12d (two units while still short)."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h"
    return f"{h // 24}d"
