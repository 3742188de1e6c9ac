"""The rules' host loops compiled by numba: one pass over memory per step, bit-identical to
NumPy.

A rule's loop (`modelsync.optim.rules`) is a plain function over 1-D C-contiguous arrays,
``loop(param, grad, *state, *scalars)``, whose loop over elements is a `prange`. Each is
compiled twice: a serial twin for small arrays and a parallel one that splits large arrays
over the cores. They compute exactly what the NumPy path computes, operation for
operation: the scalars come in the arrays' dtype (as NumPy casts a Python float),
``fastmath`` is off (no reassociation, no fused multiply-add) and ``error_model="numpy"``
lets the loops vectorise. Imported only by `modelsync.kernels.host_kernels`, never at
``import modelsync``.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable
from typing import Any

# GNU OpenMP's threads (numba's usual pool) spin after each parallel loop by default, on the
# cores OpenBLAS needs for the next matrix product: measured on two cores, a transformer step
# on sim:1 took 1.6-2.6x as long as with sleeping threads, which cost one wake-up per parallel
# loop instead. Set before numba loads its pool; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402 (after the wait policy above)
import numpy as np  # noqa: E402

_OPTIONS = {"cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}
#: Arrays of at least this many elements are split over the cores. Measured on two cores
#: the break-even is near 10,000 elements, but a parallel loop waits for its slowest thread,
#: and on a busy machine a descheduled thread costs milliseconds: below this size the
#: serial loop (about 0.5 ns per float32 element for Adam) is the safer choice.
PARALLEL_MIN = 1 << 16
#: Parallel loops run one at a time: numba's thread pools are not all safe to enter from
#: two Python threads at once, and the loop already uses every core.
_PARALLEL_LOCK = threading.Lock()
#: ``parallel``: a parallel loop ran in this process; ``forked``: this process was forked
#: after that, and GNU OpenMP (numba's usual thread pool) aborts a forked child that enters
#: a parallel region, so such a child runs the serial loops.
_STATE = {"parallel": False, "forked": False}
#: Each rule loop's compiled twins (serial, parallel), by the rule's function.
_TWINS: dict[Callable[..., None], tuple[Any, Any]] = {}
#: Elements per chunk of a scaled loop (`scaled_loop`): the chunk of the gradient it scales
#: is still in the first-level cache when the rule's loop reads it.
SCALE_CHUNK = 2048
#: Each rule loop's scaled drivers (serial, parallel), by the function and its array count.
_DRIVERS: dict[tuple[Callable[..., None], int], tuple[Any, Any]] = {}
_DRIVER_SOURCE = """
def {name}({params}, gs):
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        gc = g[lo:hi]
        for i in range(hi - lo):
            gc[i] = gc[i] * gs
        inner(p[lo:hi], gc, {sliced})
"""


def _after_fork_in_child() -> None:
    global _PARALLEL_LOCK
    _PARALLEL_LOCK = threading.Lock()  # a lock held by another thread at the fork stays held
    if _STATE["parallel"]:
        _STATE["forked"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _twin(fn: Callable[..., None], tag: str, **options: Any) -> Any:
    """``fn`` compiled, with `prange` meaning ``numba.prange``. The copy gets its own name
    (``Adam.loop_parallel``): numba's on-disk cache tells functions apart by name, not by
    the options they were compiled with."""
    scope = dict(fn.__globals__)
    scope["prange"] = numba.prange
    copy = types.FunctionType(fn.__code__, scope, f"{fn.__name__}_{tag}", fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_{tag}"
    copy.__module__ = fn.__module__
    # a loop written in a notebook or passed to exec() has no file to cache it next to
    cache = not fn.__code__.co_filename.startswith("<")
    return numba.njit(**options, **{**_OPTIONS, "cache": cache})(copy)


def _twins(fn: Callable[..., None]) -> tuple[Any, Any]:
    twins = _TWINS.get(fn)
    if twins is None:
        twins = _TWINS[fn] = (_twin(fn, "serial"), _twin(fn, "parallel", parallel=True))
    return twins


def loop(fn: Callable[..., None], size: int) -> Callable[..., None]:
    """The compiled ``fn`` for arrays of ``size`` elements: serial below `PARALLEL_MIN`,
    else the parallel twin behind the process-wide lock."""
    return _by_size(*_twins(fn), size)


def _by_size(serial: Any, parallel: Any, size: int) -> Callable[..., None]:
    """``serial`` below `PARALLEL_MIN` elements, else ``parallel`` behind the process-wide
    lock (and ``serial`` in a child forked after a parallel loop ran)."""
    if size < PARALLEL_MIN:
        return serial

    def run(*args: Any) -> None:
        if _STATE["forked"]:
            serial(*args)
            return
        _STATE["parallel"] = True
        with _PARALLEL_LOCK:
            parallel(*args)

    return run


def compile_for(fn: Callable[..., None], size: int, dtype: Any, args: tuple[Any, ...]) -> None:
    """Compile (or load from the cache) ``fn`` for ``dtype`` by running it on empty arrays,
    so a compile error shows at set-up time, not in the middle of a step."""
    serial, parallel = _twins(fn)
    compiled = serial if size < PARALLEL_MIN else parallel
    empty = np.empty(0, dtype=dtype)
    arrays = fn.__code__.co_argcount - len(args)
    compiled(*([empty] * arrays), *args)


def _drivers(fn: Callable[..., None], arrays: int) -> tuple[Any, Any]:
    """``fn``'s scaled drivers for a rule with ``arrays`` state arrays: source made from its
    arity (the state arrays, then the scalars), calling the serial twin chunk by chunk."""
    key = (fn, arrays)
    found = _DRIVERS.get(key)
    if found is None:
        names = [f"a{i}" for i in range(arrays)]
        scalars = [f"s{i}" for i in range(fn.__code__.co_argcount - 2 - arrays)]
        name = f"{fn.__name__}_scaled"
        source = _DRIVER_SOURCE.format(
            name=name, params=", ".join(["p", "g", *names, *scalars]),
            sliced=", ".join([f"{a}[lo:hi]" for a in names] + scalars))
        scope = {"prange": numba.prange, "CHUNK": SCALE_CHUNK, "inner": _twins(fn)[0]}
        exec(compile(source, f"<modelsync: {fn.__qualname__} scaled>", "exec"), scope)
        plain = scope[name]
        options = {**_OPTIONS, "cache": False}  # (made from text: no file to cache it by)
        found = _DRIVERS[key] = (numba.njit(**options)(plain),
                                 numba.njit(**options, parallel=True)(plain))
    return found


def scaled_loop(fn: Callable[..., None], size: int, arrays: int) -> Callable[..., None]:
    """``fn`` over arrays of ``size`` elements with the gradient multiplied by a last
    argument ``gs`` first, in place, in the same pass: ``driver(p, g, *state, *scalars,
    gs)``. Exactly ``g *= gs`` (rounded in the gradient's dtype) followed by ``fn``, without
    a pass of its own over memory."""
    return _by_size(*_drivers(fn, arrays), size)
