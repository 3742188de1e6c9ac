"""Change notification for model trees: who must hear that a layer, a TrackedList or a Param
changed.

A cached walk of a model (tree.py) subscribes to every layer, TrackedList and Param it passed
through. Assigning a layer field, editing a TrackedList or re-homing a Param (`Param.rehome`:
new storage, maybe on another device) tells exactly the caches that hold that node, and no
other: editing or moving model A leaves model B's caches valid, and a change to a node no
cache holds (every assignment while a layer is being built) costs one dict look-up.
Subscriptions are weak both ways: they keep neither the node nor the cache alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from .identity import IdentityMap


class Listener(Protocol):
    def invalidate(self) -> None: ...


#: node -> weak references to the caches that hold it
_subscribers: IdentityMap[list[Any]] = IdentityMap()


def subscribe(nodes: Iterable[Any], listener: Listener) -> bool:
    """Have ``listener.invalidate()`` called at the next change of any of ``nodes``; False if
    a node cannot be watched (no weak references to it), so the caller must not cache."""
    ref = weakref.ref(listener)
    setdefault = _subscribers.setdefault
    for node in nodes:
        refs = setdefault(node, [])
        if refs is None:
            return False
        if len(refs) >= 8:  # drop the references to caches that have since died
            refs[:] = [r for r in refs if r() is not None]
        refs.append(ref)
    return True


def changed(node: Any) -> None:
    """``node`` changed: invalidate every cache that holds it (they subscribe again when they
    walk the tree afresh)."""
    refs = _subscribers.pop(node)
    if refs:
        for ref in refs:
            listener = ref()
            if listener is not None:
                listener.invalidate()


def tracking_setattr(original: Any) -> Any:
    """A layer class's ``__setattr__`` that reports each field assignment."""

    def __setattr__(self: Any, name: str, value: Any) -> None:  # noqa: N807
        try:
            original(self, name, value)
        finally:
            changed(self)

    __setattr__.__ms_tracking__ = True
    return __setattr__


def _mutator(name: str) -> Any:
    method = getattr(list, name)

    def mutate(self: TrackedList, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:  # (a failed edit may still have changed the list: sort with a bad key)
            changed(self)

    mutate.__name__ = name
    return mutate


class TrackedList(list):
    """A list whose changes invalidate the cached walks that hold it (layers hold their
    children in one, e.g. ``Chain.layers``); otherwise an ordinary list."""


for _method in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
                "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(TrackedList, _method, _mutator(_method))
