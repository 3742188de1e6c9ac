"""Flat optimizer state: one kernel per step over a run of Params that view one buffer.

A conversion lays a model's Params of each dtype out as views into one 1-D buffer
(`modelsync.flat`). When an optimizer's bound Params include a run of consecutive members
of such an intact store, it keeps their state in matching 1-D buffers and updates the whole
run at once: the gradients (separate arrays, from backprop) are gathered into one
preallocated buffer and one kernel updates the params' buffer in place. While the group
lives, its step count and buffers are the truth; each member's state (what ``state`` and
``state_dict`` show) is a view of them, made when asked for.

On the host the run is cut into *segments*: a large Param is its own segment and is updated
from its own gradient (gathering it would cost a copy of its bytes), while neighbouring small
Params are gathered and updated together. Elsewhere a run is one segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from ..flat import FlatStore
from ..params import Param
from ..xp import concat_on
from .kernel import Kernel, run_scaled, scale_in_place
from .state import State

#: On the host a Param of at least this many elements is updated from its own gradient:
#: gathering it costs a copy of its bytes, more than the one extra kernel call it saves.
LARGE = 1 << 12


@attrs.define(slots=True, eq=False)
class Segment:
    """A stretch of a run updated by one kernel call: members ``lo:hi`` of the run, elements
    ``start:end`` of the store's buffer (and of its gradient buffer), the params' storage
    ``data`` (a view of the store buffer), the gradient buffer they are gathered into (None
    when the segment is one member's gradient as it comes, or when the store's gradient
    buffer holds them all), its state arrays (views of the group's buffers, which an
    array-API kernel may replace) and its kernel."""

    lo: int
    hi: int
    start: int
    end: int
    data: Any
    grad_buffer: Any
    arrays: list[Any]
    kernel: Kernel


class FlatGroup:
    """The optimizer's state for one run of a store: its members (in store order), where
    each starts in the store, the step count, the whole-run state buffers and the segments
    that update them. ``has_state``: its members have state to show (it has stepped, or was
    made from their state); a group made for Params never stepped has none until it steps."""

    __slots__ = ("store", "device", "members", "offsets", "sizes", "step", "buffers",
                 "segments", "has_state")

    def __init__(self, store: FlatStore, first: int, members: list[Param], step: int,
                 buffers: list[Any], segments: list[Segment], *, has_state: bool) -> None:
        self.store = store
        self.device = store.device  # (where its buffer and state live: fixed)
        self.members = members
        self.offsets = store.offsets[first:first + len(members)]
        self.sizes = store.sizes[first:first + len(members)]
        self.step = step
        self.buffers = buffers  # whole-run state, 1-D, one per state name
        self.segments = segments
        self.has_state = has_state

    @property
    def key(self) -> tuple[int, ...]:
        """Which Params it holds (identities, in store order)."""
        return tuple(id(p) for p in self.members)

    def intact(self) -> bool:
        """Every member still views the store (none has moved)."""
        return not self.store.broken

    def state(self) -> list[Any]:
        """The whole-run state arrays (1-D, one per state name), current."""
        if len(self.segments) == 1:
            return self.segments[0].arrays
        return self.buffers

    def member_states(self) -> dict[Param, State]:
        """Each member's state: views of the group's (empty if it has none yet)."""
        if not self.has_state:
            return {}
        device, step = self.device, self.step
        return {p: State(device, step, views)
                for p, views in zip(self.members, member_views(self.state(), self), strict=True)}

    def run(self, grads: list[Any] | None, scale: float | None = None) -> None:
        """One update of every member, from ``grads`` (one per member, none missing), or,
        with None, from the store's gradient buffer, which holds every member's gradient.
        ``scale``: each gradient is first multiplied by it, in place (in the update's own
        pass where the kernel is compiled)."""
        self.step += 1
        self.has_state = True
        step = self.step
        if grads is None:
            whole = self.store.grads
            for seg in self.segments:
                run_scaled(seg.kernel, seg.data, whole[seg.start:seg.end], step, scale)
            return
        if scale is not None:
            for g in grads:  # (the members' own arrays: what they hold after the step)
                scale_in_place(g, scale)
        host = self.device.kind == "host"
        for seg in self.segments:
            if seg.hi - seg.lo == 1:
                g = grads[seg.lo]
                grad = g.reshape(-1) if host else self.device.xp.reshape(g, (-1,))
            elif host:
                grad = np.concatenate(grads[seg.lo:seg.hi], axis=None, out=seg.grad_buffer)
            else:
                grad = concat_on(grads[seg.lo:seg.hi], self.device)
            seg.kernel(seg.data, grad, step)


def runs(params: Sequence[Param]) -> tuple[list[tuple[FlatStore, list[Param], int]],
                                           list[Param]]:
    """Split ``params`` into runs of at least two consecutive members of one intact store
    (as ``(store, members in store order, index of the first)``) and the rest."""
    by_store: dict[int, tuple[FlatStore, list[tuple[int, Param]]]] = {}
    index_of: dict[int, dict[int, int]] = {}
    rest: list[Param] = []
    for p in params:
        store = p.flat_store
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
    found: list[tuple[FlatStore, list[Param], int]] = []
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


def _close(store: FlatStore, run: list[tuple[int, Param]], found: list[Any],
           rest: list[Param]) -> None:
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
    base = group.offsets[0]
    host = group.device.kind == "host"
    views = []
    for p, offset, size in zip(group.members, group.offsets, group.sizes, strict=True):
        lo = offset - base
        if host:
            views.append([a[lo:lo + size].reshape(p.shape) for a in arrays])
        else:
            xp = group.device.xp
            views.append([xp.reshape(a[lo:lo + size], p.shape) for a in arrays])
    return views
