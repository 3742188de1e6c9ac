"""Wrap mode's lazy coherence: an original Param and its device twin, kept in step by hand-over.

Like a two-party cache protocol. Each `Link` knows which side holds the newest values
("both" when they agree). A read of the stale side pulls once; a write through the API
(optimizer step, assign, sync, load_into) first brings its side up to date and then makes it
the newest. So training the wrapper moves nothing, reading the original pulls once, and
writes on both sides compose in program order.
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
import numpy as np

from . import flat
from .devices import device_of
from .errors import CoherenceError
from .identity import IdentityMap
from .params import Param
from .transfers import copy_to
from .tree import buffers, params

BOTH, ORIGINAL, TWIN = "both", "original", "twin"
_collecting = False  # True while a collected wrapper is being detached (see _forget)


class Protection:
    """A host array made read-only while it backs wrapped originals, with the writable view
    they write through and how many of them there are (two Params may be built over one
    array; the last to unlink makes it writable again)."""

    __slots__ = ("array", "view", "users", "__weakref__")

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.view = array.view()  # (made while the array is still writable)
        self.users = 1
        array.flags.writeable = False


#: id(host array) -> its Protection, held by the Links that use it (an entry goes with them)
_protected: weakref.WeakValueDictionary[int, Protection] = weakref.WeakValueDictionary()

#: flat store -> how many of its members are linked now (held weakly). A store absent here
#: has no linked member, so a sync may read and write its buffer whole without asking each
#: member (`has_links`). Stores are only ever made over unlinked Params (conversions make
#: new ones; a move refuses linked ones), so counting at link and unlink is enough.
_linked_stores: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def has_links(store: Any) -> bool:
    """Whether any member of the flat ``store`` is linked to a wrap-mode twin: O(1)."""
    return store in _linked_stores


_live_links = [0]  # how many Links are linked now, in the whole process


def any_links() -> bool:
    """Whether any Param at all is linked now: when none is, a write needs no hand-over."""
    return _live_links[0] > 0


class Link:
    """The coupling of one original Param and its wrap-mode twin."""

    __slots__ = ("original", "twin", "newest", "_protection", "_stores", "_linked")

    def __init__(self, original: Param, twin: Param) -> None:
        self.original = original
        self.twin = twin
        self.newest = BOTH
        self._protection: Protection | None = None
        original.set_link(self)
        twin.set_link(self)
        self._stores = tuple(s for s in (original.flat_store, twin.flat_store) if s is not None)
        for store in self._stores:
            _linked_stores[store] = _linked_stores.get(store, 0) + 1
        self._linked = True
        _live_links[0] += 1
        self._protect_original()

    def _protect_original(self) -> None:
        """Make the original's host array read-only, so a raw write raises instead of being
        lost; the Param keeps a writable view for writes through the API."""
        data = self.original.storage()
        if not isinstance(data, np.ndarray):
            return
        protection = _protected.get(id(data))
        if protection is not None and protection.array is data:  # another Param over it
            protection.users += 1
        elif data.flags.writeable:
            protection = _protected[id(data)] = Protection(data)
        else:
            return
        self._protection = protection
        self.original.set_storage(protection.view, readonly=data)

    def _side(self, p: Param) -> str:
        return ORIGINAL if p is self.original else TWIN

    def before_read(self, p: Param) -> None:
        """Pull the other side's values into ``p`` if they are newer."""
        if self.newest == BOTH or self.newest == self._side(p):
            return
        other = self.twin if p is self.original else self.original
        p.storage()[...] = copy_to(other.storage(), p.device, reason="wrap: pull newer values",
                               guarded=not _collecting)
        self.newest = BOTH

    def before_write(self, p: Param, *, overwrite: bool = False) -> None:
        """Bring ``p`` up to date (unless every value is about to be replaced), then mark it
        as the side about to hold the newest values."""
        if not overwrite:
            self.before_read(p)
        self.newest = self._side(p)

    def unlink(self) -> None:
        """Cut the link: the original becomes writable again and each side independent."""
        protection = self._protection
        if protection is not None:
            protection.users -= 1
            if protection.users == 0:  # the last Param over this array lets it go
                _protected.pop(id(protection.array), None)
                protection.array.flags.writeable = True
                self.original.set_storage(protection.array)
            else:  # still protected for another Param: keep writing through the view
                self.original.set_storage(protection.view)
            self._protection = None
        for store in self._stores:  # (once: a collected wrapper's links may be cut twice)
            left = _linked_stores.get(store, 0) - 1
            if left > 0:
                _linked_stores[store] = left
            else:
                _linked_stores.pop(store, None)
        self._stores = ()
        if self._linked:
            self._linked = False
            _live_links[0] -= 1
        self.original.set_link(None)
        self.twin.set_link(None)


@attrs.define(eq=False)
class Wrapping:
    """One wrapper's tie to its original: the original, the links of its Params, and the
    finalizer that detaches the wrapper if it is freed undetached (cancelled by detach, so
    a detached wrapper holds nothing of its original)."""

    original: Any
    links: list[Link]
    finalizer: Any = None

    def write_back(self) -> None:
        """Bring every original Param up to date with its twin: one transfer per twin store
        whose members are all newer (the usual case after training), else one per Param."""
        stale = [link for link in self.links if link.newest == TWIN]
        for link in _pull_whole_stores(stale) if len(stale) > 1 else stale:
            link.before_read(link.original)

    def release(self) -> None:
        """Bring both sides up to date (pending device updates to the original, pending
        original writes to the twin), then cut every link. A failed transfer raises before
        any link is cut, so the wrapper can be detached again."""
        self.write_back()
        for link in self.links:
            link.before_read(link.twin)
        for link in self.links:
            link.unlink()


def _pull_whole_stores(stale: list[Link]) -> list[Link]:
    """Pull each twin store whose every member is stale on the original side in one
    transfer, scattering it into the originals; return the links left to pull one by one."""
    by_store: dict[int, list[Link]] = {}
    for link in stale:
        by_store.setdefault(id(link.twin.flat_store), []).append(link)
    left: list[Link] = []
    for links in by_store.values():
        store = flat.intact_store([link.twin for link in links])
        targets = {link.original.device for link in links}
        if store is None or len(targets) != 1:
            left.extend(links)
            continue
        buffer = copy_to(store.buffer, targets.pop(), reason="wrap: pull newer values",
                         guarded=not _collecting)
        xp = device_of(buffer).xp
        for link, offset, size in zip(links, store.offsets, store.sizes, strict=True):
            link.original.storage()[...] = xp.reshape(buffer[offset:offset + size],
                                                  link.original.shape)
            link.newest = BOTH
    return left


#: live wrapper -> its Wrapping (held weakly by the wrapper: the entry goes with it)
_wrappings: IdentityMap[Wrapping] = IdentityMap()


def link_params(original: Any, twins: dict[int, Param]) -> Wrapping:
    """Link every Param and Buffer of ``original`` to its twin (``twins`` is keyed by id):
    a Buffer is kept coherent exactly as a Param is (a training step updates the twin's
    running statistics and moves nothing; a read of the original pulls once)."""
    return Wrapping(original, [Link(p, twins[id(p)])
                               for p in [*params(original), *buffers(original)]])


def register_wrapper(wrapper: Any, wrapping: Wrapping) -> None:
    """Record ``wrapper``; if it is freed undetached, it is detached then."""
    _wrappings.set(wrapper, wrapping)  # (registered layers take weak references)
    wrapping.finalizer = weakref.finalize(wrapper, _forget, wrapping)


def _forget(wrapping: Wrapping) -> None:
    """The wrapper was freed undetached: its updates go back to the original and the links
    go, even inside a transfer_guard("disallow") block."""
    global _collecting
    _collecting = True
    try:
        wrapping.release()
    finally:
        _collecting = False
        for link in wrapping.links:
            link.unlink()


def wrapping_of(model: Any) -> Wrapping | None:
    """The Wrapping of ``model`` if it is a live wrapper, else None."""
    return _wrappings.get(model)


def detach_wrapper(wrapper: Any) -> None:
    """Write pending updates back to the original, then cut every link of ``wrapper``."""
    wrapping = _wrappings.get(wrapper)
    wrapping.release()  # raises (and stays a wrapper) if a transfer fails
    _wrappings.pop(wrapper)
    wrapping.finalizer.detach()  # (it held the Wrapping, and through it the original)


def check_unlinked(model: Any, action: str) -> None:
    """CoherenceError if any Param of ``model`` takes part in a wrap: an original has one
    wrapper at a time, and neither it nor its wrapper may be moved or wrapped again."""
    for p in [*params(model), *buffers(model)]:
        link = p.link
        if link is not None:
            role = "a wrapped original" if link.original is p else "a wrapper"
            raise CoherenceError(
                f"cannot {action} {role}: an original has one wrapper at a time and its "
                "Params are linked by to_device(mode=\"wrap\"); call ms.detach(wrapper) first")
