"""sync: write one model's parameter values into another's, in place, across devices.

Checked once per pair of unchanged trees (a plan cached with dst's walk), staged before the
first write (a failed transfer or a refused pull leaves dst unchanged), and written one whole
buffer at a time wherever flat stores allow (see `SyncGroup` and `_stage`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import coherence, flat, interrupts, syncing_buffers
from .blend import Blend
from .checks import match_check, soft_tau
from .devices import HOST, Device, device_of, dtype_name, on_array_device
from .errors import ArgumentError, GraphMismatchError
from .identity import IdentityMap
from .params import Param
from .transfers import copy_to
from .tree import cache_of, graph_id, param_paths, require_model
from .xp import concat_flat, concat_into

#: A soft sync into loose host Params gathers them into one buffer (`Scatter`) while they
#: average fewer elements than this: below it a call per Param costs more than the two
#: extra passes over memory (1,000 Params of 528 elements: 16-24× one flat copy with a call
#: per Param, 9-13× gathered; of 12,880 elements: 0.9× per Param, 2.3× gathered).
SCATTER_BELOW = 4096


@interrupts.holding
def sync(dst: Any, src: Any, *, check: str = "graph", tau: float = 1.0,
         buffers: str = "copy") -> Any:
    """Copy ``src``'s parameter values into ``dst`` in place, across devices; with ``tau < 1``
    a soft update ``dst = tau*src + (1-tau)*dst``. Buffers follow ``buffers``: ``"copy"``
    (src's running statistics and counters copied), ``"lerp"`` (floating Buffers blended
    like Params, counters copied) or ``"keep"`` (dst's kept); see syncing_buffers.py.
    Validates everything before writing, so a mismatch raises GraphMismatchError and leaves
    ``dst`` unchanged. Returns ``dst``."""
    match_check(check)
    tau = soft_tau(tau)
    rule = syncing_buffers.check_rule(buffers)
    require_model(dst, "dst")
    require_model(src, "src")
    if dst is src:
        raise ArgumentError("sync: dst and src are the same model; there is nothing to copy")
    groups, ties, aliased, buffer_groups = _sync_plan(dst, src, check)
    for first, path, kept, other in ties:
        if not _equal(kept, other):
            raise GraphMismatchError(
                f"{first} and {path}: dst ties them to one Param but src holds two Params with "
                "different values there; untie dst or sync from a model with the same ties")
    # Stage every value on dst's device first: a failed transfer leaves dst unchanged.
    staged = [staging for group in groups for staging in _stage(group, aliased, tau != 1.0)]
    # Buffers by their rule: copied (the default), blended (floating ones, "lerp"), or kept.
    staged_buffers = [(staging, mix) for group, mix in
                      syncing_buffers.chosen(buffer_groups, rule, tau)
                      for staging in _stage(group, aliased, mix)]
    # Then every wrap-mode pull (a soft update reads dst) before the first write.
    for targets, _, _ in staged:
        for d in targets:  # (none where no dst member is linked)
            d.writable(overwrite=tau == 1.0)  # wrap mode: this side becomes the newest
    for (targets, _, _), mix in staged_buffers:
        for d in targets:
            d.writable(overwrite=not mix)
    blend = Blend(tau) if tau != 1.0 else None
    for _, storage, values in staged:
        with on_array_device(storage):  # (CuPy writes on the current GPU: make it dst's)
            _write(storage, values, blend)
    for (_, storage, values), mix in staged_buffers:
        with on_array_device(storage):
            _write(storage, values, blend if mix else None)
    return dst


def _matched_pairs(dst: Any, src: Any, check: str
                   ) -> tuple[list[tuple[Param, Param]], list[tuple[str, str, Param, Param]]]:
    """Each distinct dst Param with the src Param at its place, after every check passes, and
    the places where dst ties two paths that src holds as two Params.

    The graph check compares the Params' origins place by place first (cheap, and what tells
    copies of one graph from look-alikes), then the graph ids (layer types and configuration
    too). Plans are cached, so this runs once per pair of unchanged trees.
    """
    dst_paths, src_paths = param_paths(dst), param_paths(src)
    same_origins = True
    for (dpath, dp), (spath, sp) in zip(dst_paths, src_paths, strict=False):
        if dpath != spath or dp.shape != sp.shape or dtype_name(dp.dtype) != dtype_name(sp.dtype):
            raise GraphMismatchError(
                f"{dpath if dpath == spath else dpath + ' vs ' + spath}: dst {_describe(dp)} vs "
                f"src {_describe(sp)}; the models differ in structure")
        same_origins = same_origins and dp.origin == sp.origin
    if len(dst_paths) != len(src_paths):
        longer, side = (dst_paths, "dst") if len(dst_paths) > len(src_paths) else (src_paths, "src")
        path, p = longer[min(len(dst_paths), len(src_paths))]
        raise GraphMismatchError(
            f"{path}: only {side} has it ({_describe(p)}); the models differ in structure")
    if check == "graph" and not (same_origins and graph_id(dst) == graph_id(src)):
        raise GraphMismatchError(
            "dst and src have the same structure but were not made from one graph "
            f"(graph_id {graph_id(dst)[:12]}… vs {graph_id(src)[:12]}…) — pass "
            "check=\"structure\" to sync by shape")
    chosen: dict[int, tuple[str, Param, Param]] = {}
    ties: list[tuple[str, str, Param, Param]] = []
    for (path, dp), (_, sp) in zip(dst_paths, src_paths, strict=False):
        seen = chosen.get(id(dp))
        if seen is None:
            chosen[id(dp)] = (path, dp, sp)
        elif seen[2] is not sp:
            ties.append((seen[0], path, seen[2], sp))  # their values must agree at each sync
    return [(dp, sp) for _, dp, sp in chosen.values()], ties


SyncPlan = tuple[list["SyncGroup"], list[tuple[str, str, Param, Param]], bool,
                 list["SyncGroup"]]
_PLANS_PER_MODEL = 8  # sync plans kept per dst model (one per src and check it is synced from)


def _sync_plan(dst: Any, src: Any, check: str) -> SyncPlan:
    """The checked pairs of a sync, grouped by dtype, the ties whose values must agree, and
    the Buffers' pairs grouped by dtype (checked first, so a Buffer that differs is named).

    Cached with dst's walk (tree.cache_of), keyed weakly by src: reused while neither tree
    has changed (a change to either makes a new walk, so a plan made from an old one is
    never found), and dropped with dst's walk or when src is freed."""
    dst_walk, src_walk = cache_of(dst), cache_of(src)
    plans = dst_walk.derived.get("sync")
    if plans is not None:
        entry = plans.get(src)
        if entry is not None and entry[0]() is src_walk and check in entry[1]:
            return entry[1][check]
    buffer_pairs = syncing_buffers.matched(dst, src)
    pairs, ties = _matched_pairs(dst, src, check)
    written = {id(d) for d, _ in pairs} | {id(d) for d, _ in buffer_pairs}
    aliased = any(id(s) in written for _, s in [*pairs, *buffer_pairs])  # dst also writes it
    plan = (_pair_groups(pairs), ties, aliased, _pair_groups(buffer_pairs))
    if dst_walk.valid and src_walk.valid:
        if plans is None:
            plans = dst_walk.derived["sync"] = IdentityMap()
        entry = plans.get(src)
        if entry is None or entry[0]() is not src_walk:
            if len(plans) >= _PLANS_PER_MODEL:
                plans = dst_walk.derived["sync"] = IdentityMap()
            # (src's walk weakly: two models synced both ways must not hold each other)
            entry = (weakref.ref(src_walk), {})
            plans.set(src, entry)
        entry[1][check] = plan
    return plan


def _describe(p: Param) -> str:
    return f"{p.shape} {dtype_name(p.dtype)}"


def _equal(a: Param, b: Param) -> bool:
    va, vb = a.value, b.value
    if a.device != b.device:
        vb = copy_to(vb, a.device, reason="sync: compare tied values")
    xp = a.device.xp
    return bool(xp.all(va == vb))


class SyncGroup:
    """The pairs of one dtype, as the two lists of Params, with the flat stores that held
    each list whole (same layout) when the plan was made. A store holds its members for life
    and breaks if one of them is re-homed or freed, so while neither store is broken the
    whole-buffer copy still applies: checking that is O(1) per sync, not O(Params).

    ``src_device`` and ``dst_device`` are the one device every src (dst) Param was on (None
    if several): what lets loose src values be concatenated straight into dst's buffer, and
    loose host dst values be soft-updated as one buffer. They, and which store a Param is
    in, change only when a Param of the plan is re-homed, and that invalidates the walk of
    its model, so the plan is never used again (`_sync_plan`)."""

    __slots__ = ("dsts", "srcs", "dst_store", "src_store", "dst_alone", "src_alone",
                 "src_device", "dst_device", "small")

    def __init__(self, pairs: list[tuple[Param, Param]]) -> None:
        self.dsts = [d for d, _ in pairs]
        self.srcs = [s for _, s in pairs]
        self._find_stores()

    def _find_stores(self) -> None:
        many = len(self.dsts) > 1
        self.dst_alone = flat.intact_store(self.dsts) if many else None
        self.src_alone = flat.intact_store(self.srcs) if many else None
        self.dst_store, self.src_store = _whole_stores(self.dst_alone, self.src_alone)
        self.src_device, self.dst_device = _one_device(self.srcs), _one_device(self.dsts)
        self.small = sum(d.size for d in self.dsts) < SCATTER_BELOW * len(self.dsts)

    def stores(self) -> tuple[Any, Any]:
        """(dst store, src store) if both still hold their side whole, else (None, None)."""
        self._recheck()
        return self.dst_store, self.src_store

    def dst_buffer_for_loose(self) -> Any:
        """dst's store when it holds dst whole, no member of it is linked and every src value
        is on its device: then the src values are concatenated straight into its buffer."""
        self._recheck()
        store = self.dst_alone
        if store is None or coherence.has_links(store) or self.src_device != store.device:
            return None
        return store

    def _recheck(self) -> None:
        """Look for the stores again if one broke (two flag reads: a re-homed member breaks
        its store, and also invalidates its model's walk, so the plan is normally remade
        before it gets here)."""
        dst_store, src_store = self.dst_alone, self.src_alone
        if ((dst_store is not None and dst_store.broken)
                or (src_store is not None and src_store.broken)):
            self._find_stores()

    def src_buffer_for_loose(self) -> Any:
        """src's buffer if one unlinked store holds src whole, else the src values one by one
        (each brought up to date)."""
        store = self.src_alone
        if store is not None and not coherence.has_links(store):
            return store.buffer
        return [s.value for s in self.srcs]


def _one_device(group: list[Param]) -> Device | None:
    devices = {p.device for p in group}
    return devices.pop() if len(devices) == 1 else None


class Scatter:
    """Where a soft sync writes loose host dst Params: their values are gathered into one
    buffer, updated in one pass, and written back (`_write`)."""

    __slots__ = ("dsts",)

    def __init__(self, dsts: list[Param]) -> None:
        self.dsts = dsts


def _whole_stores(dst_store: Any, src_store: Any) -> tuple[Any, Any]:
    if dst_store is not None and src_store is not None and dst_store.sizes == src_store.sizes:
        return dst_store, src_store
    return None, None


def _pair_groups(pairs: list[tuple[Param, Param]]) -> list[SyncGroup]:
    groups: dict[str, list[tuple[Param, Param]]] = {}
    for d, s in pairs:
        groups.setdefault(dtype_name(d.dtype), []).append((d, s))
    return [SyncGroup(group) for group in groups.values()]


Staged = tuple[Sequence[Param], Any, Any]  # (Params to hand over, storage, values to write)


def _stage(group: SyncGroup, aliased: bool, soft: bool) -> list[Staged]:
    """(the dst Params whose wrap-mode hand-over must run first, the storage to write, the
    values on its device), read before anything is written:

    - both sides intact flat stores of one layout: one whole buffer. A side with no linked
      member (`coherence.has_links`, O(1)) is read or written whole, with no per-member
      hand-over; a linked side hands over member by member as before.
    - dst an intact, unlinked store and src loose Params on its device: the src values as a
      list, concatenated straight into dst's buffer (one pass, no staging copy).
    - a soft sync (``soft``) into small loose host Params from host values: a `Scatter`
      of them, with src's buffer or values.
    - else one entry per Param.

    When ``aliased`` (a src Param is also written as a dst Param) values are snapshots, so no
    write can change what a later one reads."""
    dst_store, src_store = group.stores()
    if dst_store is not None:
        if coherence.has_links(src_store):
            values = flat.store_values(src_store, group.srcs, read=_value)
        else:
            values = src_store.buffer
        targets = group.dsts if coherence.has_links(dst_store) else ()
        return [(targets, dst_store.buffer, _on(values, dst_store.device, aliased))]
    if not aliased:
        dst_store = group.dst_buffer_for_loose()
        if dst_store is not None:
            return [((), dst_store.buffer, [s.value for s in group.srcs])]
        if soft and group.small and group.dst_device == HOST and group.src_device == HOST:
            targets = group.dsts if coherence.any_links() else ()
            return [(targets, Scatter(group.dsts), group.src_buffer_for_loose())]
    return [([d], d.storage(), _on(s.value, d.device, aliased))
            for d, s in zip(group.dsts, group.srcs, strict=True)]


def _on(values: Any, target: Device, snapshot: bool) -> Any:
    """``values`` on ``target``: a counted transfer, or (same device) the values themselves,
    copied when a ``snapshot`` is needed."""
    if not snapshot and target is HOST and type(values) is np.ndarray:
        return values  # (the common case, without comparing Devices)
    if device_of(values) != target:
        return copy_to(values, target, reason="sync")
    return copy_to(values, target, reason="sync") if snapshot else values


def _write(data: Any, values: Any, blend: Blend | None) -> None:
    """Write ``values`` (an array, or a list of arrays to concatenate) into ``data``: a copy,
    or with a ``blend`` (tau < 1) the fused soft update. Into a `Scatter` (loose host dst
    Params, soft sync only): gathered, updated as one buffer, and written back."""
    if type(data) is Scatter:
        storages = [d.storage() for d in data.dsts]
        mixed = np.concatenate(storages, axis=None)
        blend(mixed, concat_flat(values) if type(values) is list else values)
        offset = 0
        for storage in storages:
            end = offset + storage.size
            storage[...] = mixed[offset:end].reshape(storage.shape)
            offset = end
        return
    if type(values) is list:
        if blend is None:
            concat_into(values, data)
            return
        values = concat_flat(values)
    if blend is None:
        data[...] = values
    else:
        blend(data, values)


def _value(p: Param) -> Any:
    return p.value
