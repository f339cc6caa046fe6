"""Bounds on everything that crosses the wire (issue 11, item 9), in one place: names,
label keys and values, free text, counts and numbers. A refusal is INVALID_ARGUMENT naming
the field, with the bad value truncated, so a 1 MB name cannot hide the real error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from shared.errors import InvalidArgument

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_TEXT = 256
SHOWN = 40  # characters of a bad value quoted back
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?$")


def shown(value: object) -> str:
    """`value` as quoted in a refusal: repr'd, control characters escaped, cut short."""
    text = str(value)
    cut = text[:SHOWN] + ("..." if len(text) > SHOWN else "")
    return repr(cut) + (f" ({len(text)} characters)" if len(text) > SHOWN else "")


def text(field: str, value: str, max_len: int = MAX_TEXT) -> str:
    """Free text: at most `max_len` characters, none of them a control character."""
    if len(value) > max_len:
        raise InvalidArgument(f"{field}: at most {max_len} characters, got {shown(value)}")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field}: control characters are not allowed, got {shown(value)}")
    return value


def labels(field: str, values: Mapping[str, str]) -> None:
    if len(values) > MAX_LABELS:
        raise InvalidArgument(f"{field}: at most {MAX_LABELS} labels, got {len(values)}")
    for key, value in values.items():
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(
                f"{field}: key {shown(key)} is invalid (1-{MAX_LABEL_KEY} of A-Z a-z 0-9 _ . - /)"
            )
        text(f"{field}[{key}]", value, MAX_LABEL_VALUE)


def number(field: str, value: float, low: float, high: float) -> float:
    """A finite number in [low, high] (NaN and infinities are refused)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(
            f"{field}: must be a finite number in [{low:g}, {high:g}], got {value}"
        )
    return value


def count(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: must be in [{low}, {high}], got {value}")
    return value
