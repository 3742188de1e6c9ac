"""A real-number argument check shared by the places that take one outside the optimizers
(whose interval notation lives in optim/ranges.py)."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import ArgumentTypeError


def as_float(name: str, value: Any) -> float:
    """``value`` as a float: ArgumentTypeError for non-numbers (bools included); an int too
    large for a float becomes ±inf, which every finite interval then refuses."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}={value!r} is a {type(value).__name__}; expected a float")
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")
