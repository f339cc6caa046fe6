"""An undo log for one event: the core changes its maps only through it, so an event whose
`Persist` could not be written is taken back as if it had never happened."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

_ABSENT: Any = object()


class Journal:
    def __init__(self) -> None:
        self._undo: list[tuple[Any, Any, Any]] = []

    def put(self, mapping: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((mapping, key, mapping.get(key, _ABSENT)))
        mapping[key] = value

    def pop(self, mapping: MutableMapping[Any, Any], key: Any) -> Any:
        old = mapping.get(key, _ABSENT)
        if old is _ABSENT:
            return None
        self._undo.append((mapping, key, old))
        del mapping[key]
        return old

    def begin(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        for mapping, key, old in reversed(self._undo):
            if old is _ABSENT:
                mapping.pop(key, None)
            else:
                mapping[key] = old
        self._undo.clear()
