"""What every layer shares: the @layer decorator, the forward Context, and the device check.

A layer is an attrs class with a ``forward(x, ctx) -> (y, pullback)`` method: ``pullback(dy)``
returns the gradient with respect to ``x`` and adds each Param's gradient to its ``.grad``.
Calling a layer, ``layer(x)``, runs ``forward`` in evaluation mode and returns ``y``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from ..buffers import Buffer, check_value
from ..devices import Device, device_of, dtype_name, is_array, on_device
from ..errors import ArgumentError, ArgumentTypeError, DeviceMismatchError
from ..params import Param
from ..tree import param_paths, register_layer, require_model
from ..xp import namespace

Pullback = Callable[[Any], Any]


@attrs.frozen
class Context:
    """How a forward pass runs: training or evaluation, the layer path (for error messages),
    and the random generator (dropout)."""

    train: bool = False
    path: str = ""
    rng: np.random.Generator | None = None

    def child(self, name: str) -> Context:
        return attrs.evolve(self, path=f"{self.path}.{name}" if self.path else name)

    def generator(self) -> np.random.Generator:
        return self.rng if self.rng is not None else np.random.default_rng()


def layer(cls: type | None = None, *, name: str | None = None) -> Any:
    """Class decorator: make ``cls`` an attrs layer (identity equality) and register it, so it
    can be part of a model, converted, synced, saved and rebuilt by ``ms.load``."""

    def decorate(target: type) -> type:
        if not attrs.has(target):
            target = attrs.define(target, eq=False)
        if "__call__" not in target.__dict__:
            target.__call__ = call
        return register_layer(target, name)

    return decorate if cls is None else decorate(cls)


def call(model: Any, x: Any, *, train: bool = False, rng: np.random.Generator | None = None
         ) -> Any:
    """Run ``model`` on ``x`` (evaluation mode unless ``train``) and return its output."""
    require_model(model)
    with on_model_device(model):
        y, _ = forward_pair(model, x, Context(train=train, rng=check_rng(rng)))
    return y


def forward_pair(model: Any, x: Any, ctx: Context) -> tuple[Any, Any]:
    """``model.forward(x, ctx)``, checked to be the ``(y, pullback)`` pair every layer returns
    (a custom layer returning only ``y`` is the common slip); the error names ``ctx.path``,
    so a layer that calls its children through this names a bad child however deep."""
    out = model.forward(x, ctx)
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
        raise ArgumentTypeError(
            f"{ctx.path or 'model'}: {type(model).__name__}.forward returned a "
            f"{type(out).__name__}; a layer's "
            "forward(x, ctx) must return (y, pullback), where pullback(dy) returns dx and adds "
            "each Param's gradient (see docs/guide.md, 'Your own layer')")
    return out


def check_rng(rng: Any) -> np.random.Generator | None:
    """``rng`` as a Generator: None (fresh entropy), a Generator, or an int seed."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ArgumentError(f"rng={rng} is outside [0, ∞) (a seed must be non-negative)")
        return np.random.default_rng(int(rng))
    raise ArgumentTypeError(
        f"rng={rng!r} is a {type(rng).__name__}; expected None, a non-negative int seed or a "
        "numpy.random.Generator")


def on_model_device(model: Any) -> Any:
    """Make the model's GPU current while it runs (CuPy creates arrays and launches kernels
    on the current GPU); nothing to do elsewhere."""
    return on_device(param_device(model))


def param_device(node: Any) -> Device | None:
    """The device of a layer's Params (None for a layer without Params)."""
    for _, p in param_paths(node):
        return p.device
    return None


def check_input(x: Any, dev: Device | None, ctx: Context) -> None:
    """DeviceMismatchError unless ``x`` is an array on ``dev``, naming both and the layer path."""
    if not is_array(x):
        raise ArgumentTypeError(
            f"{ctx.path or 'model'}: input is a {type(x).__name__}; expected an array "
            "(convert lists with numpy.asarray)")
    if dev is not None and device_of(x) != dev:
        raise DeviceMismatchError(
            f"{ctx.path or 'model'}: input is on {device_of(x)} but the layer's Params are on "
            f"{dev}; move the batch with ms.to_device(x, '{dev}')")


def check_features(x: Any, width: int, ctx: Context, layer: str, argument: str) -> None:
    """ArgumentError unless ``x``'s last axis has ``width`` entries, naming path and shapes."""
    if x.ndim < 1 or x.shape[-1] != width:
        raise ArgumentError(
            f"{ctx.path or layer}: input has shape {tuple(x.shape)}, expected last axis "
            f"{argument}={width}")


def as_layer_dtype(x: Any, dtype: Any, ctx: Context, layer: str) -> Any:
    """``x`` in the layer's floating dtype: another float precision is cast (as Keras does,
    so float64 NumPy batches feed float32 models and gradients keep the Params' dtype);
    a non-floating input is an ArgumentError naming the path, its dtype and the expected one."""
    if x.dtype == dtype:
        return x
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ArgumentError(
            f"{ctx.path or layer}: input has dtype {dtype_name(x.dtype)}, expected a floating "
            f"dtype (the layer computes in {dtype_name(dtype)})")
    return xp.astype(x, dtype)


def param_field(*, optional: bool = False, **kwargs: Any) -> Any:
    """An attrs field that holds a Param (or None where ``optional``), marked so config
    extraction skips it. Its validator refuses anything else, at construction, on assignment
    and when ``ms.load`` rebuilds the layer from a file (which runs the class's validators)."""
    return attrs.field(metadata={"param": True}, validator=_holds_param(optional), **kwargs)


def _holds_param(optional: bool) -> Callable[[Any, Any, Any], None]:
    def check(node: Any, field: Any, value: Any) -> None:
        if (isinstance(value, Param) and not isinstance(value, Buffer)) or (
                optional and value is None):
            return
        raise ArgumentTypeError(
            f"{type(node).__name__}.{field.name} holds a {type(value).__name__}; expected a "
            "Param" + (" or None" if optional else ""))

    return check


def buffer_field(*, optional: bool = False, **kwargs: Any) -> Any:
    """An attrs field that holds a Buffer (state that is not trained: running statistics,
    counters), or None where ``optional``. Assigning an array to it afterwards writes the
    values into the Buffer in place, checked (same shape, dtype and device; a counter takes
    integers only); assigning another Buffer must match the one it replaces."""
    return attrs.field(metadata={"buffer": True}, validator=_holds_buffer(optional),
                       on_setattr=_assign_buffer(optional), **kwargs)


def _holds_buffer(optional: bool) -> Callable[[Any, Any, Any], None]:
    def check(node: Any, field: Any, value: Any) -> None:
        if type(value) is Buffer or (optional and value is None):
            return
        raise ArgumentTypeError(
            f"{type(node).__name__}.{field.name} holds a {type(value).__name__}; expected a "
            "Buffer" + (" or None" if optional else "") + " (ms.buffer_field)")

    return check


def _assign_buffer(optional: bool) -> Callable[[Any, Any, Any], Any]:
    def assign(node: Any, field: Any, value: Any) -> Any:
        where = f"{type(node).__name__}.{field.name}"
        old = getattr(node, field.name, None)
        if type(old) is Buffer and type(value) is not Buffer and value is not None:
            check_value(old, value, where)
            old.assign(value)
            return old
        if type(old) is Buffer and type(value) is Buffer and value is not old:
            check_value(old, value.value, where)
        _holds_buffer(optional)(node, field, value)
        return value

    return assign


def accumulate(p: Param | None, delta: Any) -> None:
    """Add ``delta`` to ``p.grad`` when ``p`` exists (helps layers with optional Params)."""
    if p is not None:
        p.accumulate_grad(delta)
