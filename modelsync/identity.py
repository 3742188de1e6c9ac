"""IdentityMap: a map keyed by object identity whose entries go when their key does.

What a per-object cache or mark needs when the object cannot carry it itself (layers are
slotted attrs classes, with no room for extra attributes) and may not be hashable (an attrs
class with ``eq=True``): the map holds only a weak reference to each key, so an entry never
keeps its key alive, and it is removed the moment the key is freed, by reference counting
alone (no cyclic collector needed). A value must not refer to its key, or the key lives on.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class _KeyedRef(weakref.ref):
    """A weak reference that remembers the id of its referent (its key in the map)."""

    __slots__ = ("key",)

    def __init__(self, obj: Any, callback: Any, key: int) -> None:
        super().__init__(obj, callback)
        self.key = key

    def __new__(cls, obj: Any, callback: Any, key: int) -> _KeyedRef:  # noqa: ARG004
        return super().__new__(cls, obj, callback)


def _dropper(owner: weakref.ref[IdentityMap[Any]]) -> Callable[[Any], None]:
    # (the map weakly: a map held by what it maps must not be kept alive by its own entries)
    def drop(dead: _KeyedRef) -> None:
        found = owner()
        if found is None:
            return
        entry = found._entries.get(dead.key)
        if entry is not None and entry[0] is dead:  # (not an entry made since for a new key)
            del found._entries[dead.key]

    return drop


class IdentityMap(Generic[V]):
    """``key -> value`` by ``id(key)``, holding each key weakly (see the module doc)."""

    __slots__ = ("_entries", "_drop", "__weakref__")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, V]] = {}
        self._drop = _dropper(weakref.ref(self))  # (one callback for every entry)

    def get(self, key: Any, default: Any = None) -> Any:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0]() is key:
            return entry[1]
        return default

    def set(self, key: Any, value: V) -> bool:
        """Store ``value`` for ``key``; False (nothing stored) if ``key`` cannot be weakly
        referenced, so the caller knows it has no entry to rely on."""
        k = id(key)
        try:
            ref = _KeyedRef(key, self._drop, k)
        except TypeError:
            return False
        self._entries[k] = (ref, value)
        return True

    def setdefault(self, key: Any, value: V) -> V | None:
        """The value stored for ``key``, else ``value`` stored for it; None if ``key`` cannot
        be weakly referenced (nothing stored)."""
        k = id(key)
        entry = self._entries.get(k)
        if entry is not None and entry[0]() is key:
            return entry[1]
        try:
            ref = _KeyedRef(key, self._drop, k)
        except TypeError:
            return None
        self._entries[k] = (ref, value)
        return value

    def pop(self, key: Any, default: Any = None) -> Any:
        entry = self._entries.pop(id(key), None)
        if entry is not None and entry[0]() is key:
            return entry[1]
        return default

    def values(self) -> list[V]:
        """The values whose keys are alive (a snapshot)."""
        return [value for ref, value in list(self._entries.values()) if ref() is not None]

    def __contains__(self, key: Any) -> bool:
        entry = self._entries.get(id(key))
        return entry is not None and entry[0]() is key

    def __len__(self) -> int:
        return len(self._entries)
