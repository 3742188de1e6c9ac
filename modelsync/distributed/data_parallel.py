"""`DataParallel`: an optimizer whose ``step()`` first averages every bound Param's gradient
over the ranks, then steps.

As ChainerMN's multi-node optimizer does: the gradients of each dtype are packed into one
contiguous buffer (already scaled by 1/size, in the same pass), summed over the ranks by one
in-place buffer collective, and handed back to the Params as views of it, so the inner
optimizer's step reads them where they landed. One collective per dtype however many Params
there are, never one per Param, never pickled. Before it the ranks agree on what they hold
and which Params have gradients (`agree`), so a mismatch raises on every rank, not a hang.

Every rank then holds the same gradients and the same Params, so each makes the same update:
the replicas stay bitwise equal without sending a Param.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import flat
from ..checks import match_check
from ..devices import HOST, dtype_name
from ..errors import ArgumentTypeError
from ..params import Param
from ..transfers import guarding
from ..watch import subscribe
from ..xp import concat_flat
from . import transport
from .agree import Repeated
from .comm import Comm
from .layout import on_device
from .ops import gpu_bits, require_comm, run_agreed

REASON = "DataParallel.step"
#: From this many gradient bytes on, the 1/size scale is left to the optimizer's pass
#: (`optim` ``step(grad_scale=...)``); below it the buffer is scaled before the Allreduce,
#: while backprop's writes are still in this process's cache. Measured on 2 ranks: at 4 MB
#: the scale before was 1.07-1.11x the Allreduce on both MPIs, the fused one 0.90-1.48x
#: (writing back gradients that the MPI has just written is the slow part); at 40 MB the
#: fused one was 1.01-1.08x, the scale before 1.12-1.16x (a pass over memory of its own).
FUSE_MIN_BYTES = 8 << 20
#: On the host a gradient of at least this many elements is scaled straight into its place
#: in the buffer; smaller neighbours are concatenated in one call, then scaled together.
LARGE = 1 << 12


class DataParallel:
    """``DataParallel(optimizer, comm)``: use it as the optimizer (``step``, ``zero_grad``,
    ``state_dict``, ``load_state_dict``, ``params``); ``optimizer`` is the one inside.

    ``check="graph"`` (default) also requires the bound Params to be replicas of one graph
    (same origins: made by `replicate`, `to_device` or `load` from one model);
    ``"structure"`` only the same paths, shapes and dtypes.
    """

    def __init__(self, optimizer: Any, comm: Comm, *, check: str = "graph") -> None:
        bound = getattr(optimizer, "params", None)
        if not (callable(getattr(optimizer, "step", None))
                and callable(getattr(optimizer, "zero_grad", None))
                and isinstance(bound, (tuple, list)) and bound
                and all(isinstance(p, Param) for p in bound)):
            raise ArgumentTypeError(
                f"optimizer is a {type(optimizer).__name__}; expected an optimizer from "
                "modelsync.optim bound to Params, e.g. optim.Adam(ms.params(model))")
        if isinstance(optimizer, DataParallel):
            raise ArgumentTypeError("optimizer is already a DataParallel; wrap it once")
        self.comm = require_comm(comm)
        self.check = match_check(check)
        self.optimizer = optimizer
        self._params: tuple[Param, ...] = tuple(bound)
        paths = getattr(optimizer, "paths", None)
        self._paths = tuple(paths) if paths else tuple(str(i) for i in range(len(bound)))
        self._rows = [[path, list(p.shape), dtype_name(p.dtype),
                       p.origin if check == "graph" else "", path]
                      for path, p in zip(self._paths, self._params, strict=True)]
        self._graph = _hex(self._rows) if check == "graph" else None
        self._static = hashlib.blake2b(repr((REASON, check, self._rows)).encode(),
                                       digest_size=32).digest()
        self._plans: dict[bytes, _Plan] = {}
        #: The flat store that is exactly the bound Params, in order (None if they are not
        #: one), and the gradient mask when all of them have gradients.
        self._store = flat.intact_store(self._params)
        self._all = bytes([1]) * len(self._params)
        self._moved = _Moved(self._params)  # told when a bound Param is re-homed
        #: The inner optimizer can divide the gradients by the ranks in its own pass.
        self._fusable = _takes_grad_scale(optimizer)
        self._steady: _Steady | None = None  # (made by the first step that qualifies)

    # -- the optimizer's face --------------------------------------------------------------
    @property
    def params(self) -> tuple[Param, ...]:
        return self._params

    @property
    def paths(self) -> tuple[str, ...]:
        return self._paths

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"DataParallel({self.optimizer!r}, {self.comm!r})"

    def step(self) -> None:
        """Average the gradients over the ranks (`average_gradients`), then step. Where the
        inner optimizer takes a ``grad_scale`` and the gradients are `FUSE_MIN_BYTES` or more,
        it is the one to divide the summed gradients by the number of ranks, in the pass over
        memory its update makes anyway (a pass of its own cost 0.1-0.2x the Allreduce): the
        gradients it leaves are the mean all the same."""
        scale = self._sum_gradients(fuse=self._fusable)
        if scale is None:
            self.optimizer.step()
        else:
            self.optimizer.step(grad_scale=scale)

    # -- the collective --------------------------------------------------------------------
    def average_gradients(self) -> None:
        """Replace each bound Param's gradient by the mean over the ranks: one agreement, then
        one buffer collective per dtype. Params no rank has a gradient for are left out."""
        self._sum_gradients(fuse=False)

    def _sum_gradients(self, *, fuse: bool) -> float | None:
        """The collective of `average_gradients`. With ``fuse`` the 1/size scale of float32
        and float64 gradients is left to the caller, and returned (None: nothing left)."""
        comm = self.comm
        if self._moved.seen:  # a bound Param moved: its buffers are elsewhere
            self._plans.clear()
            self._steady = None
            self._store = flat.intact_store(self._params)
            self._moved = _Moved(self._params)
        store = self._store
        steady = self._steady
        if steady is not None and steady.holds(store):
            steady.agreement()
            left = fuse and steady.fusable
            steady.group.pack(1.0 if left else steady.scale)  # (in place)
            steady.reduce()
            return steady.scale if left else None
        if store is not None and store.all_grads_set():
            mask = self._all  # (every gradient is in the store's buffer: no need to look)
        else:
            mask = bytes([g is not None for g in Param.grads_of(self._params)])
        plan: list[_Plan] = []

        def prepare() -> tuple[bytes, int]:
            found = self._plans.get(mask)
            if found is None:
                found = self._plans[mask] = _Plan(self._params, mask, self._static)
            plan.append(found)
            transport.check_guard(comm, found.nbytes, reason=REASON, what="grad",
                                  where=found.where)
            return found.digest, gpu_bits(comm, found.devices)

        shared = run_agreed(comm, REASON, prepare, lambda: self._describe(mask))
        if comm.size == 1:
            return None
        scale = 1.0 / comm.size
        found = plan[0]
        fuse = fuse and found.fusable
        factor = 1.0 if fuse else scale
        for i, group in enumerate(found.groups):
            reduce = group.host_sum(comm)
            if reduce is not None:  # (the common case, made ready once: see HostSum)
                group.pack(factor)  # (the store's buffer, scaled in place or left as it is)
                reduce()
                if mask is self._all and len(found.groups) == 1:
                    agreement = Repeated(comm, REASON, found.digest,
                                         describe=functools.partial(self._describe, mask),
                                         gpu_groups=gpu_bits(comm, found.devices))
                    self._steady = _Steady(store, agreement, group, reduce, scale,
                                           found.fusable)
                continue
            with on_device(group.device):
                packed = group.pack(factor)
                total = transport.sum_over_ranks(comm, packed, reason=REASON, what="grad",
                                                 use_nccl=bool(shared >> i & 1))
                group.unpack(total)
        return scale if fuse else None

    def _describe(self, mask: bytes) -> dict[str, Any]:
        return {"args": {"check": self.check}, "params": self._rows, "graph": self._graph,
                "grads": [path for path, has in zip(self._paths, mask, strict=True) if has]}


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer inside a DataParallel (what a file stores), or ``optimizer`` itself."""
    return optimizer.optimizer if isinstance(optimizer, DataParallel) else optimizer


def _takes_grad_scale(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` takes ``grad_scale`` (modelsync.optim's do)."""
    try:
        return "grad_scale" in inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):  # (a step that has no signature to read)
        return False


def _hex(rows: list[Any]) -> str:
    return hashlib.blake2b(repr(rows).encode(), digest_size=16).hexdigest()


class _Moved:
    """Told (watch.py) when one of ``params`` is re-homed: then the gradient plans, made for
    their devices and stores, are remade. A new one is made each time (the old one, held by
    nothing else, drops out of the Params' subscriptions), so no subscription piles up."""

    __slots__ = ("seen", "__weakref__")

    def __init__(self, params: tuple[Param, ...]) -> None:
        self.seen = False
        subscribe(params, self)

    def invalidate(self) -> None:
        self.seen = True


class _Steady:
    """The step of the common case, made ready once: every gradient in the flat store's
    buffer on the host, one float32/float64 group, so a step is the agreement on a digest
    known in advance and one in-place Allreduce. (A step of 1,000 small Params is about
    100 us of MPI; the general path's Python was 10-15 us more.) It holds while the store's
    gradient buffer is the one its Allreduce was made for and no transfer_guard speaks."""

    __slots__ = ("store", "agreement", "group", "reduce", "scale", "fusable")

    def __init__(self, store: Any, agreement: Repeated, group: _GradGroup,
                 reduce: transport.HostSum, scale: float, fusable: bool) -> None:
        self.store, self.agreement, self.group = store, agreement, group
        self.reduce, self.scale = reduce, scale
        self.fusable = fusable  # (as `_Plan.fusable`)

    def holds(self, store: Any) -> bool:
        return (store is self.store and store.all_grads_set()
                and store.grads is self.reduce.buffer and not guarding("grad"))


class _Plan:
    """For one pattern of which Params have gradients: a `_GradGroup` per dtype."""

    def __init__(self, params: tuple[Param, ...], mask: bytes, static: bytes) -> None:
        present = [p for p, has in zip(params, mask, strict=True) if has]
        by_dtype: dict[str, list[Param]] = {}
        for p in present:
            by_dtype.setdefault(dtype_name(p.dtype), []).append(p)
        self.groups = [_GradGroup(group) for group in by_dtype.values()]
        self.nbytes = sum(g.nbytes for g in self.groups)
        #: What every step with this pattern says the same way (made once: a step of a small
        #: model is a few tens of microseconds of MPI, and these were a third of the rest).
        self.devices = [g.device for g in self.groups]
        self.where = ", ".join(sorted({str(d) for d in self.devices}))
        self.digest = hashlib.blake2b(static + mask, digest_size=32).digest()
        #: Every group is best summed unscaled and divided by the optimizer: float32/float64
        #: (float16 is scaled first: a sum of n float16 gradients could overflow where the
        #: mean does not), and more gradient bytes than `FUSE_MIN_BYTES`.
        self.fusable = self.nbytes >= FUSE_MIN_BYTES and all(
            dtype_name(g.params[0].dtype) in ("float32", "float64") for g in self.groups)


class _GradGroup:
    """One dtype's gradients as one buffer. On the host the buffer is allocated once and
    packed in place (`segments`); its views are what the Params get back. A group whose
    Params are on a device (or spread over several) is packed by concatenation."""

    def __init__(self, params: list[Param]) -> None:
        self.params = params
        self.sizes = [p.size for p in params]
        self.nbytes = sum(p.nbytes for p in params)
        devices = {p.device for p in params}
        self.device = next(iter(devices)) if len(devices) == 1 else None
        self.buffer: np.ndarray | None = None
        #: The flat store these Params are, whole and in order (optimizers lay a model out
        #: flat): when every gradient is its view of the store's gradient buffer, that buffer
        #: is scaled and reduced in place, with nothing packed or handed back.
        self.store = flat.intact_store(params) if self.device is not None else None
        if self.device == HOST:
            self.buffer = np.empty(sum(self.sizes), dtype=params[0].dtype)
            self.views = _views(self.buffer, params, self.sizes)
            self.segments = _segments(self.sizes)
        self._host_sum: transport.HostSum | None = None

    def host_sum(self, comm: Comm) -> transport.HostSum | None:
        """The ready-made in-place sum of the store's gradient buffer, when that buffer holds
        every gradient of this group on the host (None: pack, sum and hand back instead)."""
        store = self.store
        if store is None or self.device != HOST or not store.all_grads_set():
            return None
        found = self._host_sum
        if found is None or found.buffer is not store.grads:
            found = self._host_sum = transport.HostSum.for_buffer(
                comm, store.grads, reason=REASON, what="grad")
        return found

    def pack(self, scale: float) -> Any:
        """Every gradient times ``scale`` (1.0: as they are), in one 1-D buffer."""
        params = self.params
        store = self.store
        if store is not None and store.all_grads_set():
            grads = store.grads
            if scale != 1.0:
                grads *= scale  # (in place: the Params' gradients are its views)
            return grads
        if self.buffer is None:
            if self.device is None:  # spread over devices: gather on the host
                from ..transfers import copy_to

                grads = [p.grad if p.device == HOST else
                         copy_to(p.grad, HOST, reason=REASON, what="grad") for p in params]
                whole = np.concatenate([g.reshape(-1) for g in grads])
            else:
                whole = concat_flat([p.grad for p in params])
            return whole if scale == 1.0 else whole * scale
        buffer, views = self.buffer, self.views
        for lo, hi, start, end in self.segments:
            if hi - lo == 1:
                if scale == 1.0:
                    np.copyto(views[lo], params[lo].grad)
                else:
                    np.multiply(params[lo].grad, scale, out=views[lo])
            else:
                part = buffer[start:end]
                np.concatenate([params[i].grad for i in range(lo, hi)], axis=None, out=part)
                if scale != 1.0:
                    np.multiply(part, scale, out=part)
        return buffer

    def unpack(self, total: Any) -> None:
        """Give each Param its slice of ``total`` (a view: nothing is copied back)."""
        store = self.store
        if store is not None and store.grads is not None and (
                total is store.grads or store.all_grads_set()):
            if total is not store.grads:  # (a trip via the host: one copy into the buffer)
                store.grads[...] = total
            return
        if total is self.buffer:
            for p, view in zip(self.params, self.views, strict=True):
                p.grad = view
            return
        if self.device is None:
            from ..transfers import copy_to

            at = 0
            for p, size in zip(self.params, self.sizes, strict=True):
                part = total[at:at + size].reshape(p.shape)
                p.grad = part if p.device == HOST else copy_to(part, p.device, reason=REASON,
                                                               what="grad")
                at += size
            return
        for p, view in zip(self.params, _views(total, self.params, self.sizes), strict=True):
            p.grad = view


def _views(buffer: Any, params: list[Param], sizes: list[int]) -> list[Any]:
    views = []
    at = 0
    xp = None if isinstance(buffer, np.ndarray) else params[0].device.xp
    for p, size in zip(params, sizes, strict=True):
        part = buffer[at:at + size]
        views.append(part.reshape(p.shape) if xp is None else xp.reshape(part, p.shape))
        at += size
    return views


def _segments(sizes: list[int]) -> list[tuple[int, int, int, int]]:
    """(first member, end member, first element, end element) of each packing step: a large
    gradient alone, runs of small ones together."""
    found = []
    lo = start = 0
    at = 0
    for i, size in enumerate(sizes):
        if size >= LARGE:
            if lo < i:
                found.append((lo, i, start, at))
            found.append((i, i + 1, at, at + size))
            lo, start = i + 1, at + size
        at += size
    if lo < len(sizes):
        found.append((lo, len(sizes), start, at))
    return found
