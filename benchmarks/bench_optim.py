"""Optimizer steps against torch.optim on the CPU, as ratios measured in one run.

Every implementation torch offers for a rule on the CPU (fused, foreach, for-loop) is timed
in turns with modelsync's step, each turn after one untimed call; a row is the median of the
per-turn ratios to torch fused (issue 11's rows) or to torch's fastest variant. Torch gets
the same float32 values, shapes and gradients, and two threads (the machine's cores).

- 500 × ``Dense(9, 10)`` (1,000 Params of 90 and 10 floats): built on the host layer by
  layer, as every user starts; the same after ``ms.to_host`` (flat); after ``ms.flatten``
  where it exists. Their gradients come from ``ms.backprop`` (each layer on its own batch:
  the layers do not compose), so they sit where backprop leaves them.
- Bags of 4 or 1,000 arrays made flat by ``ms.to_device(model, "host")``, gradients set as
  separate arrays; and the per-Param path for the 1,000 arrays.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attrs  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    NO_FLATTEN,
    NO_TORCH,
    Row,
    Settings,
    compared,
    flat_copy,
    goal_of,
    in_turns,
    main,
    na_row,
    optional_torch,
)

import modelsync as ms  # noqa: E402
from modelsync import layers, losses, optim  # noqa: E402

torch = optional_torch()


@ms.layer(name="BenchOptimBag")
@attrs.define(eq=False)
class Bag:
    """A model that is just a list of Params."""

    ps: list


def problem(total: int, arrays: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    n = total // arrays
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(n).astype(np.float32) for _ in range(arrays)]
    grads = [(rng.standard_normal(n) * 1e-2).astype(np.float32) for _ in range(arrays)]
    return values, grads


def ms_params(values, grads, *, flat: bool = True) -> list[ms.Param]:
    model = Bag([ms.Param(v.copy()) for v in values])
    if flat:
        model = ms.to_device(model, "host")
    ps = list(ms.params(model))
    for p, g in zip(ps, grads, strict=True):
        p.grad = g
    return ps


def torch_params(values, grads) -> list:
    ps = [torch.tensor(v, requires_grad=True) for v in values]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.tensor(g)
    return ps


#: rule -> (modelsync optimizer, torch optimizer class name, torch keyword arguments)
RULES: dict[str, tuple[Callable, str, dict]] = {
    "Adam": (lambda ps: optim.Adam(ps, lr=1e-3), "Adam", {"lr": 1e-3}),
    "AdamW": (lambda ps: optim.AdamW(ps, lr=1e-3, weight_decay=1e-2), "AdamW",
              {"lr": 1e-3, "weight_decay": 1e-2}),
    "SGD": (lambda ps: optim.SGD(ps, lr=1e-3), "SGD", {"lr": 1e-3}),
    "Momentum": (lambda ps: optim.Momentum(ps, lr=1e-3, momentum=0.9), "SGD",
                 {"lr": 1e-3, "momentum": 0.9}),
    "Nesterov": (lambda ps: optim.Nesterov(ps, lr=1e-3, momentum=0.9), "SGD",
                 {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "RMSProp": (lambda ps: optim.RMSProp(ps, lr=1e-3, alpha=0.99, eps=1e-8), "RMSprop",
                {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}),
    "AdaGrad": (lambda ps: optim.AdaGrad(ps, lr=1e-2, eps=1e-10), "Adagrad",
                {"lr": 1e-2, "eps": 1e-10}),
}


def torch_variants(rule: str, values, grads) -> dict[str, Callable[[], object]]:
    """The torch implementations of a rule that this torch offers on the CPU, each ready to
    step its own copy of the parameters."""
    _, name, kwargs = RULES[rule]
    cls = getattr(torch.optim, name)
    variants = {}
    for label, extra in (("fused", {"fused": True}), ("foreach", {"foreach": True}),
                         ("for-loop", {"foreach": False})):
        try:
            opt = cls(torch_params(values, grads), **kwargs, **extra)
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue  # this torch has no such implementation of the rule on the CPU
        variants[f"torch {label}"] = opt.step
    return variants


def against_torch(what: str, rule: str, values, grads, ours: dict[str, Callable[[], object]],
                  settings: Settings, at_most: float | None, *, vs: str | None = None,
                  stretch: float | None = None, details: str = "") -> tuple[Row, object]:
    """The row of ``ours["modelsync"]`` against torch ``vs`` (None: torch's fastest), every
    side timed in turns; and the timings, for rows that read other sides of them."""
    timings = in_turns({**torch_variants(rule, values, grads), **ours}, settings)
    baseline = vs or timings.fastest("torch ")
    others = timings.describe(*(n for n in timings.samples if n not in ("modelsync",
                                                                        baseline)))
    text = f"{details}; {others}" if details else others
    return compared(f"{what}, vs {baseline}", timings, "modelsync", baseline, at_most, text,
                    stretch=stretch), timings


# -- issue 11: 500 x Dense(9, 10) ---------------------------------------------------------------
def dense_model(count: int):
    return layers.Chain(*[layers.Dense(9, 10, seed=i) for i in range(count)])


def backprop_each(model) -> None:
    """Gradients where backprop leaves them: each Dense run on a batch of its own."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    y = rng.standard_normal((4, 10)).astype(np.float32)
    for layer in model.layers:
        ms.backprop(layer, losses.mse, x, y)


def loose(params) -> str:
    count = sum(p.flat_store is None for p in params)
    return f"{count} of {len(params)} Params loose at the step"


def dense_rows(settings: Settings) -> Iterator[Row]:
    count = 5 if settings.tiny else 500
    label = f"Adam step, {count} × Dense(9, 10) ({2 * count:,} Params)"
    ways = [("built on the host", lambda m: m, 0.05, 0.03),
            ("after to_host(copy) (flat)", ms.to_host, 0.03, None),
            ("after ms.flatten", getattr(ms, "flatten", None), 0.03, None)]
    for how, convert, at_most, stretch in ways:
        what = f"{label}, {how}"
        if torch is None:
            yield na_row(what + ", vs torch fused", goal_of(at_most, stretch), NO_TORCH)
            continue
        if convert is None:
            yield na_row(what + ", vs torch fused", goal_of(at_most, stretch), NO_FLATTEN)
            continue
        model = dense_model(count)
        model = convert(model) or model  # ms.flatten works in place
        params = ms.params(model)
        opt = optim.Adam(params, lr=1e-3)  # bound first, then backprop: a user's order
        backprop_each(model)
        values = [np.array(p.value) for p in params]
        grads = [np.array(p.grad) for p in params]
        row, _ = against_torch(what, "Adam", values, grads, {"modelsync": opt.step}, settings,
                               at_most, vs="torch fused", stretch=stretch,
                               details=loose(params))
        yield row
    yield construction_row(count, settings)


def construction_row(count: int, settings: Settings) -> Row:
    """Binding Adam to a freshly built model, against one flat copy of its bytes: the
    one-time price of packing loose Params at construction (where an optimizer does)."""
    nbytes = sum(p.nbytes for p in ms.params(dense_model(count)))
    fresh = []

    def build() -> None:
        fresh[:] = [ms.params(dense_model(count))]

    timings = in_turns({"one flat copy": flat_copy(nbytes),
                        "case": (lambda: optim.Adam(fresh[0], lr=1e-3), build)}, settings)
    return compared(f"Adam(...) construction on {count} × Dense(9, 10) built on the host "
                    "(one-time), vs one flat copy of its bytes", timings, "case",
                    "one flat copy", None)


# -- flat bags of arrays ----------------------------------------------------------------------
def bag_rows(settings: Settings) -> Iterator[Row]:
    scale = 1000 if settings.tiny else 1
    cases = [("Adam", 10**6, 4, "1e6 float32 in 4 arrays"),
             ("Adam", 10**7, 4, "1e7 float32 in 4 arrays")]
    for rule, total, arrays, label in cases:
        yield bag_row(rule, total // scale, arrays, label, settings, 1.0)
    what = "Adam step, 1,000 arrays of 100 float32 (flat)"
    arrays = 10 if settings.tiny else 1000
    if torch is None:
        yield na_row(what, goal_of(0.05), NO_TORCH)
        yield na_row("Adam step, 1,000 arrays of 100, per-Param path", goal_of(None), NO_TORCH)
    else:
        values, grads = problem(arrays * (10 if settings.tiny else 100), arrays)
        make = RULES["Adam"][0]
        ours = {"modelsync": make(ms_params(values, grads)).step,
                "modelsync per-Param": make(ms_params(values, grads, flat=False)).step}
        row, timings = against_torch(what, "Adam", values, grads, ours, settings, 0.05)
        yield row
        yield compared("Adam step, 1,000 arrays of 100, per-Param path (a model not made by "
                       f"ms.to_device), vs {timings.fastest('torch ')}", timings,
                       "modelsync per-Param", timings.fastest("torch "), None)
    for rule in ("SGD", "Momentum", "Nesterov", "AdamW", "RMSProp", "AdaGrad"):
        yield bag_row(rule, 10**6 // scale, 4, "1e6 float32 in 4 arrays", settings, 1.0)


def bag_row(rule: str, total: int, arrays: int, label: str, settings: Settings,
            at_most: float) -> Row:
    what = f"{rule} step, {label}"
    if torch is None:
        return na_row(what, goal_of(at_most), NO_TORCH)
    values, grads = problem(total, arrays)
    ours = {"modelsync": RULES[rule][0](ms_params(values, grads)).step}
    return against_torch(what, rule, values, grads, ours, settings, at_most)[0]


def rows(settings: Settings) -> Iterator[Row]:
    yield from dense_rows(settings)
    yield from bag_rows(settings)


if __name__ == "__main__":
    main(rows, __doc__)
