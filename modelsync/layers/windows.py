"""Sliding windows over the spatial axes of ``(N, C, *spatial)`` arrays, shared by the
convolution and pooling layers: argument checks for kernel sizes, strides, paddings and
dilations, zero (or -inf) padding, and the strided slice of each kernel offset.

Everything here is array-API code (slicing, ``stack``, ``matmul``, slice assignment), so it
runs on NumPy, CuPy and array_api_strict alike; NumPy arrays go straight to NumPy's own
functions of the same names, which skips array_api_compat's per-call wrapping.
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from ..errors import ArgumentError, ArgumentTypeError
from ..xp import namespace

PADDING_WORDS = ("same", "valid")


#: NumPy 2.1 has every array-API name used here (permute_dims, astype, device=...)
_NUMPY_IS_ARRAY_API = np.lib.NumpyVersion(np.__version__) >= "2.1.0"


def array_module(*arrays: Any) -> Any:
    """NumPy itself for NumPy arrays (on NumPy ≥ 2.1, which has every name used here), else
    the array-API namespace (array_api_compat's wrapper of an older NumPy)."""
    if _NUMPY_IS_ARRAY_API and all(type(a) is np.ndarray for a in arrays):
        return np
    return namespace(*arrays)


def _int_tuple(argument: str, value: Any, nd: int, low: int) -> tuple[int, ...]:
    """``value`` (an int or a list/tuple of ``nd`` ints, each ≥ ``low``) as an ``nd``-tuple."""
    items = value if isinstance(value, (tuple, list)) else (value,) * nd
    if len(items) != nd:
        raise ArgumentError(
            f"{argument}={value!r} has {len(items)} entries; expected an int or {nd} ints")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ArgumentTypeError(
                f"{argument}={value!r} holds a {type(item).__name__}; expected ints")
        if item < low:
            raise ArgumentError(f"{argument}={value!r} is outside [{low}, ∞)")
    return tuple(int(item) for item in items)


def int_tuple(argument: str, nd: int, low: int = 1) -> Callable[[Any], tuple[int, ...]]:
    """An attrs converter: an int or ``nd`` ints (≥ ``low``) as an ``nd``-tuple (a stored
    list comes back as a tuple, so ``ms.load`` rebuilds what the constructor made)."""
    return functools.partial(_int_tuple, argument, nd=nd, low=low)


def _padding(value: Any, nd: int) -> str | tuple[int, ...]:
    if isinstance(value, str):
        if value not in PADDING_WORDS:
            raise ArgumentError(
                f"padding={value!r} is not a padding; expected an int, {nd} ints, or one of "
                f"{PADDING_WORDS}")
        return value
    return _int_tuple("padding", value, nd, 0)


def padding_arg(nd: int) -> Callable[[Any], str | tuple[int, ...]]:
    """An attrs converter for ``padding``: ``"same"``, ``"valid"``, or ``nd`` ints ≥ 0."""
    return functools.partial(_padding, nd=nd)


def pad_pairs(padding: str | tuple[int, ...], kernel: tuple[int, ...],
              dilation: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Each spatial axis's (before, after) padding. ``"same"`` pads ``d·(k-1)`` in total,
    the odd one after (as torch does for even kernels); ``"valid"`` pads nothing."""
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in padding)


def out_sizes(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
              pads: tuple[tuple[int, int], ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """The output length of each spatial axis (floor mode, as torch's default); the caller
    has checked that each dilated kernel fits the padded input."""
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                 for n, k, s, (lo, hi), d in zip(size, kernel, stride, pads, dilation,
                                                 strict=True))


def check_fits(shape: tuple[int, ...], kernel: tuple[int, ...],
               pads: tuple[tuple[int, int], ...], dilation: tuple[int, ...], where: str) -> None:
    """ArgumentError unless each (dilated) kernel fits its padded spatial axis."""
    for axis, (n, k, (lo, hi), d) in enumerate(zip(shape[2:], kernel, pads, dilation,
                                                   strict=True)):
        reach = d * (k - 1) + 1
        if reach > n + lo + hi:
            raise ArgumentError(
                f"{where}: input has shape {tuple(shape)}; the kernel spans {reach} entries "
                f"along spatial axis {axis} (kernel_size={kernel}, dilation={dilation}) but "
                f"the padded input has only {n + lo + hi} there (padding {lo}+{hi})")


def check_ndim(x: Any, nd: int, where: str, layout: str) -> None:
    if x.ndim != nd + 2:
        raise ArgumentError(
            f"{where}: input has shape {tuple(x.shape)} ({x.ndim} axes), expected {nd + 2} "
            f"axes {layout}")


def padded(x: Any, pads: tuple[tuple[int, int], ...], value: float, xp: Any,
           lead: int = 2) -> Any:
    """``x`` with its axes after the first ``lead`` padded by ``pads``, filled with ``value``
    (``x`` itself when nothing is padded)."""
    if not any(lo or hi for lo, hi in pads):
        return x
    shape = (*x.shape[:lead], *(n + lo + hi for n, (lo, hi) in
                                zip(x.shape[lead:], pads, strict=True)))
    out = xp.full(shape, value, dtype=x.dtype, device=array_api_compat.device(x))
    out[inner(x.shape[:lead], x.shape[lead:], pads)] = x
    return out


def inner(lead: tuple[int, ...], size: tuple[int, ...], pads: tuple[tuple[int, int], ...]
          ) -> tuple[slice, ...]:
    """The index of the unpadded part of a padded array."""
    return (*(slice(None) for _ in lead),
            *(slice(lo, lo + n) for n, (lo, _) in zip(size, pads, strict=True)))


@functools.lru_cache(maxsize=256)
def offsets(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
            out: tuple[int, ...], lead: int = 2) -> tuple[tuple[slice, ...], ...]:
    """For each kernel offset (row-major, as a weight's kernel axes are laid out), the index
    into the padded input of the entries that offset meets at every output position; axes
    after the spatial ones are taken whole (cached: a training loop asks for the same few
    shapes every step)."""
    return tuple(
        (*(slice(None) for _ in range(lead)),
         *(slice(o * d, o * d + (m - 1) * s + 1, s)
           for o, d, m, s in zip(offset, dilation, out, stride, strict=True)), ...)
        for offset in itertools.product(*(range(k) for k in kernel)))

