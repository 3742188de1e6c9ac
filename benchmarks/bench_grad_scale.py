"""``step(grad_scale=s)`` (issue 21): the optimizer multiplies each gradient by ``s`` in the
pass over memory its update makes anyway, which is how `DataParallel` divides the summed
gradients by the ranks.

- SGD and Adam on one flat float32 store (1e6 and 1e7 elements, host, one thread), the
  gradients in the store's gradient buffer as backprop leaves them (re-written before every
  timed step): ``step(grad_scale=0.5)`` over the scale as a pass of its own (``grads *=
  0.5``, then ``step()``). Goal ≤ 1×: the fused scale never costs more than the pass.
- ``step(grad_scale=0.5)`` over a plain ``step()`` (information): what the scale still costs,
  the write of each scaled gradient back (``p.grad`` holds it after the step).

    NUMBA_NUM_THREADS=1 python benchmarks/bench_grad_scale.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import Row, Settings, in_turns, main, ratio_row  # noqa: E402

import modelsync as ms  # noqa: E402
from modelsync import layers, optim  # noqa: E402

RULES = {"SGD": lambda ps: optim.SGD(ps, lr=1e-6), "Adam": lambda ps: optim.Adam(ps, lr=1e-6)}


def sizes(settings: Settings) -> list[tuple[str, int, int]]:
    """(label, width, depth): ``depth`` Dense width×width layers (biases included)."""
    if settings.tiny:
        return [("1e2", 10, 1)]
    return [("1e6", 1000, 1), ("1e7", 1000, 10)]


def rows(settings: Settings) -> Iterator[Row]:
    for label, n, k in sizes(settings):
        model = ms.to_device(layers.Chain(*[layers.Dense(n, n, seed=i) for i in range(k)]),
                             "host")
        ps = ms.params(model)
        rng = np.random.default_rng(0)
        fresh = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
        for rule, build in RULES.items():
            opt = build(ps)

            def reset(opt=opt, ps=ps, fresh=fresh) -> None:  # as backprop leaves them
                opt.zero_grad()
                for p, g in zip(ps, fresh, strict=True):
                    p.accumulate_grad(g)

            store = ps[0].flat_store

            def separate(opt=opt, store=store) -> None:
                store.grads *= 0.5
                opt.step()

            t = in_turns({"step": (opt.step, reset),
                          "fused": (lambda opt=opt: opt.step(grad_scale=0.5), reset),
                          "separate": (separate, reset)}, settings)
            elements = sum(p.size for p in ps)
            yield ratio_row(f"{rule} step(grad_scale=0.5) vs grads *= 0.5 then step(), "
                            f"{label} float32 (flat store, host)",
                            t.ratio("fused", "separate"), 1.0,
                            f"{t.describe('fused', 'separate', 'step')}; {elements:,} "
                            "elements")
            yield ratio_row(f"{rule} step(grad_scale=0.5) vs step(), {label} float32",
                            t.ratio("fused", "step"), None,
                            "the fused scale still writes each gradient back (p.grad holds "
                            "the scaled value afterwards): one stream more than the step's "
                            "own (SGD 3 → 4, Adam 7 → 8)")

if __name__ == "__main__":
    main(rows, __doc__)
