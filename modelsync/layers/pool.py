"""Pooling over the spatial axes of ``(N, C, H, W)``: MaxPool2d and AvgPool2d as PyTorch's
(floor mode; AvgPool counts the zero padding, torch's ``count_include_pad=True``), and
GlobalAvgPool, the mean over every axis after the channel axis.

Windows are strided slices of the padded input, one per kernel offset (windows.py), so the
same code runs on every device; MaxPool's backward sends each output's gradient to the first
maximum of its window, as torch does.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import attrs

from ..devices import dtype_name
from ..errors import ArgumentError
from .base import Context, check_input, layer
from .windows import (
    array_module,
    check_fits,
    check_ndim,
    inner,
    int_tuple,
    offsets,
    out_sizes,
    padded,
)


def _floating(x: Any, where: str) -> None:
    if not array_module(x).isdtype(x.dtype, "real floating"):
        raise ArgumentError(
            f"{where}: input has dtype {dtype_name(x.dtype)}, expected a floating dtype")


def _half_kernel(node: Any, field: Any, padding: tuple[int, ...]) -> None:
    """Validator: padding at most half the kernel on each axis (torch's rule: more would
    make windows of padding only)."""
    if any(p > k // 2 for p, k in zip(padding, node.kernel_size, strict=True)):
        raise ArgumentError(
            f"padding={padding} is more than half of kernel_size={node.kernel_size}; expected "
            "at most kernel_size // 2 on each axis")


@attrs.define(eq=False, init=False)
class _Pool2d:
    """What MaxPool2d and AvgPool2d share: their configuration, the constructor, checks,
    padding and the windows."""

    kernel_size: tuple[int, ...] = attrs.field(converter=int_tuple("kernel_size", 2))
    stride: tuple[int, ...] = attrs.field(converter=int_tuple("stride", 2))
    padding: tuple[int, ...] = attrs.field(converter=int_tuple("padding", 2, 0),
                                           validator=_half_kernel)

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        _pool_init(self, kernel_size, stride, padding)

    def _windows(self, x: Any, ctx: Context) -> tuple[tuple, tuple[int, int], Any]:
        """The checked input's padding pairs, output size and each kernel offset's index."""
        where = ctx.path or type(self).__name__
        check_input(x, None, ctx)
        check_ndim(x, 2, where, "(N, C, H, W)")
        _floating(x, where)
        pads = tuple((p, p) for p in self.padding)
        ones = (1, 1)
        check_fits(tuple(x.shape), self.kernel_size, pads, ones, where)
        out = out_sizes(tuple(x.shape[2:]), self.kernel_size, self.stride, pads, ones)
        return pads, out, offsets(self.kernel_size, self.stride, ones, out)


def _pool_init(self: Any, kernel_size: Any, stride: Any, padding: Any) -> None:
    kernel = int_tuple("kernel_size", 2)(kernel_size)
    self.__attrs_init__(kernel, kernel if stride is None else stride, padding)


@layer
@attrs.define(eq=False, init=False)
class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0)``: the largest entry of each
    window (padding never wins: it is -inf); ``stride`` defaults to ``kernel_size``."""

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        pads, _, windows = self._windows(x, ctx)
        xp = array_module(x)
        shape = tuple(x.shape)
        xpad = padded(x, pads, -math.inf, xp)
        views = [xpad[index] for index in windows]  # views: nothing is copied
        # elementwise maxima of the offsets' views: NumPy is many times faster at these than
        # at a reduction over a short stacked axis
        y = xp.maximum(views[0], views[-1])
        for view in views[1:-1]:
            y = xp.maximum(y, view)

        def pullback(dy: Any) -> Any:
            dxp = xp.zeros(tuple(xpad.shape), dtype=dy.dtype, device=array_api_compat.device(dy))
            taken = None
            for index, view in zip(windows, views, strict=True):
                # the first maximum of each window (a NaN counts as one), as torch picks
                hit = (view == y) | xp.isnan(view)
                if taken is not None:
                    hit = hit & ~taken
                taken = hit if taken is None else taken | hit
                dxp[index] += dy * xp.astype(hit, dy.dtype)
            return dxp[inner(shape[:2], shape[2:], pads)]

        return y, pullback


@layer
@attrs.define(eq=False, init=False)
class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0)``: each window's mean, the
    zero padding counted (torch's default ``count_include_pad=True``); ``stride`` defaults
    to ``kernel_size``."""

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        pads, out, windows = self._windows(x, ctx)
        xp = array_module(x)
        shape = tuple(x.shape)
        scale = 1.0 / len(windows)
        xpad = padded(x, pads, 0.0, xp)
        y = xp.zeros((*shape[:2], *out), dtype=x.dtype, device=array_api_compat.device(x))
        for index in windows:
            y += xpad[index]
        y *= scale

        def pullback_windows(dy: Any) -> Any:
            share = dy * scale
            dxp = xp.zeros(tuple(xpad.shape), dtype=dy.dtype, device=array_api_compat.device(dy))
            for index in windows:
                dxp[index] += share
            return dxp[inner(shape[:2], shape[2:], pads)]

        return y, pullback_windows


@layer
@attrs.define(eq=False)
class GlobalAvgPool:
    """The mean over every axis after the channel axis: ``(N, C, ...) -> (N, C)``, as
    ``torch.nn.AdaptiveAvgPool2d(1)`` followed by a flatten."""

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        where = ctx.path or "GlobalAvgPool"
        check_input(x, None, ctx)
        if x.ndim < 3:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)} ({x.ndim} axes), expected at "
                "least 3 axes (N, C, ...)")
        _floating(x, where)
        xp = array_module(x)
        shape = tuple(x.shape)
        axes = tuple(range(2, x.ndim))
        scale = 1.0 / math.prod(shape[2:])

        def pullback(dy: Any) -> Any:
            share = xp.reshape(dy * scale, (*shape[:2], *(1 for _ in axes)))
            return xp.asarray(xp.broadcast_to(share, shape), copy=True)  # writable, as others

        return xp.mean(x, axis=axes), pullback
