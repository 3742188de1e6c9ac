"""Interval-notation hyperparameter checks (SPEC "Optimizers": "beta1=1.5 is outside [0, 1)")."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from modelsync.errors import ArgumentError, ArgumentTypeError
from modelsync.optim.ranges import check_range, check_ranges, parse_interval, restrict_range

SPEC_INTERVALS = {"[0, ∞)": (0.0, math.inf, True, False), "[0, 1)": (0.0, 1.0, True, False),
                  "[0, 1]": (0.0, 1.0, True, True), "(0, ∞)": (0.0, math.inf, False, False)}
reals = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.parametrize("text", sorted(SPEC_INTERVALS))
def test_parse_spec_intervals(text):
    spec = parse_interval(text)
    assert (spec.low, spec.high, spec.low_closed, spec.high_closed) == SPEC_INTERVALS[text]
    assert str(spec) == text


def test_parse_ascii_infinity_and_negative_bounds():
    assert parse_interval("(-inf, 2]").low == -math.inf
    assert parse_interval("[-1.5, inf)").high == math.inf


@pytest.mark.parametrize("text", ["0, 1", "[0 1)", "[a, 1)", "{0, 1}", "[2, 1]", "[nan, 1)", ""])
def test_parse_rejects_malformed(text):
    with pytest.raises(ArgumentError, match="interval="):
        parse_interval(text)


def test_parse_rejects_non_string():
    with pytest.raises(ArgumentTypeError, match="expected a string"):
        parse_interval([0, 1])


def test_spec_example_message():
    with pytest.raises(ArgumentError, match=re.escape("beta1=1.5 is outside [0, 1)")):
        check_range("beta1", 1.5, "[0, 1)")
    with pytest.raises(ValueError):  # ArgumentError is a ValueError, as SPEC requires
        check_range("lr", -1, "[0, ∞)")


@given(x=reals, text=st.sampled_from(sorted(SPEC_INTERVALS)))
def test_inside_passes_outside_raises(x, text):
    low, high, low_closed, high_closed = SPEC_INTERVALS[text]
    inside = (x >= low if low_closed else x > low) and (x <= high if high_closed else x < high)
    if inside:
        assert check_range("h", x, text) == x
    else:
        with pytest.raises(ArgumentError) as info:
            check_range("h", x, text)
        assert str(info.value) == f"h={x!r} is outside {text}"


@given(x=st.floats(0.0, 1.0, exclude_max=True))
def test_unit_interval_inside_any_float(x):
    assert check_range("momentum", x, "[0, 1)") == x


@given(n=st.integers(-10**6, 10**6))
def test_integers_are_accepted_and_shown_as_written(n):
    if n >= 0:
        assert check_range("lr", n, "[0, ∞)") == float(n)
        assert isinstance(check_range("lr", n, "[0, ∞)"), float)
    else:
        with pytest.raises(ArgumentError, match=re.escape(f"lr={n} is outside [0, ∞)")):
            check_range("lr", n, "[0, ∞)")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
@pytest.mark.parametrize("text", sorted(SPEC_INTERVALS))
def test_non_finite_values_are_outside(value, text):
    with pytest.raises(ArgumentError, match="is outside"):
        check_range("eps", value, text)


def test_infinity_passes_a_closed_infinite_end():
    assert check_range("x", math.inf, "[0, ∞]") == math.inf


@pytest.mark.parametrize("value", ["0.1", None, True, False, 1 + 2j, [0.1], np.array([0.1])])
def test_non_numbers_raise_type_error(value):
    with pytest.raises(ArgumentTypeError, match=r"lr=.* expected a real number in \[0, ∞\)"):
        check_range("lr", value, "[0, ∞)")


def test_numpy_scalars_are_numbers():
    assert check_range("lr", np.float32(0.5), "[0, ∞)") == 0.5
    assert check_range("lr", np.int64(2), "[0, ∞)") == 2.0


@given(b1=reals, b2=reals)
def test_tuple_checked_item_by_item(b1, b2):
    assume(not (0 <= b1 < 1 and 0 <= b2 < 1))
    bad_name, bad = ("beta1", b1) if not 0 <= b1 < 1 else ("beta2", b2)
    with pytest.raises(ArgumentError, match=re.escape(f"{bad_name}={bad!r} is outside [0, 1)")):
        check_ranges("betas", (b1, b2), ("beta1", "beta2"), "[0, 1)")


@pytest.mark.parametrize("value,error,message", [
    ((0.9,), ArgumentError, "has 1 value"), ((0.9, 0.9, 0.9), ArgumentError, "has 3 value"),
    (0.9, ArgumentTypeError, "expected a tuple of 2"), ("ab", ArgumentTypeError, "tuple of 2")])
def test_tuple_shape_errors(value, error, message):
    with pytest.raises(error, match=message):
        check_ranges("betas", value, ("beta1", "beta2"), "[0, 1)")


class Holder:
    lr = restrict_range("[0, ∞)")
    betas = restrict_range("[0, 1)", names=("beta1", "beta2"))


def test_restrict_range_validates_every_assignment():
    h = Holder()
    h.lr = 1
    h.betas = [0.5, 0.25]
    assert h.lr == 1.0 and h.betas == (0.5, 0.25)
    with pytest.raises(ArgumentError, match=re.escape("lr=-0.5 is outside [0, ∞)")):
        h.lr = -0.5
    with pytest.raises(ArgumentError, match=re.escape("beta2=1.0 is outside [0, 1)")):
        h.betas = (0.5, 1.0)
    assert h.lr == 1.0 and h.betas == (0.5, 0.25)  # a refused value leaves the old one
    assert isinstance(Holder.lr, restrict_range)
