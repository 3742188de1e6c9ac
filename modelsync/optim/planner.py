"""Planning a step: which bound Params are updated in flat runs (`flatgroup`) and which one
by one, and whose state must first follow its Param to another device.

A plan stays good until a Param moves (its store breaks, or a Param updated on its own now
lives elsewhere) or a run falls back to per-Param steps (a member had no gradient); the
optimizer then asks for a new one. `make_plan` changes nothing it was given: it returns the
plan and the per-Param states that go with it, and the optimizer installs both, so a
transfer refused while planning (transfer_guard) leaves the optimizer as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..flat import FlatStore
from ..params import Param
from ..xp import concat_on, zeros_on
from . import flatgroup, kernel
from .flatgroup import FlatGroup, Segment
from .kernel import Scalars
from .state import State, follow


class Plan:
    """How steps go: the flat groups, the Params updated one by one (in bound order), and
    whether a new plan is needed before the next step."""

    __slots__ = ("groups", "singles", "stale")

    def __init__(self, groups: list[FlatGroup], singles: list[Param]) -> None:
        self.groups = groups
        self.singles = singles
        self.stale = False

    def needs_replan(self) -> bool:
        return self.stale or any(not g.intact() for g in self.groups)


def make_plan(rule: Any, scalars: Scalars, params: Sequence[Param],
              states: dict[Param, State], old: Plan | None, *, flat: bool
              ) -> tuple[Plan, dict[Param, State]]:
    """A new plan for ``params`` and the per-Param states of the Params it updates one by
    one. The state of the old plan's groups is carried over (one transfer per state array
    when a whole group moved together), and every per-Param state is on its Param's device.
    ``flat=False``: no flat runs (a transform that does not write its Params)."""
    states = dict(states)
    carried: dict[tuple[int, ...], tuple[int, list[Any]]] = {}
    for group in old.groups if old is not None else ():
        if not group.has_state:
            continue  # never stepped: made afresh below
        if group.intact():
            carried[group.key] = (group.step, group.state())
            continue
        moved_to = {p.device for p in group.members}
        if len(moved_to) == 1 and group.device not in moved_to:  # moved together
            carried[group.key] = (group.step, follow(group.state(), moved_to.pop()))
        else:
            states.update(group.member_states())  # they went separate ways
    for p in params:
        state = states.get(p)
        if state is not None and state.device != p.device:
            states[p] = state.follow(p.device)
    groups: list[FlatGroup] = []
    singles: list[Param] = list(params)
    if flat:
        found, singles = flatgroup.runs(params)
        for store, members, first in found:
            group = _make_group(rule, scalars, store, members, first, carried, states)
            if group is None:
                singles.extend(members)
                continue
            groups.append(group)
            for p in members:
                states.pop(p, None)  # the group's state is theirs now
        order = {id(p): i for i, p in enumerate(params)}
        singles.sort(key=lambda p: order[id(p)])
    return Plan(groups, singles), states


def _make_group(rule: Any, scalars: Scalars, store: FlatStore, members: list[Param],
                first: int, carried: dict[tuple[int, ...], tuple[int, list[Any]]],
                states: dict[Param, State]) -> FlatGroup | None:
    """The flat group for a run, or None when its members' state cannot be one (their
    step counts differ: some stepped without the others)."""
    dev = store.device
    sizes = store.sizes[first:first + len(members)]
    total = sum(sizes)
    have = [states.get(p) for p in members]
    reuse = carried.get(tuple(id(p) for p in members))
    if reuse is not None:
        (step, buffers), has_state = reuse, True
    elif all(s is None for s in have):
        step, buffers, has_state = 0, [zeros_on(dev, (total,), store.buffer.dtype)
                                       for _ in rule.state_names], False
    elif any(s is None for s in have) or len({s.step for s in have}) != 1:
        return None
    else:
        step, has_state = have[0].step, True
        buffers = [concat_on([s.arrays[k] for s in have], dev)
                   for k in range(len(rule.state_names))]
    host = dev.kind == "host"
    start = store.offsets[first]
    segments = []
    for lo, hi in flatgroup.segment_bounds(sizes, split=host and kernel.HOST_FAST_PATH):
        a = store.offsets[first + lo] - start
        b = store.offsets[first + hi - 1] + sizes[hi - 1] - start
        arrays = [buf[a:b] for buf in buffers]
        update = kernel.choose(rule, scalars, dev, arrays, (b - a,), store.buffer.dtype,
                               contiguous=True)
        grad_buffer = np.empty(b - a, dtype=store.buffer.dtype) if host and hi - lo > 1 \
            else None
        segments.append(Segment(lo, hi, start + a, start + b, store.buffer[start + a:start + b],
                                grad_buffer, arrays, update))
    return FlatGroup(store, first, members, step, buffers, segments, has_state=has_state)
