"""The Optimizer base: bound to Params at construction, per-Param state that follows its Param.

A rule subclass declares its hyperparameters (`restrict_range` class attributes listed in
``hyper_names``), the names of its per-Param state arrays (``state_names``) and its kernels,
all doing the same math: ``_update_xp`` (array API: every device, the reference),
``_update_host`` (NumPy, in place, no allocation per step), a compiled host loop named by
``numba_kernel`` (`modelsync.kernels`, fed by ``_kernel_args``) and ``_update_cuda`` (one
fused CuPy kernel). The base does the rest: binding, lazy state on the Param's device, one
kernel per flat run of Params (`flatgroup`), moving the state after its Param when
``to_device(mode="move")`` re-homed it, zero_grad, state_dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .. import kernels
from .. import params as params_module
from ..devices import HOST, Device, dtype_name, is_array
from ..errors import ArgumentError, ArgumentTypeError, ModelSyncError
from ..params import Param
from ..transfers import copy_to
from ..tree import is_layer
from ..xp import concat_flat
from . import flatgroup
from .flatgroup import FlatGroup, Segment

STATE_FOLLOWS = "optimizer state follows its Param"
#: Elements per chunk on the NumPy path: a rule's ten-odd passes over a chunk of each array
#: stay in cache, where whole-array passes would each go out to memory.
CHUNK = 1 << 15
_COMPILED_DTYPES = ("float32", "float64")  # what the numba loops are made for
_READY: set[tuple[str, bool, str]] = set()  # compiled loops known to work in this process


class Slot:
    """One Param's (or one flat segment's) optimizer state: where it lives, its step count
    (a host int, as torch's ``step``), its state arrays (in ``state_names`` order), host
    scratch buffers, the kernel that updates it on its device, (large host Params on the
    NumPy path) its cache-sized chunks, and (numba path) the loop and 1-D state views."""

    __slots__ = ("device", "step", "arrays", "scratch", "kernel", "xp", "native", "chunks",
                 "fn", "flat")

    def __init__(self, device: Device, step: int, arrays: list[Any]) -> None:
        self.device = device
        self.step = step
        self.arrays = arrays
        self.scratch: tuple[Any, ...] = ()
        self.kernel: Callable[[Any, Any, Slot], None] | None = None
        self.xp = device.xp
        self.native = device.native if device.kind == "cuda" else None
        self.chunks: list[tuple[int, int, Slot]] | None = None
        self.fn: Callable[..., None] | None = None
        self.flat: list[Any] = []


class Plan:
    """How a step goes: the flat groups, the Params updated one by one, and whether the
    plan must be remade before the next step (a Param moved, a group fell back)."""

    __slots__ = ("groups", "singles", "stale")

    def __init__(self, groups: list[FlatGroup], singles: list[Param]) -> None:
        self.groups = groups
        self.singles = singles
        self.stale = False


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
    #: The compiled host loop in `modelsync.kernels` (None: the NumPy path on the host).
    numba_kernel: ClassVar[str | None] = None
    _fast: ClassVar[bool] = True  # False: host runs the array-API kernel (tests compare both)
    _plan: Plan | None = None

    def __init__(self, params: Iterable[Param]) -> None:
        self._params, self._paths = bind_params(params)
        self._slots: dict[Param, Slot] = {}
        self._plan = None
        self._seen_rehomes = -1  # Param re-homings seen at the last step (see step)
        self._memo: dict[Any, tuple[Any, ...]] = {}  # this step's kernel scalars, per dtype

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
        self._flush()
        return {p: {"step": slot.step, **dict(zip(self.state_names, slot.arrays, strict=True))}
                for p, slot in self._slots.items() if self.state_names}

    @property
    def flat_groups(self) -> int:
        """How many flat runs the next step updates with one kernel each (0 before the first
        step): a diagnostic for tests and benchmarks."""
        plan = self._plan
        return 0 if plan is None else sum(not g.dissolved for g in plan.groups)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyper_names)
        sep = ", " if hyper else ""
        return f"{self.type_name}({hyper}{sep}params={len(self._params)})"

    # -- the training-step API ---------------------------------------------------------------
    def step(self) -> None:
        """Apply one update to every bound Param that has a gradient."""
        plan = self._plan
        if plan is None or plan.stale or any(g.store.broken for g in plan.groups):
            plan = self._replan()
        self._memo.clear()
        # State that must follow a moved Param moves before any Param is updated, so a
        # refused transfer (transfer_guard) fails the step as a whole.
        rehomes = params_module.rehomes
        if self._seen_rehomes != rehomes:  # (nothing can have moved otherwise)
            for p in plan.singles:
                slot = self._slots.get(p)
                if slot is not None and p.grad is not None and slot.device != p.device:
                    self._follow(p, slot)
                    plan.stale = True  # it may now be part of a flat store
            self._seen_rehomes = rehomes
        for group in plan.groups:
            if not group.run():
                self._fall_back(group, plan)
            elif group.pending:
                self._register(group)
        if plan.singles:
            self._step_params(plan.singles, plan)

    def _step_params(self, params: Sequence[Param], plan: Plan) -> None:
        """The per-Param path: each Param with a gradient updated by its own kernel call."""
        slots = self._slots
        access = self.access
        for p in params:
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
                    plan.stale = True  # it may now be part of a flat store
                elif slot.kernel is None:
                    self._setup(slot, p)
            slot.step += 1
            if access == "write":
                slot.kernel(p.writable(), grad, slot)
            else:
                slot.kernel(p.value if access == "read" else None, grad, slot)

    def _fall_back(self, group: FlatGroup, plan: Plan) -> None:
        """A member of ``group`` has no gradient: this step goes Param by Param (as torch,
        only Params with a gradient step), and the group is dissolved into its members."""
        self._flush_group(group)
        group.dissolved = True
        plan.stale = True
        self._step_params(group.members, plan)  # a group not yet stepped has no Slots: new ones

    def zero_grad(self) -> None:
        """Forget every bound Param's gradient (``.grad = None``, PyTorch's default)."""
        for p in self._params:
            p.grad = None

    # -- planning: which Params go flat ------------------------------------------------------
    def _replan(self) -> Plan:
        """Group the bound Params into flat runs (state carried over from the old plan or
        gathered from the Params' own state) and singles; bring moved state along first."""
        old = self._plan
        carried: dict[tuple[int, ...], tuple[int, list[Any]]] = {}
        if old is not None:
            for group in old.groups:
                if group.dissolved or group.pending:  # pending: zeros, remade where it is
                    continue
                self._flush_group(group)
                key = tuple(id(p) for p in group.members)
                if not group.store.broken:
                    carried[key] = (group.step, group.state())
                    continue
                moved = self._follow_group(group)
                if moved is not None:
                    carried[key] = (group.step, moved)
        slots = self._slots
        for p in self._params:  # state of Params moved on their own follows them one by one
            slot = slots.get(p)
            if slot is not None and slot.device != p.device:
                self._follow(p, slot)
        groups: list[FlatGroup] = []
        singles: list[Param] = []
        if self.access == "write":
            found, singles = flatgroup.runs(self._params)
            for store, members, first in found:
                group = self._make_group(store, members, first, carried)
                if group is None:
                    singles.extend(members)
                else:
                    groups.append(group)
        else:
            singles = list(self._params)
        order = {id(p): i for i, p in enumerate(self._params)}
        singles.sort(key=lambda p: order[id(p)])
        self._plan = Plan(groups, singles)
        return self._plan

    def _make_group(self, store: Any, members: list[Param], first: int,
                    carried: dict[tuple[int, ...], tuple[int, list[Any]]]) -> FlatGroup | None:
        """The flat group for a run, or None when its members' state cannot be one (their
        step counts differ: some stepped without the others)."""
        dev = store.device
        slots = self._slots
        sizes = store.sizes[first:first + len(members)]
        total = sum(sizes)
        have = [slots.get(p) for p in members]
        reuse = carried.get(tuple(id(p) for p in members))
        if reuse is not None:
            step, buffers = reuse
        elif all(s is None for s in have):
            step, buffers = 0, [_zeros(dev, (total,), store.buffer.dtype)
                                for _ in self.state_names]
        elif any(s is None for s in have) or len({s.step for s in have}) != 1:
            return None
        else:
            step = have[0].step
            buffers = [_concat([s.arrays[k] for s in have], dev)
                       for k in range(len(self.state_names))]
        group = FlatGroup(store, members, dev, store.offsets[first], sizes, step, buffers)
        in_place = group.host and self._fast
        for lo, hi in flatgroup.segment_bounds(sizes, split=in_place):
            a, b = group.offsets[lo] - group.start, group.offsets[hi - 1] + sizes[hi - 1] - \
                group.start
            slot = Slot(dev, step, [buf[a:b] for buf in buffers])
            self._setup_kernel(slot, (b - a,), group.dtype, contiguous=True)
            grad_buffer = (np.empty(b - a, dtype=group.dtype)
                           if group.host and hi - lo > 1 else None)
            data = store.buffer[group.start + a:group.start + b]
            group.segments.append(Segment(lo, hi, data, grad_buffer, slot))
        group.rebinds = group.segments[0].slot.kernel == self._update_xp
        group.pending = step == 0 and all(s is None for s in have)
        if not group.pending:
            self._register(group)
        return group

    def _register(self, group: FlatGroup) -> None:
        """Give each member a Slot viewing the group's state (what ``state`` shows). A new
        group does this after its first step: as in torch, a Param has no state until then."""
        slots = self._slots
        for p, views in zip(group.members, flatgroup.member_views(group.state(), group),
                            strict=True):
            slots[p] = Slot(group.device, group.step, views)
        group.pending = False
        group.fresh = True

    def _flush_group(self, group: FlatGroup) -> None:
        """Bring the members' Slots up to date with the group (step, and views of the current
        state arrays when the kernel made new ones)."""
        if group.pending:
            return
        slots = self._slots
        step = group.step
        if not group.fresh:
            for p, views in zip(group.members, flatgroup.member_views(group.state(), group),
                                strict=True):
                slot = slots[p]
                slot.arrays = views
                slot.kernel = None
            group.fresh = True
        for p in group.members:
            slots[p].step = step

    def _flush(self) -> None:
        plan = self._plan
        if plan is not None:
            for group in plan.groups:
                if not group.dissolved:
                    self._flush_group(group)

    def _follow_group(self, group: FlatGroup) -> list[Any] | None:
        """The group's Params were moved together: bring its state over in one transfer per
        state array and point the members' Slots at it. None if they went separate ways."""
        dev = group.members[0].device
        if dev == group.device or any(p.device != dev for p in group.members):
            return None
        moved = [copy_to(a, dev, reason=STATE_FOLLOWS, what="state") for a in group.state()]
        shadow = FlatGroup.__new__(FlatGroup)  # the same layout, on the new device
        shadow.members, shadow.offsets, shadow.sizes = group.members, group.offsets, group.sizes
        shadow.device, shadow.host = dev, dev.kind == "host"
        for p, views in zip(group.members, flatgroup.member_views(moved, shadow), strict=True):
            self._slots[p] = Slot(dev, group.step, views)
        return moved

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
        """Pick the kernel for the slot's device (see `_setup_kernel`)."""
        data = p._data
        contiguous = not isinstance(data, np.ndarray) or data.flags.c_contiguous
        self._setup_kernel(slot, p.shape, p.dtype, contiguous=contiguous)

    def _setup_kernel(self, slot: Slot, shape: tuple[int, ...], dtype: Any, *,
                      contiguous: bool) -> None:
        """Pick the kernel for the slot's device. On the host: the compiled loop when numba
        is there (and the params are contiguous float32/float64), else the NumPy path with
        its scratch buffers and, for a large array, the chunks it walks so that its passes
        stay in cache."""
        dev = slot.device
        slot.chunks = None
        slot.scratch = ()
        slot.fn = None
        slot.flat = []
        if dev.kind != "host" or not self._fast:
            # CuPy's float16 has no arithmetic of its own: a fused kernel would compute a whole
            # statement in float32 and round once, unlike the host; float16 takes the
            # array-API path, which rounds after every operation.
            fused = dev.kind == "cuda" and dtype_name(dtype) != "float16"
            slot.kernel = self._update_cuda if fused else self._update_xp
            return
        size = int(np.prod(shape, dtype=np.int64))
        if contiguous and self._use_compiled(size, dtype):
            slot.arrays = [_contiguous(a) for a in slot.arrays]
            slot.flat = [a.reshape(-1) for a in slot.arrays]
            slot.fn = self._compiled.loop(self.numba_kernel, size)
            slot.kernel = self._update_compiled
            return
        if size <= 2 * CHUNK or self.scratch_count == 0:
            slot.scratch = tuple(np.empty(shape, dtype=dtype) for _ in range(self.scratch_count))
            slot.kernel = self._update_host
            return
        slot.arrays = [_contiguous(a) for a in slot.arrays]  # views below must alias
        slot.scratch = tuple(np.empty(CHUNK, dtype=dtype) for _ in range(self.scratch_count))
        flat = [a.reshape(-1) for a in slot.arrays]
        slot.chunks = []
        for start in range(0, size, CHUNK):
            end = min(start + CHUNK, size)
            part = Slot(dev, slot.step, [a[start:end] for a in flat])
            part.scratch = tuple(t[:end - start] for t in slot.scratch)
            slot.chunks.append((start, end, part))
        slot.kernel = self._update_host_chunked

    def _use_compiled(self, size: int, dtype: Any) -> bool:
        """Whether the compiled loop serves this dtype; compiles it (or loads it from numba's
        cache) on first use, and falls back to NumPy for good if that fails."""
        if self.numba_kernel is None or dtype_name(dtype) not in _COMPILED_DTYPES:
            return False
        module = kernels.host_kernels()
        if module is None:
            return False
        dtype = np.dtype(dtype)
        key = (self.numba_kernel, size >= module.PARALLEL_MIN, dtype.char)
        if key not in _READY:
            try:
                module.compile_for(self.numba_kernel, size, dtype, self._cast_args(1, dtype))
            except Exception as exc:  # a numba that cannot compile: NumPy still works
                kernels.disable(f"{type(exc).__name__}: {exc}")
                return False
            _READY.add(key)
        self._compiled = module
        return True

    def _kernel_args(self, step: int) -> tuple[float | bool, ...]:
        """The scalars the compiled loop takes after its arrays, for step ``step``."""
        raise NotImplementedError

    def _cast_args(self, step: int, dtype: Any) -> tuple[Any, ...]:
        """`_kernel_args` with each float in ``dtype``, as NumPy casts a Python float that
        meets an array: the compiled loop then rounds exactly as the NumPy path does.
        Memoised for the current step (every Param of a dtype shares them)."""
        key = (step, dtype)
        args = self._memo.get(key)
        if args is None:
            cast = dtype.type
            args = self._memo[key] = tuple(a if isinstance(a, bool) else cast(a)
                                           for a in self._kernel_args(step))
        return args

    def _update_compiled(self, data: Any, grad: Any, slot: Slot) -> None:
        """The compiled loop over the flattened arrays (numba, `modelsync.kernels`)."""
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)
        slot.fn(data.reshape(-1), grad.reshape(-1), *slot.flat,
                *self._cast_args(slot.step, data.dtype))

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
            self._flush()
            on_host = self._flat_state_on_host()
            for p, path in zip(self._params, self._paths, strict=True):
                slot = self._slots.get(p)
                if slot is None:
                    continue
                entry: dict[str, Any] = {"step": slot.step}
                arrays = on_host.get(p)
                if arrays is None:
                    arrays = [copy_to(a, HOST, reason="optimizer state_dict", what="state")
                              for a in slot.arrays]
                entry.update(zip(self.state_names, arrays, strict=True))
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
            self._plan = None  # flat groups are remade from the loaded state at the next step

        return commit

    def _flat_state_on_host(self) -> dict[Param, list[Any]]:
        """Each flat-group member's state as host arrays: one copy per group and state name
        (one transfer for a device group, not one per Param), then views of it."""
        found: dict[Param, list[Any]] = {}
        plan = self._plan
        if plan is None:
            return found
        for group in plan.groups:
            if group.dissolved or group.pending:
                continue
            whole = [copy_to(a, HOST, reason="optimizer state_dict", what="state")
                     for a in group.state()]
            at = 0
            for p, size in zip(group.members, group.sizes, strict=True):
                found[p] = [a[at:at + size].reshape(p.shape) for a in whole]
                at += size
        return found

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
    """The Params of ``params`` once each, with their state_dict keys: each one's model path
    when they come from ``ms.params(model)``, else each one's position as a string."""
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
    path_of = getattr(params, "path_of", None)  # ms.params(model): id(Param) -> path
    if path_of is not None and not all(id(p) in path_of for p in items):
        path_of = None  # a foreign Param was added: fall back to positions for all
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
        keys.append(path_of[id(p)] if path_of is not None else str(len(bound)))
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


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` itself when C-contiguous, else a C-contiguous copy of the same shape
    (``np.ascontiguousarray`` would turn a 0-d array into shape (1,))."""
    if array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array).reshape(array.shape)


def _concat(arrays: Sequence[Any], dev: Device) -> Any:
    """One 1-D array of ``arrays`` (all on ``dev``), flattened in order: a local copy."""
    if dev.kind == "host":
        return np.concatenate(arrays, axis=None)
    if dev.kind == "cuda":
        with dev.native:
            return concat_flat(arrays)
    return concat_flat(arrays)


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
