"""Dropout: in training, zero each entry with probability ``p`` and scale the rest by
``1/(1-p)`` (inverted dropout); in evaluation, the identity.

Training mode is ``ctx.train``: ``ms.backprop``, ``ms.train`` and ``model(x, train=True)``
train; ``model(x)`` evaluates. The keep-mask is drawn *on the input's device*, so nothing
crosses per step: one 64-bit key is taken from ``ctx.generator()`` (the ``rng=`` given to
``backprop``/``train``/``model(...)``, or fresh entropy) and each entry's random bits are a
counter-based hash of (key, its flat index), Widynski's "squares" generator, computed with
the array API's unsigned integer operations. Integer arithmetic is exact everywhere, so one
seed gives the same mask on the host, the simulated devices and a GPU. On the host a
numba loop (`modelsync.kernels`) computes the same bits and writes the scaled mask in one
pass; without numba, or for float16, the array-API form runs there too.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from .. import kernels
from ..checks import as_float
from ..devices import HOST, device_of, dtype_name, on_device
from ..errors import ArgumentError
from ..kernels import prange
from ..xp import namespace
from .base import Context, check_input, layer

_HIGH = 32  # the shift that swaps the halves of a 64-bit word
_LOOP_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # (numba's float16 is partial)


def _check_p(p: Any) -> float:
    value = as_float("p", p)
    if not 0.0 <= value < 1.0:
        raise ArgumentError(f"p={p!r} is outside [0, 1)")
    return value


def random_bits(key: int, shape: tuple[int, ...], xp: Any, device: Any) -> Any:
    """32 random bits per entry of ``shape`` (uint64 values below 2**32) on ``device``: the
    "squares" counter-based generator (Widynski 2020) at counters 0, 1, ... with ``key``
    (odd, 64 bits). Pure integer arithmetic, so the same on every device."""
    n = int(np.prod(shape, dtype=np.int64))
    if device.kind == "sim":
        counter = xp.arange(n, dtype=xp.uint64, device=device.native)
    else:
        counter = xp.arange(n, dtype=xp.uint64)
    y = counter * key
    z = y + key
    x = y * y + y
    x = (x >> _HIGH) | (x << _HIGH)
    x = x * x + z
    x = (x >> _HIGH) | (x << _HIGH)
    x = x * x + y
    x = (x >> _HIGH) | (x << _HIGH)
    return xp.reshape((x * x + z) >> _HIGH, shape)


def mask_loop(mask: Any, key: Any, threshold: Any, scale: Any) -> None:  # pragma: no cover
    """The host loop (compiled): `random_bits` at each flat index, then ``scale`` where the
    bits reach ``threshold``, else 0: the mask in one pass. ``key``, ``threshold``: uint64."""
    high = np.uint64(32)
    for i in prange(mask.shape[0]):
        y = np.uint64(i) * key
        z = y + key
        x = y * y + y
        x = (x >> high) | (x << high)
        x = x * x + z
        x = (x >> high) | (x << high)
        x = x * x + y
        x = (x >> high) | (x << high)
        mask[i] = scale if ((x * x + z) >> high) >= threshold else 0.0


def _host_mask(key: int, threshold: int, scale: float, shape: tuple[int, ...],
               dtype: np.dtype) -> np.ndarray | None:
    """The scaled mask by the compiled loop, or None where it cannot run (no numba, float16)."""
    if dtype not in _LOOP_DTYPES:
        return None
    module = kernels.host_kernels()
    if module is None:
        return None
    mask = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
    try:
        # (serial, as blend's loop: a parallel one waits for descheduled threads on a busy
        # machine, and one pass of integer arithmetic gains little from a second core)
        module.loop(mask_loop, 0)(mask, np.uint64(key), np.uint64(threshold), dtype.type(scale))
    except Exception as exc:  # a numba that cannot compile: the array-API form still works
        kernels.disable(f"{type(exc).__name__}: {exc}")
        return None
    return mask.reshape(shape)


@layer
@attrs.define(eq=False)
class Dropout:
    """``Dropout(p)``: drop probability ``p`` in ``[0, 1)``; no Params."""

    p: float = attrs.field(converter=_check_p)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, None, ctx)
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ArgumentError(
                f"{ctx.path or 'Dropout'}: input has dtype {dtype_name(x.dtype)}, expected a "
                "floating dtype")
        if not ctx.train or self.p == 0.0:
            return x, _identity
        key = int(ctx.generator().integers(0, 1 << 63)) * 2 + 1  # (odd, as squares wants)
        threshold = min(round(self.p * 2.0 ** 32), (1 << 32) - 1)  # keep: bits >= threshold
        dev = device_of(x)
        mask = None
        if dev == HOST:
            mask = _host_mask(key, threshold, 1.0 / (1.0 - self.p), tuple(x.shape), x.dtype)
        if mask is None:
            with on_device(dev):  # (CuPy allocates on the current GPU)
                keep = random_bits(key, tuple(x.shape), xp, dev) >= threshold
                mask = xp.astype(keep, x.dtype)
                mask *= 1.0 / (1.0 - self.p)

        def pullback(dy: Any) -> Any:
            return dy * mask

        return x * mask, pullback


def _identity(dy: Any) -> Any:
    return dy
