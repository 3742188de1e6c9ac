"""to_device, to_host and detach: one traversal of the model tree, three mode strategies
(`sync`, which writes into an existing model, is `modelsync.syncing`'s, re-exported here).

| mode | each Param                                | the original                      |
| ---- | ----------------------------------------- | --------------------------------- |
| copy | a new Param with copied storage           | untouched                         |
| move | the same Param, its storage re-homed      | invalid: every use raises MovedError |
| wrap | a new device Param linked to its original | kept coherent lazily (coherence.py) |

Every conversion validates first and copies before it changes anything, so a failure (a
transfer_guard, a CoherenceError) leaves every model as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import coherence, flat, interrupts
from .buffers import Buffer
from .devices import HOST, Device, device, is_array
from .errors import ArgumentError, ArgumentTypeError, CoherenceError
from .params import Param
from .rebuild import rebuild
from .syncing import sync as sync  # (re-exported: `from .convert import sync` still works)
from .transfers import copy_to, to_device_array
from .tree import (
    buffers,
    cache_of,
    is_layer,
    mark_moved,
    params,
    require_model,
)

MODES = ("copy", "move", "wrap")


@interrupts.holding
def to_device(model: Any, device: Device | str = "auto", *, mode: str = "copy") -> Any:
    """Convert ``model`` for ``device`` as a copy, a move or a wrapper (see the module doc).

    A plain array (a data batch) is moved too, counted as data: ``to_device(x, "cuda")``.
    """
    _check_mode(mode)
    if isinstance(model, (list, tuple)) and any(is_layer(m) for m in model):
        raise ArgumentTypeError(
            f"model is a {type(model).__name__} of models; convert one model at a time "
            "([ms.to_device(m, device) for m in models]), or hold them in one "
            "layers.Chain")
    if not is_layer(model) and (is_array(model) or isinstance(model, (list, tuple, np.generic))):
        if mode != "copy":
            raise ArgumentError(f"mode={mode!r} applies to models; an array is always copied")
        return to_device_array(model, device)
    require_model(model)
    return _convert(model, _device(device), mode, "to_device")


def _convert(model: Any, target: Device, mode: str, caller: str) -> Any:
    """The conversion, its transfers recorded with ``caller``'s name as their reason."""
    reason = f"{caller}(mode={mode!r})"
    if mode == "copy":
        return _copy(model, target, reason)
    if mode == "move":
        coherence.check_unlinked(model, "move")
        return _move(model, target, reason)
    return _wrap(model, target, reason)


@interrupts.holding
def to_host(model: Any, *, mode: str = "copy") -> Any:
    """Convert ``model`` for the host; a wrapper gives back its original, brought up to date.
    A plain array is copied to the host (counted as data)."""
    _check_mode(mode)
    if not is_layer(model) and is_array(model):
        return to_device(model, HOST, mode=mode)
    require_model(model)
    wrapping = coherence.wrapping_of(model)
    if wrapping is None:
        return _convert(model, HOST, mode, "to_host")
    if mode == "move":
        raise CoherenceError("cannot move a wrapper; ms.to_host(wrapper) returns its original, "
                             "or call ms.detach(wrapper) first")
    wrapping.write_back()
    return wrapping.original


@interrupts.holding
def detach(wrapper: Any) -> Any:
    """Make ``wrapper`` an independent copy: pending device updates are first written back to
    the original, then the link is cut. Returns ``wrapper``."""
    require_model(wrapper, "wrapper")
    if coherence.wrapping_of(wrapper) is None:
        raise ArgumentError(
            "detach: this model is not a wrapper (only a model returned by "
            "to_device(..., mode=\"wrap\") can be detached)")
    coherence.detach_wrapper(wrapper)
    return wrapper


def _check_mode(mode: Any) -> None:
    if mode not in MODES:
        raise ArgumentError(f"mode={mode!r} is not a conversion mode; expected one of {MODES}")


def _device(spec: Device | str) -> Device:
    """``device()`` under another name: to_device's argument shadows it."""
    return device(spec)


def _copy(model: Any, target: Device, reason: str = "to_device(mode='copy')") -> Any:
    twins = _flat_twins(model, target, reason)
    return rebuild(model, _made_already, twins)


def _made_already(p: Param) -> Param:  # pragma: no cover (every Param is in the memo)
    raise AssertionError(f"{p!r} has no twin: the layout missed it")


def _flat_twins(model: Any, target: Device, reason: str) -> dict[int, Param]:
    """A new Param on ``target`` for each of ``model``'s Params, laid out flat (one buffer per
    dtype), keyed by the original's id: the memo `rebuild` starts from."""
    twins: dict[int, Param] = {}
    for group, on, sizes, shapes in _layout(model):
        buffer = flat.copy_flat(group, target, reason=reason, read=_value, source=on)
        made = flat.params_on(buffer, group, sizes=sizes, shapes=shapes)
        twins.update(zip(map(id, group), made, strict=True))
    for group, buffer in _copied_buffers(model, target, reason, _value):
        store = flat.FlatStore(buffer, flat.sizes_of(group))  # (so sync copies it whole)
        made = Buffer.twins_in_store(store.views([b.shape for b in group]), store.device,
                                     group, store)
        store.hold(made)
        twins.update(zip(map(id, group), made, strict=True))
    return twins


def _copied_buffers(model: Any, target: Device, reason: str, read: Any
                    ) -> list[tuple[list[Buffer], Any]]:
    """``model``'s Buffers grouped by dtype, each group copied to ``target`` as one new 1-D
    array (one counted transfer per dtype, as for Params)."""
    if not cache_of(model).with_buffers:  # (most models: nothing to do, at no cost)
        return []
    found = buffers(model)
    return [(group, flat.copy_flat(group, target, reason=reason, read=read))
            for group in flat.group_by_dtype(found).values()]


Layout = list[tuple[list[Param], "Device | None", list[int], list[tuple[int, ...]]]]


def _layout(model: Any) -> Layout:
    """``model``'s distinct Params grouped by dtype, each group with the one device its
    Params are on (None if several), their sizes and shapes. Cached with the walk, like the
    sync plans: re-homing one of its Params (the only way a Param changes device or shape)
    invalidates the walk."""
    walk = cache_of(model)
    cached = walk.derived.get("layout")
    if cached is not None:
        return cached
    seen: set[int] = set()
    distinct = []
    for _, p in walk.with_params:
        if id(p) not in seen:
            seen.add(id(p))
            distinct.append(p)
    layout: Layout = []
    for group in flat.group_by_dtype(distinct).values():
        devices = {p.device for p in group}
        layout.append((group, devices.pop() if len(devices) == 1 else None,
                       flat.sizes_of(group), [p.shape for p in group]))
    if walk.valid:
        walk.derived["layout"] = layout
    return layout


def _move(model: Any, target: Device, reason: str = "to_device(mode='move')") -> Any:
    # Copy everything first: if one transfer fails, no Param has changed yet.
    staged = []
    for group in flat.group_by_dtype(params(model)).values():
        if all(p.device == target for p in group):
            continue
        buffer = flat.copy_flat(group, target, reason=reason, read=lambda p: p.storage())
        grads = [None if p.grad is None else copy_to(p.grad, target, reason=reason, what="grad")
                 for p in group]
        staged.append((group, buffer, grads))
    kept = [(group, buffer) for group, buffer in _copied_buffers(
        model, target, reason, lambda b: b.storage()) if any(b.device != target for b in group)]
    moved = rebuild(model, lambda p: p)  # (before any Param changes: it may still fail)
    for group, buffer, grads in staged:
        flat.adopt(group, buffer, grads)
    for group, buffer in kept:  # (the same Buffers, re-homed into a flat store of their own)
        flat.adopt(group, buffer, [None] * len(group))
    mark_moved(model, str(target))
    return moved


def _wrap(model: Any, target: Device, reason: str = "to_device(mode='wrap')") -> Any:
    coherence.check_unlinked(model, "wrap")
    twins = _flat_twins(model, target, reason)
    wrapper = rebuild(model, _made_already, dict(twins))  # (before linking: it may still fail)
    wrapping = coherence.link_params(model, twins)
    coherence.register_wrapper(wrapper, wrapping)
    return wrapper


def _value(p: Param) -> Any:
    return p.value
