"""ms.check_gradients: a layer's pullback against float64 central differences.

The check runs on a float64 host copy of the layer, its floating Buffers (running
statistics) float64 too (the layer itself is left untouched: no gradient is added to its
Params, and a training-mode forward of the copy updates only the copy's Buffers). The
scalar checked is ``sum(w * layer(x))`` for a fixed random cotangent ``w``; for the input
and for each Param in turn, its directional derivative along a random unit direction ``u``
is estimated as ``(f(θ + εu) - f(θ - εu)) / 2ε`` and compared with ``<gradient, u>`` from
the pullback. Every forward of the check draws its randomness (dropout) from the same seed,
so a stochastic layer is checked as the fixed function one draw of it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .checks import as_float
from .devices import HOST
from .errors import ArgumentError, ArgumentTypeError, GradientCheckError
from .layers.base import Context, forward_pair
from .transfers import to_device_array
from .tree import buffers, named_params, require_model

_EPS = 1e-6  # the finite-difference step in float64 (error ~ eps² · f''' ≪ rtol)


def check_gradients(layer: Any, x: Any, *, seed: int = 0, rtol: float = 1e-4,
                    atol: float = 1e-6, train: bool = True, directions: int = 2) -> None:
    """Compare ``layer``'s pullback with float64 central differences along ``directions``
    random directions, for ``x`` (when it is floating) and every Param. Raises
    GradientCheckError naming the path (``"input"`` or the Param's dotted path) and the
    relative error. ``train`` picks the forward mode (training by default, as backprop)."""
    require_model(layer, "layer")
    rtol = _non_negative("rtol", rtol)
    atol = _non_negative("atol", atol)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArgumentError(f"seed={seed!r} is outside [0, ∞) (expected a non-negative int)")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ArgumentError(f"directions={directions!r} is outside [1, ∞)")
    from .convert import to_device

    # (to_device, not to_host: to_host of a wrapper returns its original, which the check
    # would then change; a copy of the wrapper is what is checked)
    work = to_device(layer, "host", mode="copy")
    named = named_params(work)
    for p in named.values():
        p.rehome(np.array(p.value, dtype=np.float64))
    for b in buffers(work):  # (statistics in float64 too; counters stay integers)
        if not b.is_counter:
            b.rehome(np.array(b.value, dtype=np.float64))
    x64 = _as_float64_input(x)
    rng = np.random.default_rng(seed)

    def run(inp: Any) -> tuple[Any, Any]:
        ctx = Context(train=train, rng=np.random.default_rng(seed))
        return forward_pair(work, inp, ctx)

    y, pullback = run(x64)
    y = np.asarray(y)
    w = rng.standard_normal(y.shape)
    for p in named.values():
        p.grad = None
    dx = pullback(w)
    analytic = {path: (np.zeros(p.shape) if p.grad is None else np.array(p.grad))
                for path, p in named.items()}

    def value(inp: Any) -> float:
        return float(np.sum(np.asarray(run(inp)[0]) * w))

    if np.issubdtype(x64.dtype, np.floating):
        for _ in range(directions):
            u = _unit(rng, x64.shape)
            numeric = (value(x64 + _EPS * u) - value(x64 - _EPS * u)) / (2 * _EPS)
            _compare("input", float(np.sum(np.asarray(dx) * u)), numeric, rtol, atol)
    for path, p in named.items():
        base = np.array(p.value)
        for _ in range(directions):
            u = _unit(rng, base.shape)
            numeric = _param_difference(p, base, u, lambda: value(x64))
            _compare(path, float(np.sum(analytic[path] * u)), numeric, rtol, atol)


def _param_difference(p: Any, base: np.ndarray, u: np.ndarray,
                      value: Callable[[], float]) -> float:
    p.assign(base + _EPS * u)
    plus = value()
    p.assign(base - _EPS * u)
    minus = value()
    p.assign(base)
    return (plus - minus) / (2 * _EPS)


def _compare(path: str, analytic: float, numeric: float, rtol: float, atol: float) -> None:
    error = abs(analytic - numeric)
    scale = max(abs(analytic), abs(numeric))
    if not (error <= atol + rtol * scale):
        relative = error / scale if scale > 0 else float("inf")
        raise GradientCheckError(
            f"{path}: pullback gives {analytic:.8g} but central differences give {numeric:.8g} "
            f"along a random direction (relative error {relative:.3g}, allowed rtol={rtol:g}, "
            f"atol={atol:g})")


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    u = rng.standard_normal(shape)
    norm = np.linalg.norm(u)
    return u / norm if norm > 0 else u


def _as_float64_input(x: Any) -> np.ndarray:
    try:
        host = np.asarray(to_device_array(x, HOST))
    except Exception as exc:  # noqa: BLE001 (reported as the argument error it is)
        raise ArgumentTypeError(
            f"x is a {type(x).__name__}; expected an array") from exc
    if np.issubdtype(host.dtype, np.floating):
        return host.astype(np.float64)
    if np.issubdtype(host.dtype, np.integer) or host.dtype == np.bool_:
        return host  # indices (Embedding) and masks: not differentiated
    raise ArgumentTypeError(f"x has dtype {host.dtype}; expected a floating or integer array")


def _non_negative(name: str, value: Any) -> float:
    v = as_float(name, value)
    if not v >= 0:
        raise ArgumentError(f"{name}={value!r} is outside [0, ∞)")
    return v
