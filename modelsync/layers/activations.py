"""Activations, as functions on arrays and as parameter-free layers.

``gelu`` is the tanh approximation (PyTorch's ``gelu(approximate="tanh")``): the array API
has no ``erf``, and the approximation differs from the exact form by under 1e-3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ..devices import dtype_name
from ..errors import ArgumentError, ArgumentTypeError
from ..tree import is_layer
from ..xp import namespace
from .base import Context, layer

_GELU_C = math.sqrt(2.0 / math.pi)


def relu(x: Any) -> Any:
    # maximum, not where: 20x faster on NumPy, and NaN propagates as in PyTorch
    return namespace(x).maximum(x, 0)


def tanh(x: Any) -> Any:
    return namespace(x).tanh(x)


def sigmoid(x: Any) -> Any:
    xp = namespace(x)
    # exp(min(x, 0)) / (1 + exp(-|x|)): exp of non-positive numbers only, so large |x|
    # neither overflows nor warns, and no `where` (several times slower on NumPy)
    num = xp.exp(xp.minimum(x, 0.0))
    den = xp.exp(-xp.abs(x))
    den += 1.0
    num /= den
    return num


def gelu(x: Any) -> Any:
    return _gelu_parts(x)[0]


def _gelu_parts(x: Any) -> tuple[Any, Any, Any]:
    """``gelu(x)``, with the ``x²`` and ``tanh`` it computed (its pullback reuses them: the
    exponential is most of the cost). Every step after the first is in place on a fresh
    temporary."""
    xp = namespace(x)
    x2 = x * x
    inner = x2 * 0.044715
    inner += 1.0
    inner *= x
    inner *= 2 * _GELU_C  # 2 sqrt(2/π) (x + 0.044715 x³)
    # tanh(u) = 1 - 2 / (exp(2u) + 1) (absolute error ~1e-7 in float32): NumPy's exp is
    # twice as fast as its tanh. 2u is clipped where |tanh(u)| rounds to 1 and exp cannot
    # overflow (float16: exp(11) < 65504), so nothing warns.
    limit = 11.0 if dtype_name(x.dtype) == "float16" else 80.0
    t = xp.exp(xp.clip(inner, -limit, limit))
    t += 1.0
    t = -2.0 / t
    t += 1.0
    y = t + 1.0
    y *= x
    y *= 0.5
    return y, x2, t


def _gelu_pair(x: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``gelu(x)`` and its pullback, sharing the forward's tanh (what `activate` runs)."""
    y, x2, t = _gelu_parts(x)

    def back(dy: Any) -> Any:
        # d gelu / dx = 0.5 (1 + t + x (1 - t²) sqrt(2/π) (1 + 3·0.044715 x²))
        slope = t * t
        slope -= 1.0
        slope *= x  # -x (1 - t²), zero where t is ±1 (before the large factor below)
        grad = x2 * (3 * 0.044715)
        grad += 1.0
        grad *= _GELU_C
        grad *= slope
        grad -= t  # (the sign is undone below)
        grad -= 1.0
        grad *= -0.5
        grad *= dy
        return grad

    return y, back


def softmax(x: Any) -> Any:
    xp = namespace(x)
    shifted = x - xp.max(x, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=-1, keepdims=True)


# Each backward takes the input x, the output y and dy, and returns dx.
def _relu_back(x: Any, y: Any, dy: Any) -> Any:
    mask = namespace(dy).astype(x > 0, dy.dtype)
    mask *= dy
    return mask


def _tanh_back(x: Any, y: Any, dy: Any) -> Any:
    return dy * (1.0 - y * y)


def _sigmoid_back(x: Any, y: Any, dy: Any) -> Any:
    return dy * y * (1.0 - y)


def _gelu_back(x: Any, y: Any, dy: Any) -> Any:
    xp = namespace(x)
    inner = _GELU_C * (x + 0.044715 * x * x * x)
    t = xp.tanh(inner)
    d_inner = _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner)


def _softmax_back(x: Any, y: Any, dy: Any) -> Any:
    xp = namespace(y)
    return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True))


ACTIVATIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any, Any], Any]]] = {
    "relu": (relu, _relu_back),
    "tanh": (tanh, _tanh_back),
    "sigmoid": (sigmoid, _sigmoid_back),
    "gelu": (gelu, _gelu_back),
    "softmax": (softmax, _softmax_back),
}


def _is_ours(function: Any) -> bool:
    """True only for this module's own activation functions: a user's function that happens
    to be called ``relu`` must not be swapped for ours."""
    return any(function is forward for forward, _ in ACTIVATIONS.values())


def check_activation(name: str | None, argument: str = "activation") -> str | None:
    """The activation's name (accepting the functions above too), or ArgumentError."""
    if name is None:
        return None
    if _is_ours(name):
        return name.__name__
    if isinstance(name, Activation):  # layers.ReLU() given where a name is expected
        return name.name
    if isinstance(name, str) and name in ACTIVATIONS:
        return name
    raise ArgumentError(
        f"{argument}={name!r} is not an activation; expected None or one of {sorted(ACTIVATIONS)}")


def activate(name: str | None, x: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Apply activation ``name`` to ``x``: the output and the pullback from dy to dx."""
    if name is None:
        return x, lambda dy: dy
    if name == "gelu":
        return _gelu_pair(x)
    forward, backward = ACTIVATIONS[name]
    y = forward(x)
    return y, lambda dy: backward(x, y, dy)


@layer
@attrs.define(eq=False)
class Activation:
    """A parameter-free layer applying one of the named activations."""

    name: str = attrs.field(converter=lambda v: check_activation(v, "name"))

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        return activate(self.name, x)


def ReLU() -> Activation:  # noqa: N802 - reads like a class at the call site
    return Activation("relu")


def Tanh() -> Activation:  # noqa: N802
    return Activation("tanh")


def Sigmoid() -> Activation:  # noqa: N802
    return Activation("sigmoid")


def GELU() -> Activation:  # noqa: N802
    return Activation("gelu")


def Softmax() -> Activation:  # noqa: N802
    return Activation("softmax")


def as_layer(item: Any, argument: str) -> Any:
    """A layer for ``item``: layers pass through, activation names and functions become
    Activation layers, anything else is a TypeError naming ``argument``."""
    if is_layer(item):
        return item
    if isinstance(item, str) or _is_ours(item):
        return Activation(check_activation(item, argument))
    raise ArgumentTypeError(
        f"{argument} is a {type(item).__name__}; expected a layer registered with @ms.layer "
        f"or an activation name from {sorted(ACTIVATIONS)}")
