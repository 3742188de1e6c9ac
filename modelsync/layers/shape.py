"""Flatten and Reshape: layers that change only an array's shape, per sample (the batch axis
stays first), and hand the gradient back in the input's shape."""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs

from ..errors import ArgumentError, ArgumentTypeError
from .base import Context, check_input, layer
from .windows import array_module


def _check_start_dim(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"start_dim={value!r} is a {type(value).__name__}; expected an int")
    return int(value)


def _check_shape(value: tuple[int, ...]) -> tuple[int, ...]:
    """A per-sample shape: a tuple (or list) of ints ≥ 1, with at most one -1."""
    items = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        else value
    if not isinstance(items, (tuple, list)):
        raise ArgumentTypeError(
            f"shape={value!r} is a {type(value).__name__}; expected a tuple of ints")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ArgumentTypeError(f"shape={value!r} holds a {type(item).__name__}; "
                                    "expected ints")
        if item < 1 and item != -1:
            raise ArgumentError(f"shape={value!r} holds {item}; expected sizes ≥ 1 or one -1")
    if sum(1 for item in items if item == -1) > 1:
        raise ArgumentError(f"shape={value!r} has more than one -1; at most one size is "
                            "inferred")
    return tuple(int(item) for item in items)


@layer
@attrs.define(eq=False)
class Flatten:
    """``torch.nn.Flatten(start_dim)``: axes ``start_dim`` to the last become one
    (``(N, C, H, W) -> (N, C·H·W)`` by default). A negative ``start_dim`` counts from the
    end, as in torch."""

    start_dim: int = attrs.field(default=1, converter=_check_start_dim)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, None, ctx)
        start = self.start_dim + x.ndim if self.start_dim < 0 else self.start_dim
        if not 0 <= start < max(x.ndim, 1):
            raise ArgumentError(
                f"{ctx.path or 'Flatten'}: input has shape {tuple(x.shape)} ({x.ndim} axes); "
                f"start_dim={self.start_dim} is not one of its axes")
        xp = array_module(x)
        shape = tuple(x.shape)
        flat = math.prod(shape[start:])  # (not -1: an empty batch reshapes too)
        return xp.reshape(x, (*shape[:start], flat)), lambda dy: xp.reshape(dy, shape)


@layer
@attrs.define(eq=False)
class Reshape:
    """Reshape each sample: ``(N, ...) -> (N, *shape)``; one entry of ``shape`` may be -1
    (inferred, as in ``reshape``)."""

    shape: tuple[int, ...] = attrs.field(converter=_check_shape)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, None, ctx)
        where = ctx.path or "Reshape"
        if x.ndim < 1:
            raise ArgumentError(f"{where}: input is a scalar; expected a batch (N, ...)")
        shape = tuple(x.shape)
        per_sample = math.prod(shape[1:])
        known = math.prod(n for n in self.shape if n != -1)
        fits = per_sample % known == 0 if -1 in self.shape else per_sample == known
        if not fits:
            raise ArgumentError(
                f"{where}: input has shape {shape}, {per_sample} entries per sample, which "
                f"cannot be reshaped to shape={self.shape}")
        xp = array_module(x)
        target = tuple(per_sample // known if n == -1 else n for n in self.shape)
        return xp.reshape(x, (shape[0], *target)), lambda dy: xp.reshape(dy, shape)
