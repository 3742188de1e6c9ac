"""Optimizer steps against torch.optim on the CPU, as ratios measured in one run.

modelsync's Params come from ``ms.to_device(model, "host")``, so each model's Params are
views of one buffer (the flat path); the gradients are set once, as separate arrays, the
way backprop leaves them. Torch gets the same float32 values and shapes, two threads, and
its fastest implementation of each rule (fused where torch has one, else foreach). Both
sides are timed in alternation, best of N, so a noisy neighbour slows both alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import attrs
import numpy as np
import torch

import modelsync as ms
from modelsync import kernels, optim


@ms.layer(name="BenchOptimBag")
@attrs.define(eq=False)
class Bag:
    """A model that is just a list of Params."""

    ps: list


def interleaved(fns: dict[str, Callable[[], object]], *, repeat: int, number: int = 1
                ) -> dict[str, float]:
    """Best seconds per call of each function, timed in turns. Each turn starts with one
    untimed call: torch's and numba's OpenMP thread pools each keep spinning for a while
    after their last parallel loop, and that call lets the previous turn's pool go quiet."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


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


def torch_params(values, grads) -> list[torch.Tensor]:
    ps = [torch.tensor(v, requires_grad=True) for v in values]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.tensor(g)
    return ps


#: rule -> (modelsync optimizer, torch optimizer class, torch keyword arguments)
RULES: dict[str, tuple[Callable, type, dict]] = {
    "Adam": (lambda ps: optim.Adam(ps, lr=1e-3), torch.optim.Adam, {"lr": 1e-3}),
    "AdamW": (lambda ps: optim.AdamW(ps, lr=1e-3, weight_decay=1e-2), torch.optim.AdamW,
              {"lr": 1e-3, "weight_decay": 1e-2}),
    "SGD": (lambda ps: optim.SGD(ps, lr=1e-3), torch.optim.SGD, {"lr": 1e-3}),
    "Momentum": (lambda ps: optim.Momentum(ps, lr=1e-3, momentum=0.9), torch.optim.SGD,
                 {"lr": 1e-3, "momentum": 0.9}),
    "Nesterov": (lambda ps: optim.Nesterov(ps, lr=1e-3, momentum=0.9), torch.optim.SGD,
                 {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "RMSProp": (lambda ps: optim.RMSProp(ps, lr=1e-3, alpha=0.99, eps=1e-8),
                torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}),
    "AdaGrad": (lambda ps: optim.AdaGrad(ps, lr=1e-2, eps=1e-10), torch.optim.Adagrad,
                {"lr": 1e-2, "eps": 1e-10}),
}


def torch_variants(cls: type, kwargs: dict, values, grads) -> dict[str, Callable[[], object]]:
    """The torch implementations of a rule that this torch offers on the CPU, each ready to
    step its own copy of the parameters."""
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


def compare(rule: str, total: int, arrays: int, *, repeat: int, number: int,
            per_param: bool = False) -> tuple[float, str, dict[str, float]]:
    """modelsync's best step time over torch's fastest, the name of that torch variant, and
    every timing."""
    make, cls, kwargs = RULES[rule]
    values, grads = problem(total, arrays)
    fns = {"modelsync": make(ms_params(values, grads)).step}
    if per_param:
        fns["modelsync per-Param"] = make(ms_params(values, grads, flat=False)).step
    fns.update(torch_variants(cls, kwargs, values, grads))
    times = interleaved(fns, repeat=repeat, number=number)
    fastest = min((n for n in times if n.startswith("torch")), key=times.__getitem__)
    return times["modelsync"] / times[fastest], fastest, times


def row(name: str, ratio: float, goal: str, detail: str = "") -> str:
    """A table row; a small ratio keeps three decimals, so "≤ 0.05×" is judged fairly."""
    shown = f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}"
    return f"| {name} | {shown}× | {goal} | {detail} |"


def describe(times: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in times.items())


def run(quick: bool) -> list[str]:
    repeat = 7 if quick else 15
    lines = []
    cases = [(10**6, 4, "1e6 float32 in 4 arrays", 20), (10**7, 4, "1e7 float32 in 4 arrays", 2)]
    for total, arrays, label, number in cases:
        ratio, vs, times = compare("Adam", total, arrays, repeat=repeat, number=number)
        lines.append(row(f"Adam step, {label}, vs {vs}", ratio, "≤ 1.0×", describe(times)))
    ratio, vs, times = compare("Adam", 10**5, 1000, repeat=repeat, number=20, per_param=True)
    lines.append(row(f"Adam step, 1,000 arrays of 100 float32, vs {vs}", ratio, "≤ 0.05×",
                     describe(times)))
    per_param = times["modelsync per-Param"] / times[vs]
    lines.append(row("Adam step, 1,000 arrays of 100, per-Param path (a model not made by "
                     f"ms.to_device), vs {vs}", per_param, "info", ""))
    for rule in ("SGD", "Momentum", "Nesterov", "AdamW", "RMSProp", "AdaGrad"):
        ratio, vs, times = compare(rule, 10**6, 4, repeat=repeat, number=20)
        lines.append(row(f"{rule} step, 1e6 float32 in 4 arrays, vs {vs}", ratio, "≤ 1.0×",
                         describe(times)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"host kernels: {kernels.backend()}")
    print("| what | ratio to torch | goal | timings (best of N) |")
    print("| --- | --- | --- | --- |")
    for line in run(args.quick):
        print(line, flush=True)


if __name__ == "__main__":
    main()
