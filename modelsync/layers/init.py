"""Argument checks and random generators shared by layer constructors."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ..checks import as_float
from ..errors import ArgumentError, ArgumentTypeError

FLOAT_DTYPES = ("float16", "float32", "float64")


def check_positive_int(argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{argument}={value!r} is a {type(value).__name__}; expected an int")
    if value < 1:
        raise ArgumentError(f"{argument}={value} is outside [1, ∞)")
    return int(value)


def positive_int(argument: str) -> Callable[[Any], int]:
    """``check_positive_int`` for one argument, as an attrs converter: the constructor's check
    is then also what attrs runs on assignment and what ``ms.load`` runs on a stored value."""
    return functools.partial(check_positive_int, argument)


def bool_arg(argument: str) -> Callable[[Any], bool]:
    """A converter for a flag ``argument``: True or False (NumPy's bools too), else an
    ArgumentTypeError naming it; also an attrs converter, so ``ms.load`` checks it."""

    def convert(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ArgumentTypeError(
                f"{argument}={value!r} is a {type(value).__name__}; expected True or False")
        return bool(value)

    return convert


def check_eps(eps: Any) -> float:
    """A normalisation's ``eps`` as a float in (0, ∞), else ArgumentError (ArgumentTypeError
    for a non-number); also an attrs converter, so ``ms.load`` checks a stored value."""
    value = as_float("eps", eps)
    if not 0 < value < math.inf:  # (NaN fails this too)
        raise ArgumentError(f"eps={eps!r} is outside (0, ∞)")
    return value


def check_dtype(value: Any) -> str:
    """The float dtype's name, from a name or a NumPy dtype/type (None is not a dtype here,
    though NumPy reads it as float64)."""
    name = None
    if isinstance(value, str):
        name = value
    elif value is not None:
        try:
            name = np.dtype(value).name
        except TypeError:
            pass
    if name not in FLOAT_DTYPES:
        raise ArgumentError(f"dtype={value!r} is not supported; expected one of {FLOAT_DTYPES}")
    return name


def generator(seed: int | None) -> np.random.Generator:
    """Layers initialise on the host from this generator (``seed=None``: fresh entropy)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ArgumentTypeError(
            f"seed={seed!r} is a {type(seed).__name__}; expected an int or None")
    if seed is not None and seed < 0:
        raise ArgumentError(f"seed={seed} is outside [0, ∞)")
    return np.random.default_rng(seed)
