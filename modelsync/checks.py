"""Argument checks shared across modules: a real number outside the optimizers (whose
interval notation lives in optim/ranges.py), and how two models are matched."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import ArgumentError, ArgumentTypeError

#: How two models' Params are matched (sync, load_into, distributed): by graph id, or by
#: paths, shapes and dtypes only.
MATCH_CHECKS = ("graph", "structure")


def as_float(name: str, value: Any) -> float:
    """``value`` as a float: ArgumentTypeError for non-numbers (bools included); an int too
    large for a float becomes ±inf, which every finite interval then refuses."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}={value!r} is a {type(value).__name__}; expected a float")
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def match_check(check: Any) -> str:
    """``check`` if it is one of MATCH_CHECKS, else ArgumentError listing them."""
    if check not in MATCH_CHECKS:
        raise ArgumentError(f"check={check!r} is not a check; expected one of {MATCH_CHECKS}")
    return check


def soft_tau(tau: Any) -> float:
    """``tau`` of a soft update (``tau*src + (1-tau)*dst``) as a float in (0, 1], else
    ArgumentError (ArgumentTypeError for a non-number)."""
    value = as_float("tau", tau)
    if not 0.0 < value <= 1.0:  # (NaN fails this too)
        raise ArgumentError(f"tau={tau!r} is outside (0, 1]")
    return value
