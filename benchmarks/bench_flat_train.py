"""A model built on the host trains at flat speed (issue 11): Adam steps of 500 × Dense(9, 10)
(1,000 Params) against torch's fused Adam on the CPU, as ratios measured in one run.

Cases: the model as built layer by layer (the optimizer lays its Params out flat at
construction), the same after ``to_host(copy)`` (flat by conversion), and, for reference, the
same Params made over the user's own arrays (the per-Param path). The gradients are
accumulated once the way backprop leaves them (``accumulate_grad``: into the flat store's
gradient buffer). Each pair is timed in turns, and the ratio is the median of the per-turn
ratios, so a noisy neighbour slows both sides of a turn alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import modelsync as ms
from modelsync import layers, optim

LAYERS = 500


def host_built(seed: int = 0) -> object:
    return layers.Chain(*[layers.Dense(9, 10, seed=seed + i) for i in range(LAYERS)])


def over_user_arrays(model: object) -> object:
    """The same values, each Param made over an array the caller holds: never packed."""
    for leaf in model.layers:
        leaf.weight = ms.Param(leaf.weight.value.copy(), name="weight")
        leaf.bias = ms.Param(leaf.bias.value.copy(), name="bias")
    return model


def grads_for(model: object) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal(p.shape) * 1e-2).astype(np.float32) for p in ms.params(model)]


def ms_step(model: object, grads: list[np.ndarray]) -> Callable[[], None]:
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=1e-3)
    for p, g in zip(ps, grads, strict=True):
        p.accumulate_grad(g)
    opt.step()
    return opt.step


def torch_step(model: object, grads: list[np.ndarray]) -> Callable[[], None]:
    ts = [torch.tensor(np.array(p.value), requires_grad=True) for p in ms.params(model)]
    for t, g in zip(ts, grads, strict=True):
        t.grad = torch.tensor(g)
    opt = torch.optim.Adam(ts, lr=1e-3, fused=True)
    opt.step()
    return opt.step


def median_ratio(ours: Callable[[], None], theirs: Callable[[], None], *, turns: int,
                 number: int) -> tuple[float, float, float]:
    """Median over turns of (our time / their time), and each side's median seconds per call."""
    ratios, a_times, b_times = [], [], []
    for _ in range(turns):
        pair = []
        for fn in (ours, theirs):
            fn()  # untimed: lets the other side's thread pool go quiet
            start = time.perf_counter()
            for _ in range(number):
                fn()
            pair.append((time.perf_counter() - start) / number)
        a_times.append(pair[0])
        b_times.append(pair[1])
        ratios.append(pair[0] / pair[1])
    return statistics.median(ratios), statistics.median(a_times), statistics.median(b_times)


def row(name: str, ratio: float, goal: str, detail: str) -> str:
    shown = f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}"
    return f"| {name} | {shown}× | {goal} | {detail} |"


def run(quick: bool) -> list[str]:
    torch.set_num_threads(2)
    turns, number = (9, 20) if quick else (25, 50)
    cases = [
        ("Adam step, 500 × Dense(9, 10) built on the host, vs torch fused", "≤ 0.05×",
         lambda: host_built()),
        ("same model after to_host(copy) (flat)", "≤ 0.03×",
         lambda: ms.to_host(host_built())),
        ("same Params over the user's own arrays (per-Param path)", "info",
         lambda: over_user_arrays(host_built())),
    ]
    lines = []
    for name, goal, make in cases:
        model = make()
        grads = grads_for(model)
        ratio, ours, theirs = median_ratio(ms_step(model, grads), torch_step(model, grads),
                                           turns=turns, number=number)
        lines.append(row(name, ratio, goal, f"modelsync {ours * 1e6:.0f} µs, torch fused "
                                            f"{theirs * 1e6:.0f} µs (medians)"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns")
    args = parser.parse_args()
    print("| case | ratio | goal | detail |\n| --- | --- | --- | --- |")
    for line in run(args.quick):
        print(line)


if __name__ == "__main__":
    main()
