"""Flat optimizer state: one kernel per step over a run of Params that view one buffer.

A conversion lays a model's Params of each dtype out as views into one 1-D buffer
(`modelsync.flat`). When an optimizer's bound Params include a run of consecutive members
of such an intact store, it keeps their state in matching 1-D buffers and updates the whole
run at once: the gradients (separate arrays, from backprop) are gathered into one
preallocated buffer and one kernel updates the params' buffer in place. The per-Param state
seen by ``state`` and ``state_dict`` are views into the flat state, so nothing else changes.

On the host the run is cut into *segments*: a large Param is its own segment and is updated
from its own gradient (gathering it would cost a copy of its bytes), while neighbouring small
Params are gathered and updated together. Elsewhere a run is one segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..params import Param
from ..xp import concat_flat

if TYPE_CHECKING:
    from .base import Slot

#: On the host a Param of at least this many elements is updated from its own gradient:
#: gathering it costs a copy of its bytes, more than the one extra kernel call it saves.
LARGE = 1 << 12


class Segment:
    """A stretch of a run updated by one kernel call: members ``lo:hi`` of the run, the
    params' storage ``data`` (a view of the store buffer), the gradient buffer they are
    gathered into (None when the segment is one member's gradient as it comes) and the
    segment's `Slot` (its state, its kernel)."""

    __slots__ = ("lo", "hi", "data", "grad_buffer", "slot")

    def __init__(self, lo: int, hi: int, data: Any, grad_buffer: Any, slot: Slot) -> None:
        self.lo = lo
        self.hi = hi
        self.data = data
        self.grad_buffer = grad_buffer
        self.slot = slot


class FlatGroup:
    """The optimizer's view of one run of a store: its members (in store order), their
    offsets in the run, the whole-run state buffers and the segments that update them.

    While the group is live its ``step`` and state are the truth; the members' own Slots
    (what ``state`` and ``state_dict`` read) are brought up to date by `flush`.
    """

    __slots__ = ("store", "members", "device", "dtype", "offsets", "sizes", "step",
                 "buffers", "segments", "fresh", "rebinds", "host", "dissolved", "pending")

    def __init__(self, store: Any, members: list[Param], device: Any, start: int,
                 sizes: list[int], step: int, buffers: list[Any]) -> None:
        self.store = store
        self.members = members
        self.device = device
        self.dtype = store.buffer.dtype
        self.sizes = sizes
        self.offsets = []
        total = start
        for size in sizes:
            self.offsets.append(total)
            total += size
        self.step = step
        self.buffers = buffers  # whole-run state, 1-D, one per state name
        self.segments: list[Segment] = []
        self.fresh = True  # members' Slots view the current state arrays
        self.rebinds = False  # the kernel makes new state arrays (array-API path)
        self.host = device.kind == "host"
        self.dissolved = False  # fell back: its members' Slots are the truth now
        self.pending = False  # not stepped yet: its members have no Slots

    @property
    def start(self) -> int:
        return self.offsets[0]

    @property
    def end(self) -> int:
        return self.offsets[-1] + self.sizes[-1]

    def state(self) -> list[Any]:
        """The whole-run state arrays (1-D, one per state name), current."""
        if len(self.segments) == 1:
            return self.segments[0].slot.arrays
        return self.buffers

    def run(self) -> bool:
        """One update of every member; False (and nothing done) if a member has no gradient."""
        members = self.members
        grads = [p._grad for p in members]  # Param.grad without the property call (hot loop)
        for g in grads:
            if g is None:
                return False
        for p in members:
            # p.writable() for the linked (wrap-mode) Params: it is coherence bookkeeping
            # that does nothing for the others, and skipping the call halves this loop
            if p._link is not None:
                p.writable()
        self.step += 1
        step = self.step
        host = self.host
        for seg in self.segments:
            slot = seg.slot
            slot.step = step
            if seg.hi - seg.lo == 1:
                g = grads[seg.lo]
                grad = g.reshape(-1) if host else self.device.xp.reshape(g, (-1,))
            elif host:
                grad = np.concatenate(grads[seg.lo:seg.hi], axis=None, out=seg.grad_buffer)
            else:
                grad = _concat_device(grads[seg.lo:seg.hi], slot)
            slot.kernel(seg.data, grad, slot)
        if self.rebinds:
            self.fresh = False
        return True


def _concat_device(arrays: Sequence[Any], slot: Slot) -> Any:
    if slot.native is not None:  # CuPy: make the group's GPU current
        with slot.native:
            return concat_flat(arrays)
    return concat_flat(arrays)


def runs(params: Sequence[Param]) -> tuple[list[tuple[Any, list[Param], int]], list[Param]]:
    """Split ``params`` into runs of at least two consecutive members of one intact store
    (as ``(store, members in store order, index of the first)``) and the rest."""
    by_store: dict[int, tuple[Any, list[tuple[int, Param]]]] = {}
    index_of: dict[int, dict[int, int]] = {}
    rest: list[Param] = []
    for p in params:
        store = p._store
        if store is None or store.broken:
            rest.append(p)
            continue
        key = id(store)
        if key not in index_of:
            index_of[key] = {id(m): i for i, m in enumerate(store.members)}
            by_store[key] = (store, [])
        position = index_of[key].get(id(p))
        if position is None:  # defensive: a Param that claims a store it is not in
            rest.append(p)
            continue
        by_store[key][1].append((position, p))
    found = []
    for store, placed in by_store.values():
        placed.sort(key=lambda item: item[0])
        run: list[tuple[int, Param]] = []
        for item in placed:
            if run and item[0] != run[-1][0] + 1:
                _close(store, run, found, rest)
                run = []
            run.append(item)
        _close(store, run, found, rest)
    return found, rest


def _close(store: Any, run: list[tuple[int, Param]], found: list[Any], rest: list[Param]
           ) -> None:
    if len(run) >= 2:
        found.append((store, [p for _, p in run], run[0][0]))
    else:
        rest.extend(p for _, p in run)


def segment_bounds(sizes: Sequence[int], split: bool) -> list[tuple[int, int]]:
    """Member ranges ``(lo, hi)`` of the segments: with ``split`` each Param of `LARGE`
    elements or more stands alone and the small ones between them go together."""
    if not split:
        return [(0, len(sizes))]
    bounds = []
    lo = 0
    for i, size in enumerate(sizes):
        if size >= LARGE:
            if lo < i:
                bounds.append((lo, i))
            bounds.append((i, i + 1))
            lo = i + 1
    if lo < len(sizes):
        bounds.append((lo, len(sizes)))
    return bounds


def member_views(arrays: Sequence[Any], group: FlatGroup) -> list[list[Any]]:
    """For each member, its views of the whole-run ``arrays``, in its shape."""
    base = group.start
    views = []
    for p, offset, size in zip(group.members, group.offsets, group.sizes, strict=True):
        lo = offset - base
        if group.host:
            views.append([a[lo:lo + size].reshape(p.shape) for a in arrays])
        else:
            xp = group.device.xp
            views.append([xp.reshape(a[lo:lo + size], p.shape) for a in arrays])
    return views
