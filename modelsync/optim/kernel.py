"""Kernel choice: which form of a rule updates one state on its device, and what it needs.

A rule (or gradient transform) provides its maths in up to four forms (see
`modelsync.optim.rules`): ``update_xp`` (array API: every device, the reference),
``update_host`` (NumPy in place through scratch buffers), ``loop`` (a plain loop that
`modelsync.kernels` compiles with numba) and ``update_cuda`` (one fused CuPy kernel), each
fed the same per-step numbers from its ``scalars(step)``. `choose` picks one for a state's
device, shape and dtype and returns it bound to that state's arrays: a `Kernel` is called
``kernel(data, grad, step)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from .. import kernels
from ..devices import Device, dtype_name, on_device

#: Elements per chunk on the NumPy path: a rule's ten-odd passes over a chunk of each array
#: stay in cache, where whole-array passes would each go out to memory.
CHUNK = 1 << 15
#: False: the host runs the array-API form too (tests compare the two forms).
HOST_FAST_PATH = True
_COMPILED_DTYPES = ("float32", "float64")  # what the numba loops are made for
_READY: set[tuple[Any, bool, str]] = set()  # compiled loops known to work in this process


class Scalars:
    """A rule's per-step numbers (``rule.scalars(step)``), computed once per step and dtype:
    every Param of a step shares them. Cleared at the start of each step, since a schedule
    may change a hyperparameter between steps."""

    __slots__ = ("_of", "_memo")

    def __init__(self, of: Callable[[int], tuple[Any, ...]]) -> None:
        self._of = of
        self._memo: dict[Any, tuple[Any, ...]] = {}

    def clear(self) -> None:
        self._memo.clear()

    def __call__(self, step: int) -> tuple[Any, ...]:
        found = self._memo.get(step)
        if found is None:
            found = self._memo[step] = tuple(self._of(step))
        return found

    def cast(self, step: int, dtype: Any) -> tuple[Any, ...]:
        """The numbers with each float in ``dtype``, as NumPy casts a Python float that meets
        an array: the compiled loop then rounds exactly as the NumPy path does."""
        key = (step, dtype)
        found = self._memo.get(key)
        if found is None:
            cast = dtype.type
            found = self._memo[key] = tuple(a if isinstance(a, bool) else cast(a)
                                            for a in self(step))
        return found


@attrs.define(slots=True, eq=False)
class ArrayApiKernel:
    """The array-API form: any device; it may bind new state arrays into ``arrays``. It runs
    inside ``on`` (`on_device` of the state's device: CuPy allocates its temporaries and
    launches on the current GPU)."""

    rule: Any
    arrays: list[Any]
    scalars: Scalars
    xp: Any
    on: Any = attrs.field(factory=contextlib.nullcontext)

    def __call__(self, data: Any, grad: Any, step: int) -> None:
        with self.on:
            self.rule.update_xp(data, grad, self.arrays, self.scalars(step), self.xp)


@attrs.define(slots=True, eq=False)
class CudaKernel:
    """The fused CuPy form, launched with its GPU made current."""

    rule: Any
    arrays: list[Any]
    scalars: Scalars
    native: Any  # the cupy.cuda.Device

    def __call__(self, data: Any, grad: Any, step: int) -> None:
        with self.native:
            self.rule.update_cuda(data, grad, self.arrays, self.scalars(step))


@attrs.define(slots=True, eq=False)
class HostKernel:
    """The NumPy in-place form through preallocated scratch (no allocation per step)."""

    rule: Any
    arrays: list[Any]
    scalars: Scalars
    scratch: tuple[Any, ...]

    def __call__(self, data: Any, grad: Any, step: int) -> None:
        self.rule.update_host(data, grad, self.arrays, self.scalars(step), self.scratch)


class ChunkedKernel:
    """The NumPy form over cache-sized chunks of a large array (same arithmetic)."""

    __slots__ = ("rule", "arrays", "scalars", "scratch", "chunks")

    def __init__(self, rule: Any, arrays: list[Any], scalars: Scalars, size: int,
                 dtype: Any) -> None:
        self.rule, self.arrays, self.scalars = rule, arrays, scalars
        self.scratch = tuple(np.empty(CHUNK, dtype=dtype) for _ in range(rule.scratch_count))
        flat = [a.reshape(-1) for a in arrays]
        self.chunks = [(start, min(start + CHUNK, size), [a[start:start + CHUNK] for a in flat],
                        tuple(t[:min(CHUNK, size - start)] for t in self.scratch))
                       for start in range(0, size, CHUNK)]

    def __call__(self, data: Any, grad: Any, step: int) -> None:
        s = self.scalars(step)
        update = self.rule.update_host
        if not grad.flags.c_contiguous or (data is not None and not data.flags.c_contiguous):
            scratch = tuple(np.empty(grad.shape, dtype=t.dtype) for t in self.scratch)
            update(data, grad, self.arrays, s, scratch)  # rare: allocate whole scratch
            return
        flat_grad = grad.reshape(-1)
        flat_data = data.reshape(-1) if data is not None else None
        for start, end, arrays, scratch in self.chunks:
            update(flat_data[start:end] if flat_data is not None else None,
                   flat_grad[start:end], arrays, s, scratch)


class CompiledKernel:
    """The rule's loop compiled by numba, over the flattened arrays; `scaled` is the same
    update with the gradient multiplied in place first, in the same pass (its driver is
    compiled on first use)."""

    __slots__ = ("fn", "flat", "scalars", "source", "size", "_scaled")

    def __init__(self, fn: Callable[..., None], arrays: list[Any], scalars: Scalars,
                 source: Callable[..., None] | None = None, size: int = 0) -> None:
        self.fn, self.scalars = fn, scalars
        self.flat = [a.reshape(-1) for a in arrays]
        self.source, self.size = source, size  # (the rule's loop, for the scaled driver)
        self._scaled: Callable[..., None] | None = None

    def __call__(self, data: Any, grad: Any, step: int) -> None:
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)
        self.fn(data.reshape(-1), grad.reshape(-1), *self.flat,
                *self.scalars.cast(step, data.dtype))

    def scaled(self, data: Any, grad: Any, step: int, scale: float) -> None:
        """``grad *= scale`` (in place), then the update, in one pass over memory."""
        run = self._scaled
        if run is None and self.source is not None:  # (once: the driver is kept)
            module = kernels.host_kernels()
            if module is not None:
                run = self._scaled = module.scaled_loop(self.source, self.size,
                                                        len(self.flat))
        if run is None or not grad.flags.c_contiguous:
            scale_in_place(grad, scale)
            self(data, grad, step)
            return
        dtype = data.dtype
        run(data.reshape(-1), grad.reshape(-1), *self.flat, *self.scalars.cast(step, dtype),
            dtype.type(scale))


def scale_in_place(grad: Any, scale: float) -> None:
    """``grad *= scale`` on any device, in place (as NumPy rounds: in the array's dtype)."""
    if isinstance(grad, np.ndarray):
        np.multiply(grad, scale, out=grad)
    else:
        grad *= scale


def run_scaled(kernel: Any, data: Any, grad: Any, step: int, scale: float | None) -> None:
    """``kernel(data, grad, step)`` after ``grad *= scale`` (None: as it is), fused where
    the kernel can (`CompiledKernel.scaled`)."""
    if scale is None:
        kernel(data, grad, step)
    elif type(kernel) is CompiledKernel:
        kernel.scaled(data, grad, step, scale)
    else:
        scale_in_place(grad, scale)
        kernel(data, grad, step)


Kernel = ArrayApiKernel | CudaKernel | HostKernel | ChunkedKernel | CompiledKernel


def choose(rule: Any, scalars: Scalars, device: Device, arrays: list[Any],
           shape: tuple[int, ...], dtype: Any, *, contiguous: bool) -> Kernel:
    """The kernel for state ``arrays`` (a list the kernel keeps; on the host it may swap
    them for C-contiguous copies) of a Param of ``shape`` and ``dtype`` on ``device``. On the
    host: the compiled loop when numba is there and the Param is contiguous float32/float64,
    else the NumPy form, chunked for a large array so that its passes stay in cache."""
    if device.kind != "host" or not HOST_FAST_PATH:
        # CuPy's float16 has no arithmetic of its own: a fused kernel would compute a whole
        # statement in float32 and round once, unlike the host; float16 takes the
        # array-API path, which rounds after every operation.
        if device.kind == "cuda" and dtype_name(dtype) != "float16":
            return CudaKernel(rule, arrays, scalars, device.native)
        return ArrayApiKernel(rule, arrays, scalars, device.xp, on_device(device))
    size = int(np.prod(shape, dtype=np.int64))
    compiled = _compiled(rule, scalars, size, dtype) if contiguous else None
    if compiled is not None:
        arrays[:] = [_contiguous(a) for a in arrays]
        return CompiledKernel(compiled.loop(rule.loop, size), arrays, scalars,
                              rule.loop, size)
    if size <= 2 * CHUNK or rule.scratch_count == 0:
        scratch = tuple(np.empty(shape, dtype=dtype) for _ in range(rule.scratch_count))
        return HostKernel(rule, arrays, scalars, scratch)
    arrays[:] = [_contiguous(a) for a in arrays]  # the chunks' views must alias them
    return ChunkedKernel(rule, arrays, scalars, size, dtype)


def _compiled(rule: Any, scalars: Scalars, size: int, dtype: Any) -> Any:
    """The numba module when it serves this rule and dtype; compiles the loop (or loads it
    from numba's cache) on first use, and falls back to NumPy for good if that fails."""
    if getattr(rule, "loop", None) is None or dtype_name(dtype) not in _COMPILED_DTYPES:
        return None
    module = kernels.host_kernels()
    if module is None:
        return None
    dtype = np.dtype(dtype)
    key = (rule.loop, size >= module.PARALLEL_MIN, dtype.char)
    if key not in _READY:
        try:
            module.compile_for(rule.loop, size, dtype, scalars.cast(1, dtype))
        except Exception as exc:  # a numba that cannot compile: NumPy still works
            kernels.disable(f"{type(exc).__name__}: {exc}")
            return None
        _READY.add(key)
    return module


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` itself when C-contiguous, else a C-contiguous copy of the same shape
    (``np.ascontiguousarray`` would turn a 0-d array into shape (1,))."""
    if array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array).reshape(array.shape)
