"""Combinators for models that are not a chain: SkipConnection (residual blocks) and Parallel
(branches joined by a connection).

A connection joins the branch outputs: ``"add"`` and ``"mul"`` elementwise (the same shape
in every branch, no broadcasting, so a wrong width is an error rather than a silent
broadcast), ``"concat"`` along the last axis and ``"concat_channels"`` along axis 1 of
``(N, C, ...)`` outputs. Every branch receives the same ``x``; the pullback routes each
branch its part of ``dy`` and sums the branches' ``dx``. Nothing here writes into an array
it did not make: a branch may return ``x`` itself (an identity) or hand ``dy`` straight back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..devices import is_array
from ..errors import ArgumentError, ArgumentTypeError
from ..tree import TrackedList, is_layer
from ..xp import namespace
from . import base
from .base import Context, as_layer_dtype, forward_pair

CONNECTIONS = ("add", "mul", "concat", "concat_channels")


def check_connection(value: Any) -> str:
    """The connection's name, or ArgumentError naming the argument, the value and the
    choices (also the attrs converter, so assignment and ``ms.load`` check it too)."""
    if isinstance(value, str) and value in CONNECTIONS:
        return value
    hint = (" (Parallel's first argument is the connection: Parallel('add', a, b))"
            if is_layer(value) else "")
    raise ArgumentError(
        f"connection={value!r} is not a connection; expected one of {list(CONNECTIONS)}{hint}")


def _as_child(item: Any) -> Any:
    from .activations import as_layer

    return as_layer(item, "SkipConnection.layer")


def _as_branches(items: Any) -> TrackedList:
    """``items`` as a non-empty TrackedList of layers (activation names become layers)."""
    from .activations import as_layer

    if not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(
            f"Parallel.layers is a {type(items).__name__}; expected a list of layers")
    if not items:
        raise ArgumentError("Parallel.layers is empty; expected at least one layer "
                            "(Parallel(connection, layer_1, ..., layer_k))")
    return TrackedList(as_layer(item, f"Parallel layer {i}") for i, item in enumerate(items))


# -- connections -------------------------------------------------------------------------
Split = Callable[[Any], list[Any]]


def connect(connection: str, ys: list[Any], names: list[str], ctx: Context, owner: str
            ) -> tuple[Any, Split]:
    """Join the branch outputs ``ys`` (``names`` says where each came from, for errors):
    the joined output, and ``split(dy)``, each branch's part of ``dy`` in its own dtype."""
    _check_shapes(connection, ys, names, ctx, owner)
    dtypes = [y.dtype for y in ys]
    mixed = any(d != dtypes[0] for d in dtypes)  # e.g. a float64 skip beside a float32 branch
    # (the namespace only where it is needed: looking it up costs more than a small add)
    xp = namespace(*ys) if mixed or connection.startswith("concat") else None
    if mixed:
        common = xp.result_type(*dtypes)
        ys = [y if y.dtype == common else xp.astype(y, common) for y in ys]

    def own_dtype(parts: list[Any]) -> list[Any]:
        if not mixed:
            return parts
        return [p if p.dtype == d else xp.astype(p, d) for p, d in zip(parts, dtypes, strict=True)]

    if connection == "add":
        y = ys[0] + ys[1] if len(ys) > 1 else ys[0]
        for other in ys[2:]:
            y += other  # y is fresh
        return y, lambda dy: own_dtype([dy] * len(ys))
    if connection == "mul":
        y = _product(ys, skip=None)

        def split_mul(dy: Any) -> list[Any]:
            return own_dtype([dy * _product(ys, skip=i) if len(ys) > 1 else dy
                              for i in range(len(ys))])

        return y, split_mul
    axis = -1 if connection == "concat" else 1
    widths = [y.shape[axis] for y in ys]
    y = xp.concat(ys, axis=axis)

    def split_concat(dy: Any) -> list[Any]:
        parts, start = [], 0
        for width in widths:
            index = ((..., slice(start, start + width)) if axis == -1
                     else (slice(None), slice(start, start + width), ...))
            parts.append(dy[index])
            start += width
        return own_dtype(parts)

    return y, split_concat


def _product(ys: list[Any], skip: int | None) -> Any:
    """The elementwise product of ``ys`` leaving out index ``skip``, in a fresh array."""
    factors = [y for i, y in enumerate(ys) if i != skip]
    out = factors[0] * factors[1] if len(factors) > 1 else factors[0] * 1
    for f in factors[2:]:
        out *= f
    return out


def _check_shapes(connection: str, ys: list[Any], names: list[str], ctx: Context, owner: str
                  ) -> None:
    where = ctx.path or owner
    shapes = [tuple(y.shape) for y in ys]
    if connection in ("add", "mul"):
        for name, shape in zip(names[1:], shapes[1:], strict=True):
            if shape != shapes[0]:
                raise ArgumentError(
                    f"{where}: connection={connection!r} needs outputs of one shape, but "
                    f"{names[0]} gave shape {shapes[0]} and {name} gave shape {shape}")
        return
    axis = len(shapes[0]) - 1 if connection == "concat" else 1
    for name, shape in zip(names, shapes, strict=True):
        if len(shape) <= axis or axis < 0:
            expected = ("at least one axis" if connection == "concat"
                        else "(N, C, ...) outputs with at least two axes")
            raise ArgumentError(
                f"{where}: connection={connection!r} needs {expected}, but {name} gave shape "
                f"{shape}")
    joined = "the last axis" if connection == "concat" else "axis 1"
    for name, shape in zip(names[1:], shapes[1:], strict=True):
        if len(shape) != len(shapes[0]) or any(
                a != b for i, (a, b) in enumerate(zip(shape, shapes[0], strict=True)) if i != axis):
            raise ArgumentError(
                f"{where}: connection={connection!r} joins {joined} and needs every other axis "
                f"equal, but {names[0]} gave shape {shapes[0]} and {name} gave shape {shape}")


def _check_output(y: Any, child: Any, ctx: Context) -> None:
    """ArgumentTypeError unless a branch's output is an array the connection can join."""
    if not is_array(y):
        raise ArgumentTypeError(
            f"{ctx.path}: {type(child).__name__}.forward returned y of type "
            f"{type(y).__name__}; a combinator joins arrays")


# -- layers ------------------------------------------------------------------------------
@base.layer
@attrs.define(eq=False, init=False)
class SkipConnection:
    """``SkipConnection(layer, connection="add")(x) == connection(layer(x), x)``: a residual
    block with ``"add"``. The wrapped layer is held in ``.layer``."""

    layer: Any = attrs.field(converter=_as_child)
    connection: str = attrs.field(converter=check_connection)

    def __init__(self, layer: Any, connection: str = "add") -> None:
        self.__attrs_init__(layer, connection)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        base.check_input(x, None, ctx)  # the skip joins x itself: it must be an array
        inner = ctx.child("layer")
        fx, back = forward_pair(self.layer, x, inner)
        _check_output(fx, self.layer, inner)
        in_dtype = x.dtype
        skip = as_layer_dtype(x, fx.dtype, ctx, "SkipConnection")
        y, split = connect(self.connection, [fx, skip],
                           [inner.path, "the skip (the input)"], ctx, "SkipConnection")

        def pullback(dy: Any) -> Any:
            d_layer, d_skip = split(dy)
            if d_skip.dtype != in_dtype:
                d_skip = namespace(d_skip).astype(d_skip, in_dtype)
            return back(d_layer) + d_skip  # fresh: neither operand is written

        return y, pullback


@base.layer
@attrs.define(eq=False, init=False)
class Parallel:
    """``Parallel(connection, a, b, ...)(x) == connection(a(x), b(x), ...)``; the branches
    are held in ``.layers``."""

    connection: str = attrs.field(converter=check_connection)
    # The converter is the constructor's check, run again on assignment and by ms.load.
    layers: list[Any] = attrs.field(converter=_as_branches)

    def __init__(self, connection: str, *layers: Any) -> None:
        self.__attrs_init__(connection, layers)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        ys, backs, names = [], [], []
        for i, child in enumerate(self.layers):
            inner = ctx.child(f"layers.{i}")
            y, back = forward_pair(child, x, inner)
            _check_output(y, child, inner)
            ys.append(y)
            backs.append(back)
            names.append(inner.path)
        y, split = connect(self.connection, ys, names, ctx, "Parallel")

        def pullback(dy: Any) -> Any:
            # The first sum is a fresh array (a branch's dx may be a caller's array, such as
            # dy itself), so the later ones may add into it in place.
            # A branch whose input has no gradient (indices into an Embedding) gives None.
            parts = [back(part) for back, part in zip(backs, split(dy), strict=True)]
            parts = [part for part in parts if part is not None]
            if not parts:
                return None
            dx = parts[0] + parts[1] if len(parts) > 1 else parts[0]
            for part in parts[2:]:
                dx += part
            return dx

        return y, pullback

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Any:
        return self.layers[index]
