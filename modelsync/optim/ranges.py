"""Hyperparameter checks written in interval notation, as proposed in the Flux discussion
(``@restrict_range lr "[0, ∞)"``): a bad value raises an error naming the argument, the value
and the interval, never an ``assert`` (which ``python -O`` would silently drop).

``check_range("beta1", 1.5, "[0, 1)")`` raises ``ArgumentError("beta1=1.5 is outside [0, 1)")``.
``restrict_range("[0, ∞)")`` is the same check as a class attribute that validates on every
assignment, so ``opt.lr = -1`` is refused just like ``Adam(ps, lr=-1)``.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import attrs

from ..errors import ArgumentError, ArgumentTypeError

_INTERVAL_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")
_INFINITIES = {"∞": math.inf, "+∞": math.inf, "inf": math.inf, "+inf": math.inf,
               "-∞": -math.inf, "−∞": -math.inf, "-inf": -math.inf}


@attrs.frozen
class Interval:
    """A real interval parsed from notation such as ``"[0, 1)"`` or ``"(0, ∞)"``: a square
    bracket includes its end, a parenthesis excludes it; ``∞`` (or ``inf``) is unbounded."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    def __contains__(self, value: float) -> bool:
        # NaN fails every comparison, so it is outside every interval.
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        return self.text


def parse_interval(text: str) -> Interval:
    """Parse interval notation (``"[0, ∞)"``); ArgumentError for anything that is not one."""
    if not isinstance(text, str):
        raise ArgumentTypeError(
            f"interval={text!r} is a {type(text).__name__}; expected a string such as '[0, 1)'")
    return _parse(text)


@functools.cache
def _parse(text: str) -> Interval:
    match = _INTERVAL_RE.match(text)
    if match is None:
        raise ArgumentError(
            f"interval={text!r} is not interval notation; expected e.g. '[0, 1)' or '(0, ∞)'")
    opening, low_text, high_text, closing = match.groups()
    low, high = _endpoint(low_text, text), _endpoint(high_text, text)
    if not low <= high:
        raise ArgumentError(f"interval={text!r} is empty: {low_text} > {high_text}")
    return Interval(low, high, opening == "[", closing == "]", text.strip())


def _endpoint(token: str, text: str) -> float:
    if token in _INFINITIES:
        return _INFINITIES[token]
    try:
        value = float(token)
    except ValueError:
        raise ArgumentError(
            f"interval={text!r}: endpoint {token!r} is not a number or ∞") from None
    if math.isnan(value):
        raise ArgumentError(f"interval={text!r}: endpoint {token!r} is not a number or ∞")
    return value


def check_range(name: str, value: Any, interval: str | Interval) -> float:
    """``value`` as a float if it is a real number inside ``interval``.

    Raises ArgumentTypeError for non-numbers (strings, None, bools, complex, arrays) and
    ArgumentError ``"{name}={value} is outside {interval}"`` otherwise (NaN is outside every
    interval; ±∞ is outside unless the interval includes it with a square bracket).
    """
    spec = interval if isinstance(interval, Interval) else parse_interval(interval)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{name}={value!r} is a {type(value).__name__}; expected a real number in {spec}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range: as good as infinite
        number = math.inf if value > 0 else -math.inf
    if number not in spec:
        raise ArgumentError(f"{name}={_show(value, number)} is outside {spec}")
    return number


def check_ranges(name: str, values: Any, names: Sequence[str], interval: str | Interval
                 ) -> tuple[float, ...]:
    """A fixed-length tuple hyperparameter (Adam's ``betas``): each item checked under its own
    name (``"beta1=1.5 is outside [0, 1)"``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(
            f"{name}={values!r} is a {type(values).__name__}; expected a tuple of "
            f"{len(names)} numbers ({', '.join(names)})")
    if len(values) != len(names):
        raise ArgumentError(
            f"{name}={tuple(values)!r} has {len(values)} value(s); expected {len(names)} "
            f"({', '.join(names)})")
    return tuple(check_range(n, v, interval) for n, v in zip(names, values, strict=True))


def _show(value: Any, number: float) -> str:
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return repr(number)


class restrict_range:  # noqa: N801 - named after the Flux macro it reproduces
    """A class attribute holding a hyperparameter that must lie in an interval.

    Every assignment (in ``__init__``, by ``load_state_dict`` or by a user's schedule,
    ``opt.lr = 1e-4``) goes through `check_range`; reads are a plain attribute lookup.
    With ``names`` the value is a tuple whose items are checked one by one (``betas``).
    """

    def __init__(self, interval: str, *, names: Sequence[str] | None = None) -> None:
        self.interval = parse_interval(interval)
        self.names = tuple(names) if names is not None else None
        self.name = ""
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_hyper_" + name

    def check(self, value: Any) -> Any:
        """The validated value (a float, or a tuple of floats) without assigning it."""
        if self.names is None:
            return check_range(self.name, value, self.interval)
        return check_ranges(self.name, value, self.names, self.interval)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.__dict__[self.slot]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = self.check(value)
