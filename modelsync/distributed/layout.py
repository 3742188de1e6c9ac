"""What a rank holds, as the agreement sees it, and its Param values as one flat buffer per
dtype, as the collectives move them.

Every rank lays its buffers out from the same agreed table (paths in the model's order,
shapes, dtypes), so position ``i`` of a buffer is the same Param's element on every rank:
two equal-sized Params in a different order are a structure mismatch, never a silent swap.
A group that is an intact flat store (`modelsync.flat`) is moved as its own buffer, in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import flat
from ..buffers import Buffer
from ..devices import HOST, Device, dtype_name
from ..params import Param
from ..transfers import copy_to
from ..tree import buffer_paths, graph_id, param_paths, require_model
from ..xp import concat_flat, empty_on


def describe_model(model: Any, check: str) -> dict[str, Any]:
    """The model as the agreement compares it: each place a Param is used (path, shape,
    dtype, origin, the path it is tied to), then each Buffer's, and, for check="graph", the
    graph id."""
    first: dict[int, str] = {}
    rows = []
    for path, p in _places(model):
        tied = first.setdefault(id(p), path)
        rows.append([path, list(p.shape), dtype_name(p.dtype), p.origin, tied])
    return {"params": rows, "graph": graph_id(model) if check == "graph" else None}


def model_digest_parts(model: Any, check: str) -> tuple[Any, ...]:
    """What the digest covers: structure and ties always, origins and config for "graph"."""
    first: dict[int, str] = {}
    rows = tuple((path, p.shape, dtype_name(p.dtype), first.setdefault(id(p), path))
                 for path, p in _places(model))
    return rows, graph_id(model) if check == "graph" else None


def _places(model: Any) -> list[tuple[str, Param]]:
    """Every place a Param is used, then every Buffer's: what the ranks agree on (so
    agreement covers Buffers: a rank whose BatchNorm tracks no statistics is a mismatch)."""
    return [*param_paths(model), *buffer_paths(model)]


def distinct_buffers(model: Any) -> list[Buffer]:
    """Each Buffer once, in the model's order."""
    require_model(model)
    seen: set[int] = set()
    found = []
    for _, b in buffer_paths(model):
        if id(b) not in seen:
            seen.add(id(b))
            found.append(b)
    return found


def buffer_values(model: Any, *, counters_only: bool = False, reason: str
                  ) -> list[list[Any]]:
    """[path, what its values are] for each Buffer: a counter's integer value(s), a floating
    Buffer's digest of its bytes (host copies of device Buffers are counted). What ranks
    compare to tell whether their replicas' Buffers agree."""
    import hashlib

    rows = []
    for path, b in buffer_paths(model):
        if counters_only and not b.is_counter:
            continue
        value = b.value
        if b.device != HOST:
            value = copy_to(value, HOST, reason=reason)
        value = np.ascontiguousarray(value)
        if b.is_counter:
            rows.append([path, value.reshape(-1).tolist()])
        else:
            rows.append([path, hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest()])
    return rows


def distinct_params(model: Any) -> list[Param]:
    """Each Param once, in the model's order (a tied Param at its first place)."""
    require_model(model)
    seen: set[int] = set()
    found = []
    for _, p in param_paths(model):
        if id(p) not in seen:
            seen.add(id(p))
            found.append(p)
    return found


class ValueGroup:
    """One dtype's Params, in model order, and how their values become one 1-D buffer:
    the intact flat store's own buffer (no copy), a concatenation on their one device, or a
    host buffer when they are spread over devices."""

    def __init__(self, params: Sequence[Param]) -> None:
        self.params = list(params)
        self.sizes = [math.prod(p.shape) for p in self.params]
        devices = {p.device for p in self.params}
        self.spread = len(devices) > 1  # over several devices: moved through the host
        self.device: Device = HOST if self.spread else next(iter(devices))
        self.store = None if self.spread else flat.intact_store(self.params)
        self.nbytes = sum(p.nbytes for p in self.params)

    def read(self, *, reason: str, copy: bool = False) -> Any:
        """The current values as one 1-D buffer on ``self.device``, each Param made this
        side's newest for a write that follows (wrap mode). The store's own buffer unless
        ``copy``; else a new array."""
        current = [p.writable() for p in self.params]
        if self.store is not None:
            buffer = self.store.buffer
            return _copy(buffer) if copy else buffer
        if self.spread:
            current = [copy_to(a, HOST, reason=reason) if p.device != HOST else a
                       for p, a in zip(self.params, current, strict=True)]
            return np.concatenate([np.reshape(a, -1) for a in current])
        if self.device == HOST:
            return np.concatenate([a.reshape(-1) for a in current])
        return concat_flat(current)

    def empty(self) -> Any:
        """A 1-D buffer for this group's values on ``self.device`` (contents undefined)."""
        return empty_on(self.device, sum(self.sizes), self.params[0].dtype)

    def write(self, values: Any, *, reason: str) -> None:
        """Put ``values`` (1-D, on ``self.device``) into the Params; a no-op when it is the
        store's buffer already."""
        if self.store is not None:
            if values is not self.store.buffer:
                self.store.buffer[...] = values
            return
        at = 0
        for p, size in zip(self.params, self.sizes, strict=True):
            part = _reshape(values[at:at + size], p.shape)
            if p.device != self.device:
                part = copy_to(part, p.device, reason=reason)
            p.writable(overwrite=True)[...] = part
            at += size


def on_device(dev: Device | None) -> Any:
    """The context that makes ``dev`` CuPy's current GPU (new arrays and kernels land on the
    current one); nothing for other devices."""
    return dev.native if dev is not None and dev.kind == "cuda" else contextlib.nullcontext()


def value_groups(params: Sequence[Param]) -> list[ValueGroup]:
    """The Params by dtype, each group in the given order, groups in order of first use."""
    return [ValueGroup(group) for group in flat.group_by_dtype(params).values()]


def _reshape(array: Any, shape: tuple[int, ...]) -> Any:
    if hasattr(array, "reshape"):
        return array.reshape(shape)
    from ..xp import namespace

    return namespace(array).reshape(array, shape)


def _copy(array: Any) -> Any:
    if isinstance(array, np.ndarray):
        return array.copy()
    from ..xp import namespace

    return namespace(array).asarray(array, copy=True)
