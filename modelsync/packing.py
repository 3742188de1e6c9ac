"""Laying loose Params out flat, in place: ``ms.flatten(model)`` and what optimizers do at
construction.

A model built layer by layer holds one array per Param, so every optimizer step, sync and
conversion pays per array. Flattening copies each (device, dtype) group's values into one new
buffer and re-homes each Param onto its view of it (identity, values and gradients kept; the
old arrays are dropped), so the flat paths apply from then on.

Who may be flattened: ``ms.flatten`` flattens every Param of the model, including one made
over the user's own array (which it stops aliasing: SPEC). An optimizer packs on its own only
the Params whose storage the library allocated (`Param.owns_storage`: built-in layers'
initialisers, conversions, loads), so an array the user holds stays the Param's storage.
Wrap-linked Params are never re-homed (coherence keeps their storage and its read-only
protection): ``ms.flatten`` of a wrapped original or of a wrapper that is not flat already
raises CoherenceError; an optimizer leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import flat
from .devices import dtype_name
from .errors import CoherenceError
from .params import Param
from .tree import params, require_model
from .xp import concat_on


def flatten(model: Any) -> Any:
    """Lay ``model``'s Params out as views of one buffer per (device, dtype), in place, and
    return ``model``. Param identity, values, gradients and ties are kept; a group already
    laid out as one intact store is left as it is. After it, an array a Param was made over
    is no longer its storage. A moved-away model raises MovedError; a wrap-linked one
    (an original or its wrapper) that is not flat already raises CoherenceError and
    changes nothing."""
    require_model(model)
    todo = [group for group in _groups(params(model)) if flat.intact_store(group) is None]
    if todo:
        _refuse_linked(todo)
        staged = [(group, concat_on([p.storage() for p in group], group[0].device))
                  for group in todo]
        for group, buffer in staged:  # (every buffer made before any Param changes)
            _adopt(group, buffer)
    return model


def pack(bound: Sequence[Param]) -> int:
    """Lay the loose Params of ``bound`` whose storage the library allocated out flat, one
    buffer per (device, dtype) group of two or more (in bound order); return how many groups
    were made. Params in an intact store, wrap-linked ones and ones over a user's array are
    left alone."""
    loose = []
    for p in bound:
        store = p.flat_store
        if p.owns_storage and p.link is None and (store is None or store.broken):
            loose.append(p)
    made = 0
    for group in _groups(loose):
        if len(group) < 2:
            continue
        _adopt(group, concat_on([p.storage() for p in group], group[0].device))
        made += 1
    return made


def _refuse_linked(groups: list[list[Param]]) -> None:
    for group in groups:
        for p in group:
            link = p.link
            if link is not None:
                role = "a wrapped original" if link.original is p else "a wrapper"
                raise CoherenceError(
                    f"cannot flatten {role}: its Params are linked by to_device(mode=\"wrap\") "
                    "and coherence keeps their storage where it is; call ms.detach(wrapper) "
                    "first (a wrapper made by to_device is flat already)")


def _groups(found: Sequence[Param]) -> list[list[Param]]:
    groups: dict[tuple[Any, str], list[Param]] = {}
    for p in found:
        groups.setdefault((p.device, dtype_name(p.dtype)), []).append(p)
    return list(groups.values())


def _adopt(group: list[Param], buffer: Any) -> None:
    """Re-home ``group`` onto views of ``buffer``; the gradients they held are copied into
    the new store's gradient buffer (if any had one) and held as views of it."""
    grads = Param.grads_of(group)
    store = flat.adopt(group, buffer, [None] * len(group))
    if any(g is not None for g in grads):
        store.ensure_grads()
        for p, g in zip(group, grads, strict=True):
            if g is not None:
                p.grad = g  # (checked: same shape, dtype, device)
                p.grad_into_view()
