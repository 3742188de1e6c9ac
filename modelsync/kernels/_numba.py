"""The optimizer rules as numba loops: one pass over memory per step, bit-identical to NumPy.

Each rule is a scalar function (inlined) and two loops over 1-D C-contiguous arrays: a
serial one for small arrays and a ``prange`` one that splits large arrays over the cores.
They compute exactly what the NumPy path computes, operation for operation: the scalars
come in the arrays' dtype (as NumPy casts a Python float), ``fastmath`` is off (no
reassociation, no fused multiply-add) and ``error_model="numpy"`` lets the loops vectorise.
Imported only by `modelsync.kernels.host_kernels`, never at ``import modelsync``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

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


def _after_fork_in_child() -> None:
    global _PARALLEL_LOCK
    _PARALLEL_LOCK = threading.Lock()  # a lock held by another thread at the fork stays held
    if _STATE["parallel"]:
        _STATE["forked"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


@njit(inline="always")
def _sgd(p, g, lr):
    return p - g * lr


@njit(inline="always")
def _momentum(p, g, b, mu, lr, first):
    b = g if first else b * mu + g
    return p - b * lr, b


@njit(inline="always")
def _nesterov(p, g, b, mu, lr, first):
    b = g if first else b * mu + g
    return p - (b * mu + g) * lr, b


@njit(inline="always")
def _adam(p, g, m, v, b1, b2, omb1, omb2, step_size, bc2, eps, decay):
    m = m * b1 + g * omb1
    v = v * b2 + g * omb2 * g
    return p * decay - m / (np.sqrt(v) / bc2 + eps) * step_size, m, v


@njit(inline="always")
def _rmsprop(p, g, v, alpha, one_minus_alpha, lr, eps):
    v = v * alpha + g * one_minus_alpha * g
    return p - g / (np.sqrt(v) + eps) * lr, v


@njit(inline="always")
def _adagrad(p, g, s, lr, eps):
    s = s + g * g
    return p - g / (np.sqrt(s) + eps) * lr, s


# -- the loops: serial and parallel twins (numba caches each function separately) -----------
@njit(**_OPTIONS)
def sgd_serial(p, g, lr):
    for i in range(p.shape[0]):
        p[i] = _sgd(p[i], g[i], lr)


@njit(parallel=True, **_OPTIONS)
def sgd_parallel(p, g, lr):
    for i in prange(p.shape[0]):
        p[i] = _sgd(p[i], g[i], lr)


@njit(**_OPTIONS)
def momentum_serial(p, g, b, mu, lr, first):
    for i in range(p.shape[0]):
        p[i], b[i] = _momentum(p[i], g[i], b[i], mu, lr, first)


@njit(parallel=True, **_OPTIONS)
def momentum_parallel(p, g, b, mu, lr, first):
    for i in prange(p.shape[0]):
        p[i], b[i] = _momentum(p[i], g[i], b[i], mu, lr, first)


@njit(**_OPTIONS)
def nesterov_serial(p, g, b, mu, lr, first):
    for i in range(p.shape[0]):
        p[i], b[i] = _nesterov(p[i], g[i], b[i], mu, lr, first)


@njit(parallel=True, **_OPTIONS)
def nesterov_parallel(p, g, b, mu, lr, first):
    for i in prange(p.shape[0]):
        p[i], b[i] = _nesterov(p[i], g[i], b[i], mu, lr, first)


@njit(**_OPTIONS)
def adam_serial(p, g, m, v, b1, b2, omb1, omb2, step_size, bc2, eps, decay):
    for i in range(p.shape[0]):
        p[i], m[i], v[i] = _adam(p[i], g[i], m[i], v[i], b1, b2, omb1, omb2, step_size, bc2,
                                 eps, decay)


@njit(parallel=True, **_OPTIONS)
def adam_parallel(p, g, m, v, b1, b2, omb1, omb2, step_size, bc2, eps, decay):
    for i in prange(p.shape[0]):
        p[i], m[i], v[i] = _adam(p[i], g[i], m[i], v[i], b1, b2, omb1, omb2, step_size, bc2,
                                 eps, decay)


@njit(**_OPTIONS)
def rmsprop_serial(p, g, v, alpha, one_minus_alpha, lr, eps):
    for i in range(p.shape[0]):
        p[i], v[i] = _rmsprop(p[i], g[i], v[i], alpha, one_minus_alpha, lr, eps)


@njit(parallel=True, **_OPTIONS)
def rmsprop_parallel(p, g, v, alpha, one_minus_alpha, lr, eps):
    for i in prange(p.shape[0]):
        p[i], v[i] = _rmsprop(p[i], g[i], v[i], alpha, one_minus_alpha, lr, eps)


@njit(**_OPTIONS)
def adagrad_serial(p, g, s, lr, eps):
    for i in range(p.shape[0]):
        p[i], s[i] = _adagrad(p[i], g[i], s[i], lr, eps)


@njit(parallel=True, **_OPTIONS)
def adagrad_parallel(p, g, s, lr, eps):
    for i in prange(p.shape[0]):
        p[i], s[i] = _adagrad(p[i], g[i], s[i], lr, eps)


_LOOPS: dict[str, tuple[Any, Any]] = {
    "sgd": (sgd_serial, sgd_parallel),
    "momentum": (momentum_serial, momentum_parallel),
    "nesterov": (nesterov_serial, nesterov_parallel),
    "adam": (adam_serial, adam_parallel),
    "rmsprop": (rmsprop_serial, rmsprop_parallel),
    "adagrad": (adagrad_serial, adagrad_parallel),
}
NAMES = tuple(_LOOPS)


def loop(name: str, size: int) -> Callable[..., None]:
    """The loop for rule ``name`` over arrays of ``size`` elements: serial below
    `PARALLEL_MIN`, else the parallel loop behind the process-wide lock."""
    serial, parallel = _LOOPS[name]
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


def compile_for(name: str, size: int, dtype: Any, args: tuple[Any, ...]) -> None:
    """Compile (or load from the cache) rule ``name``'s loop for ``dtype`` by running it on
    empty arrays, so a compile error shows at set-up time, not in the middle of a step."""
    serial, parallel = _LOOPS[name]
    fn = serial if size < PARALLEL_MIN else parallel
    empty = np.empty(0, dtype=dtype)
    arrays = fn.py_func.__code__.co_argcount - len(args)
    fn(*([empty] * arrays), *args)
