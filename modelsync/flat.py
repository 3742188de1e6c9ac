"""Flat storage: a model's Params of one (device, dtype) as views into one 1-D buffer.

Paying per model instead of per array is what PyTorch's fused optimizers, apex's
multi-tensor apply and FSDP's flat parameters are for: with a flat buffer a conversion, a
sync or an optimizer step is a handful of whole-buffer operations however many Params there
are. Every conversion lays out its result this way; Params made on their own still work, at
per-array speed.

A `FlatStore` stays *intact* while every member still views it; re-homing a Param (a move)
breaks the old store, and code that wants the fast path asks `intact_store(params)` first.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from typing import Any

import numpy as np

from . import params as params_module
from .devices import Device, device_of, dtype_name, on_device
from .params import Param
from .transfers import copy_to
from .xp import concat_on


class FlatStore:
    """One buffer on one device holding its members, in order, as reshaped views.

    Ownership goes one way: each member holds its store (``Param.flat_store``), the store
    holds its members weakly. So a discarded model frees its Params, and with the last of
    them the store and its buffer, by reference counting alone."""

    __slots__ = ("buffer", "_members", "_ids", "_lost", "offsets", "sizes", "broken",
                 "grads", "grads_set", "__weakref__")

    def __init__(self, buffer: Any, sizes: Sequence[int]) -> None:
        self.buffer = buffer
        self._members: list[weakref.ref[Param]] = []
        self._ids: list[int] = []
        #: The weak references of members that have been freed (their callback appends them:
        #: a C call, so freeing a thousand-Param model runs no Python per Param).
        self._lost: list[weakref.ref[Param]] = []
        self.sizes = list(sizes)
        self.offsets = list(accumulate(self.sizes, initial=0))[:-1]  # (a C loop)
        self.broken = False
        #: The gradient buffer (made at the first backward pass, `ensure_grads`): each member
        #: accumulates into its view of it. ``grads_set`` counts the members whose ``.grad`` is
        #: that view (kept by `Param`): all of them means a step reads ``grads`` as it is.
        self.grads: Any = None
        self.grads_set = 0

    @property
    def members(self) -> list[Param | None]:
        """The members in buffer order (None for one that has been freed)."""
        return [ref() for ref in self._members]

    def hold(self, members: Sequence[Param]) -> None:
        """Take ``members`` (weakly). A member's death is recorded by ``list.append`` as the
        weak reference's callback: no Python function runs per freed Param."""
        self._members = list(map(weakref.ref, members, repeat(self._lost.append)))
        self._ids = list(map(id, members))

    def holds(self, group: Sequence[Param]) -> bool:
        """Whether ``group`` is exactly this store's members, in order, and none was moved
        away. (While every member is alive, their ids are theirs alone.)"""
        return not self.broken and not self._lost and list(map(id, group)) == self._ids

    @property
    def device(self) -> Device:
        return device_of(self.buffer)

    def views(self, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
        """Each member's slice of the buffer, reshaped."""
        buffer = self.buffer
        if type(buffer) is np.ndarray:
            return host_views(buffer, self.offsets, self.sizes, shapes)
        if hasattr(buffer, "reshape"):  # NumPy and CuPy: the method skips a Python wrapper
            return [buffer[o:o + n].reshape(shape)
                    for o, n, shape in zip(self.offsets, self.sizes, shapes, strict=True)]
        xp = self.device.xp
        return [xp.reshape(buffer[o:o + n], shape)
                for o, n, shape in zip(self.offsets, self.sizes, shapes, strict=True)]


    def ensure_grads(self) -> Any:
        """The gradient buffer, made (zeros, on the buffer's device, its dtype) and handed out
        to every live member as its view if it is not yet there. Members keep the gradient
        they hold until their next backward pass writes into the view."""
        if self.grads is None:
            buffer = self.buffer
            if isinstance(buffer, np.ndarray):
                grads = np.zeros_like(buffer)
            else:
                with on_device(self.device):  # (CuPy allocates on the current GPU)
                    grads = self.device.xp.zeros_like(buffer)
            members = self.members
            views = _views_of(grads, self.offsets, self.sizes,
                              [p.shape if p is not None else (n,) for p, n in
                               zip(members, self.sizes, strict=True)])
            self.grads = grads
            for p, view in zip(members, views, strict=True):
                if p is not None:
                    p.set_grad_view(view)
        return self.grads

    def all_grads_set(self) -> bool:
        """Whether every member's ``.grad`` is its view of ``grads``: the buffer then holds
        the whole store's gradient, ready to read (or reduce) in place."""
        return self.grads is not None and self.grads_set == len(self._ids)


def _views_of(buffer: Any, offsets: Sequence[int], sizes: Sequence[int],
              shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    if type(buffer) is np.ndarray:
        return host_views(buffer, offsets, sizes, shapes)
    if hasattr(buffer, "reshape"):
        return [buffer[o:o + n].reshape(shape)
                for o, n, shape in zip(offsets, sizes, shapes, strict=True)]
    xp = device_of(buffer).xp
    return [xp.reshape(buffer[o:o + n], shape)
            for o, n, shape in zip(offsets, sizes, shapes, strict=True)]


def host_views(buffer: np.ndarray, offsets: Sequence[int], sizes: Sequence[int],
               shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of a 1-D host ``buffer``, one per (offset, size, shape), made a few at a time:
    the members of one shape whose offsets step evenly (every layer of a stack of like
    layers) are the rows of one strided array, and iterating it makes their views in C.
    A thousand slices and reshapes cost more than the copy of a 2 MiB model."""
    if not buffer.flags.c_contiguous:
        return [buffer[o:o + n].reshape(shape)
                for o, n, shape in zip(offsets, sizes, shapes, strict=True)]
    offsets = list(offsets)
    views: list[Any] = [None] * len(offsets)
    item = buffer.itemsize
    for shape, where in _shape_groups(list(shapes)):
        starts = offsets[where.start:where.stop:where.step] if type(where) is range else [
            offsets[i] for i in where]
        step = starts[1] - starts[0] if len(starts) > 1 else 0
        if (not shape or step <= 0 or step < math.prod(shape)
                or starts != list(range(starts[0], starts[-1] + 1, step))):
            for i in where:  # (a 0-d member, or no even step: one slice each)
                o = offsets[i]
                views[i] = buffer[o:o + sizes[i]].reshape(shape)
            continue
        inner = [item] * len(shape)  # (C-order strides of one member)
        for d in range(len(shape) - 2, -1, -1):
            inner[d] = inner[d + 1] * shape[d + 1]
        rows = np.ndarray((len(where), *shape), dtype=buffer.dtype, buffer=buffer,
                          offset=starts[0] * item, strides=(step * item, *inner))
        if type(where) is range:
            views[where.start:where.stop:where.step] = rows  # (the rows' views, made in C)
        else:
            for i, view in zip(where, rows, strict=True):
                views[i] = view
    return views


def _shape_groups(shapes: list[tuple[int, ...]]
                  ) -> list[tuple[tuple[int, ...], range | list[int]]]:
    """(shape, indices) covering every index once, each group of one shape. A sequence that
    repeats with a short period (a stack of like layers: weight, bias, weight, bias...) gives
    one range per place in the period, found by list comparisons alone."""
    count = len(shapes)
    for period in range(1, min(count, 8) + 1):
        if shapes[period:] == shapes[:count - period]:
            return [(tuple(shapes[j]), range(j, count, period)) for j in range(period)]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(tuple(shape), []).append(i)
    return list(by_shape.items())


def intact_store(group: Sequence[Param]) -> FlatStore | None:
    """The store that holds exactly ``group``, in order, if it is intact; else None."""
    if not group:
        return None
    store = group[0].flat_store
    if store is None or not store.holds(group):
        return None
    return store


def group_by_dtype(found: Sequence[Param]) -> dict[str, list[Param]]:
    """Params grouped by dtype name, each group in the given order."""
    groups: dict[str, list[Param]] = {}
    for p in found:
        groups.setdefault(dtype_name(p.dtype), []).append(p)
    return groups


def gather(group: Sequence[Param], read: Callable[[Param], Any]) -> Any:
    """One 1-D array of ``group``'s values on their device: the store's buffer when the group
    is an intact store (no copy), else a concatenation (one local pass)."""
    store = intact_store(group)
    if store is not None:
        return store_values(store, group, read)
    return concat_on([read(p) for p in group], group[0].device)


def store_values(store: FlatStore, group: Sequence[Param], read: Callable[[Param], Any]) -> Any:
    """The buffer of ``store``, which holds exactly ``group``, once each member is read
    (wrap mode: brought up to date in place; while no Param anywhere is wrap-linked a read
    changes nothing, so none is made)."""
    if params_module.linked:
        for p in group:
            read(p)
    return store.buffer


def copy_flat(group: Sequence[Param], target: Device, *, reason: str,
              read: Callable[[Param], Any], source: Device | None = None) -> Any:
    """``group``'s values as one new 1-D buffer on ``target``: one counted transfer when the
    group lives on one device (Params scattered over devices are copied one by one).
    ``source``: the one device the group is on, when the caller knows it (asked otherwise)."""
    if source is None:
        devices = {p.device for p in group}
        if len(devices) > 1:
            return concat_on([copy_to(read(p), target, reason=reason) for p in group], target)
        source = devices.pop()
    if source == target and intact_store(group) is None:
        return concat_on([read(p) for p in group], target)  # (already a new buffer on target)
    return copy_to(gather(group, read), target, reason=reason)


def sizes_of(group: Sequence[Param]) -> list[int]:
    return [math.prod(p.shape) for p in group]


def adopt(members: Sequence[Param], buffer: Any, grads: Sequence[Any]) -> FlatStore:
    """Re-home ``members`` into views of ``buffer`` with ``grads`` (their old storage is
    dropped) and return the store."""
    store = FlatStore(buffer, sizes_of(members))
    views = store.views([p.shape for p in members])
    for p, view, grad in zip(members, views, grads, strict=True):
        p.rehome(view, grad, store=store)
    store.hold(members)
    return store


def params_on(buffer: Any, like: Sequence[Param], *, sizes: Sequence[int] | None = None,
              shapes: Sequence[tuple[int, ...]] | None = None) -> list[Param]:
    """New Params viewing ``buffer``, one per Param of ``like`` (same shape, name, origin).
    ``sizes`` and ``shapes``: ``like``'s, when the caller keeps them (a conversion's cached
    layout), so a thousand Params are not asked again."""
    store = FlatStore(buffer, sizes_of(like) if sizes is None else sizes)
    where = store.device
    views = store.views([p.shape for p in like] if shapes is None else shapes)
    made = Param.twins_in_store(views, where, like, store)
    store.hold(made)
    return made
