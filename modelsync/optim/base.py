"""The Optimizer base: bound to Params at construction, per-Param state that follows its Param.

A rule subclass declares its hyperparameters (`restrict_range` class attributes listed in
``hyper_names``), the names of its per-Param state arrays (``state_names``) and three
kernels doing the same math: ``_update_xp`` (array API: every device, the reference),
``_update_host`` (NumPy, in place, no allocation per step) and ``_update_cuda`` (one fused
CuPy kernel). The base does the rest: binding, lazy state on the Param's device, moving the
state after its Param when ``to_device(mode="move")`` re-homed it, zero_grad, state_dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from ..devices import HOST, Device, dtype_name, is_array
from ..errors import ArgumentError, ArgumentTypeError, ModelSyncError
from ..params import Param
from ..transfers import copy_to
from ..tree import is_layer

STATE_FOLLOWS = "optimizer state follows its Param"
#: Elements per chunk on the NumPy path: a rule's ten-odd passes over a chunk of each array
#: stay in cache, where whole-array passes would each go out to memory.
CHUNK = 1 << 15


class Slot:
    """One Param's optimizer state: where it lives, its step count (a host int, as torch's
    ``step``), its state arrays (in ``state_names`` order), host scratch buffers, the kernel
    that updates it on its device, and (large host Params) its cache-sized chunks."""

    __slots__ = ("device", "step", "arrays", "scratch", "kernel", "xp", "native", "chunks")

    def __init__(self, device: Device, step: int, arrays: list[Any]) -> None:
        self.device = device
        self.step = step
        self.arrays = arrays
        self.scratch: tuple[Any, ...] = ()
        self.kernel: Callable[[Any, Any, Slot], None] | None = None
        self.xp = device.xp
        self.native = device.native if device.kind == "cuda" else None
        self.chunks: list[tuple[int, int, Slot]] | None = None


class Optimizer:
    """Base of every optimizer: ``Rule(params, **hyper)``, then ``step()`` / ``zero_grad()``.

    ``params`` is any iterable of Params (``ms.params(model)``); a Param listed twice is
    bound once. ``step()`` updates every bound Param whose ``.grad`` is set (Params with no
    gradient are skipped, as in torch) and leaves ``.grad`` alone.
    """

    hyper_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ()
    scratch_count: ClassVar[int] = 1  # NumPy scratch arrays per Param (host fast path)
    #: What the kernel gets as ``data``: "write" (``p.writable()``: the rule updates the
    #: Param), "read" (``p.value``: a transform that reads it), or "none".
    access: ClassVar[str] = "write"
    _fast: ClassVar[bool] = True  # False: host runs the array-API kernel (tests compare both)

    def __init__(self, params: Iterable[Param]) -> None:
        self._params, self._paths = bind_params(params)
        self._slots: dict[Param, Slot] = {}

    # -- what it is bound to ---------------------------------------------------------------
    @property
    def params(self) -> tuple[Param, ...]:
        """The bound Params, each once, in the order given."""
        return tuple(self._params)

    @property
    def paths(self) -> tuple[str, ...]:
        """Each bound Param's key in state_dict: its model path, or its index as a string."""
        return tuple(self._paths)

    @property
    def type_name(self) -> str:
        return type(self).__name__

    @property
    def hyper(self) -> dict[str, Any]:
        """The hyperparameters, JSON-able (tuples become lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self.hyper_names}

    @property
    def state(self) -> dict[Param, dict[str, Any]]:
        """Per-Param state keyed by Param (identity): ``{"step": int, name: array}``, the live
        arrays on each Param's device. Params not stepped yet have none."""
        return {p: {"step": slot.step, **dict(zip(self.state_names, slot.arrays, strict=True))}
                for p, slot in self._slots.items() if self.state_names}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyper_names)
        sep = ", " if hyper else ""
        return f"{self.type_name}({hyper}{sep}params={len(self._params)})"

    # -- the training-step API ---------------------------------------------------------------
    def step(self) -> None:
        """Apply one update to every bound Param that has a gradient."""
        slots = self._slots
        access = self.access
        for p in self._params:
            grad = p.grad
            if grad is None:
                continue
            slot = slots.get(p)
            if slot is None:
                slot = slots[p] = self._new_slot(p)
            else:
                dev = p.device
                if slot.device is not dev and slot.device != dev:
                    self._follow(p, slot)
            slot.step += 1
            if access == "write":
                slot.kernel(p.writable(), grad, slot)
            else:
                slot.kernel(p.value if access == "read" else None, grad, slot)

    def zero_grad(self) -> None:
        """Forget every bound Param's gradient (``.grad = None``, PyTorch's default)."""
        for p in self._params:
            p.grad = None

    # -- state -------------------------------------------------------------------------------
    def _new_slot(self, p: Param, step: int = 0, arrays: list[Any] | None = None) -> Slot:
        dev = p.device
        if arrays is None:
            arrays = [_zeros(dev, p.shape, p.dtype) for _ in self.state_names]
        slot = Slot(dev, step, arrays)
        self._setup(slot, p)
        return slot

    def _follow(self, p: Param, slot: Slot) -> None:
        """The Param was re-homed (move mode): bring its state over once, counted as "state"."""
        dev = p.device
        slot.arrays = [copy_to(a, dev, reason=STATE_FOLLOWS, what="state") for a in slot.arrays]
        slot.device, slot.xp = dev, dev.xp
        slot.native = dev.native if dev.kind == "cuda" else None
        self._setup(slot, p)

    def _setup(self, slot: Slot, p: Param) -> None:
        """Pick the kernel for the slot's device; on the host, make the scratch buffers and,
        for a large Param, the chunks the NumPy path walks so its passes stay in cache."""
        dev = slot.device
        slot.chunks = None
        slot.scratch = ()
        if dev.kind != "host" or not self._fast:
            slot.kernel = self._update_cuda if dev.kind == "cuda" else self._update_xp
            return
        size = p.size
        if size <= 2 * CHUNK or self.scratch_count == 0:
            slot.scratch = tuple(np.empty(p.shape, dtype=p.dtype)
                                 for _ in range(self.scratch_count))
            slot.kernel = self._update_host
            return
        slot.arrays = [np.ascontiguousarray(a) for a in slot.arrays]  # views below must alias
        slot.scratch = tuple(np.empty(CHUNK, dtype=p.dtype) for _ in range(self.scratch_count))
        flat = [a.reshape(-1) for a in slot.arrays]
        slot.chunks = []
        for start in range(0, size, CHUNK):
            end = min(start + CHUNK, size)
            part = Slot(dev, slot.step, [a[start:end] for a in flat])
            part.scratch = tuple(t[:end - start] for t in slot.scratch)
            slot.chunks.append((start, end, part))
        slot.kernel = self._update_host_chunked

    def _update_host_chunked(self, data: Any, grad: Any, slot: Slot) -> None:
        """The NumPy kernel applied chunk by chunk (same arithmetic, better cache use)."""
        if not grad.flags.c_contiguous or (data is not None and not data.flags.c_contiguous):
            whole = Slot(slot.device, slot.step, slot.arrays)  # rare: allocate full scratch
            whole.scratch = tuple(np.empty(grad.shape, dtype=a.dtype) for a in slot.scratch)
            self._update_host(data, grad, whole)
            return
        update, step = self._update_host, slot.step
        flat_grad = grad.reshape(-1)
        flat_data = data.reshape(-1) if data is not None else None
        for start, end, part in slot.chunks:
            part.step = step
            update(flat_data[start:end] if flat_data is not None else None,
                   flat_grad[start:end], part)

    # -- kernels (one math, three implementations) -------------------------------------------
    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        raise NotImplementedError

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        self._update_xp(data, grad, slot)

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        self._update_xp(data, grad, slot)

    # -- state_dict ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"type", "hyper", "state": {path: {"step": int, name: host array}}}``; Params that
        have no state yet are left out (as in torch)."""
        state: dict[str, Any] = {}
        if self.state_names:
            for p, path in zip(self._params, self._paths, strict=True):
                slot = self._slots.get(p)
                if slot is None:
                    continue
                entry: dict[str, Any] = {"step": slot.step}
                for name, array in zip(self.state_names, slot.arrays, strict=True):
                    entry[name] = copy_to(array, HOST, reason="optimizer state_dict",
                                          what="state")
                state[path] = entry
        return {"type": self.type_name, "hyper": self.hyper, "state": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state from `state_dict`, each state array on its
        Param's device. Everything is checked first: a bad dict raises ArgumentError naming
        the first problem and changes nothing."""
        self._prepare_load(state_dict)()

    def _prepare_load(self, sd: Any, where: str = "state_dict") -> Callable[[], None]:
        """Validate ``sd`` and copy its arrays to the devices; return the commit to run."""
        sd = _mapping(sd, where)
        _exact_keys(sd, ("type", "hyper", "state"), where)
        if sd["type"] != self.type_name:
            raise ArgumentError(
                f"{where}['type'] is {sd['type']!r} but this optimizer is {self.type_name}; "
                f"load a state_dict saved from a {self.type_name}")
        new_hyper = self._check_hyper(_mapping(sd["hyper"], f"{where}['hyper']"),
                                      f"{where}['hyper']")
        checked = self._check_state(_mapping(sd["state"], f"{where}['state']"),
                                    f"{where}['state']")
        new_slots = {p: self._new_slot(p, step, [
            copy_to(a, p.device, reason="optimizer load_state_dict", what="state")
            for a in arrays]) for p, step, arrays in checked}

        def commit() -> None:
            for name, value in new_hyper.items():
                setattr(self, name, value)
            self._slots = new_slots

        return commit

    def _check_hyper(self, hyper: Mapping[str, Any], where: str) -> dict[str, Any]:
        _exact_keys(hyper, self.hyper_names, where)
        checked = {}
        for name in self.hyper_names:
            try:
                checked[name] = getattr(type(self), name).check(hyper[name])
            except ModelSyncError as exc:
                raise type(exc)(f"{where}: {exc}") from None
        return checked

    def _check_state(self, state: Mapping[str, Any], where: str
                     ) -> list[tuple[Param, int, list[Any]]]:
        index = dict(zip(self._paths, self._params, strict=True))
        checked = []
        for path, entry in state.items():
            p = index.get(path)
            if p is None:
                known = ", ".join(repr(k) for k in self._paths[:8])
                more = ", ..." if len(self._paths) > 8 else ""
                raise ArgumentError(
                    f"{where} has an entry for {path!r}, which is not a Param bound to this "
                    f"{self.type_name} (bound: {known}{more})")
            if not self.state_names:
                raise ArgumentError(
                    f"{where}[{path!r}]: a {self.type_name} keeps no per-Param state")
            here = f"{where}[{path!r}]"
            entry = _mapping(entry, here)
            _exact_keys(entry, ("step", *self.state_names), here)
            step = entry["step"]
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
                raise ArgumentError(f"{here}['step']={step!r}; expected an int >= 0")
            arrays = []
            for name in self.state_names:
                array = entry[name]
                if not is_array(array):
                    raise ArgumentError(
                        f"{here}[{name!r}] is a {type(array).__name__}; expected an array of "
                        f"shape {p.shape} {dtype_name(p.dtype)}")
                if tuple(array.shape) != p.shape or dtype_name(array.dtype) != dtype_name(p.dtype):
                    raise ArgumentError(
                        f"{here}[{name!r}] is {tuple(array.shape)} {dtype_name(array.dtype)} but "
                        f"the Param is {p.shape} {dtype_name(p.dtype)}")
                arrays.append(array)
            checked.append((p, int(step), arrays))
        return checked


# -- helpers ---------------------------------------------------------------------------------
def bind_params(params: Any) -> tuple[list[Param], list[str]]:
    """The Params of ``params`` once each, with their state_dict keys: ``params.paths`` when
    given (``ms.params(model)``), else each one's position as a string."""
    if isinstance(params, Param):
        raise ArgumentTypeError(
            "params is a single Param; pass a list of Params, e.g. [p] or ms.params(model)")
    if is_layer(params):
        raise ArgumentTypeError(
            f"params is a model ({type(params).__name__}); pass its Params: ms.params(model)")
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise ArgumentTypeError(
            f"params is a {type(params).__name__}; expected an iterable of Params such as "
            "ms.params(model)")
    items = list(params)
    paths = getattr(params, "paths", None)
    if paths is None or len(paths) != len(items):
        paths = None
    bound: list[Param] = []
    keys: list[str] = []
    seen: set[int] = set()
    for i, p in enumerate(items):
        if not isinstance(p, Param):
            text = repr(p)
            text = text if len(text) <= 60 else text[:57] + "..."
            raise ArgumentTypeError(
                f"params[{i}] is a {type(p).__name__} ({text}); expected a Param: pass "
                "ms.params(model) or a list of ms.Param")
        if id(p) in seen:
            continue
        seen.add(id(p))
        keys.append(str(paths[i]) if paths is not None else str(len(bound)))
        bound.append(p)
    if not bound:
        raise ArgumentError(
            "params is empty: an optimizer needs at least one Param to update; pass "
            "ms.params(model) of a model that has Params")
    return bound, keys


def _zeros(dev: Device, shape: tuple[int, ...], dtype: Any) -> Any:
    if dev.kind == "host":
        return np.zeros(shape, dtype=dtype)
    if dev.kind == "cuda":
        with dev.native:
            return dev.xp.zeros(shape, dtype=dtype)
    return dev.xp.zeros(shape, dtype=dtype, device=dev.native)


def on_device(slot: Slot) -> Any:
    """The context a CuPy kernel launch for ``slot`` runs in (its GPU made current)."""
    return slot.native if slot.native is not None else contextlib.nullcontext()


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ArgumentError(f"{where} is a {type(value).__name__}; expected a dict")
    return value


def _exact_keys(mapping: Mapping[str, Any], expected: Iterable[str], where: str) -> None:
    expected = tuple(expected)
    missing = [k for k in expected if k not in mapping]
    extra = [k for k in mapping if k not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unexpected {extra}"] if extra else [])
        raise ArgumentError(f"{where} has keys {list(mapping)}: {', '.join(parts)}; "
                            f"expected {list(expected)}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
