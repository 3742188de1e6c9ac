"""GRU and LSTM forward + backward (backpropagation through time) in modelsync against
torch.nn.GRU / torch.nn.LSTM(batch_first=True) on the CPU, same threads, float32.

Shapes: batch 16, 32 steps, input 64, hidden 128. One call of a side is a forward pass, a
backward pass from a fixed cotangent (the input's gradient and all four Params' gradients
made) and the gradients dropped (``grad = None`` on each side). Both layers hold the same
weights, so each row also reports how far apart the two outputs are. The sides are timed in
turns; a row is the median of the per-turn ratios.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    NO_TORCH,
    Row,
    Settings,
    compared,
    goal_of,
    in_turns,
    main,
    na_row,
    optional_torch,
)

import modelsync as ms  # noqa: E402
from modelsync import layers  # noqa: E402
from modelsync.layers import Context  # noqa: E402

torch = optional_torch()

#: (layer name, goal ≤ ×, or None: reported for information)
CASES = [("GRU", 2.0), ("LSTM", None)]


def shapes(settings: Settings) -> tuple[int, int, int, int]:
    """(batch, steps, input, hidden): the task's sizes, or toy ones for the smoke test."""
    return (2, 3, 4, 5) if settings.tiny else (16, 32, 64, 128)


def sides(name: str, settings: Settings) -> tuple[dict[str, Callable[[], object]], float]:
    """torch's and modelsync's forward + backward of the same layer, and the largest
    difference between their outputs."""
    batch, steps, width, hidden = shapes(settings)
    ours = getattr(layers, name)(width, hidden, seed=0)
    theirs = getattr(torch.nn, name)(width, hidden, batch_first=True)
    with torch.no_grad():
        for path, p in ms.named_params(ours).items():
            getattr(theirs, path).copy_(torch.from_numpy(np.asarray(p.value)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, steps, width)).astype(np.float32)
    dy = rng.standard_normal((batch, steps, hidden)).astype(np.float32)
    x_t = torch.from_numpy(x).requires_grad_()
    dy_t = torch.from_numpy(dy)
    ctx = Context(train=True)
    params = ms.params(ours)

    def run_ours() -> object:
        y, pullback = ours.forward(x, ctx)
        dx = pullback(dy)
        for p in params:
            p.grad = None
        return dx

    def run_theirs() -> object:
        y, _ = theirs(x_t)
        y.backward(dy_t)
        x_t.grad = None
        for p in theirs.parameters():
            p.grad = None
        return y

    with torch.no_grad():
        diff = float(np.max(np.abs(ours(x) - theirs(torch.from_numpy(x))[0].numpy())))
    return {f"torch {name}": run_theirs, f"modelsync {name}": run_ours}, diff


def rows(settings: Settings) -> Iterator[Row]:
    batch, steps, width, hidden = shapes(settings)
    for name, goal in CASES:
        what = (f"{name} forward + backward (batch {batch}, {steps} steps, input {width}, "
                f"hidden {hidden}, float32), modelsync host vs torch CPU")
        if torch is None:
            yield na_row(what, goal_of(goal), NO_TORCH)
            continue
        plan, diff = sides(name, settings)
        timings = in_turns(plan, settings)
        yield compared(what, timings, f"modelsync {name}", f"torch {name}", goal,
                       f"outputs differ by at most {diff:.1e}; torch threads "
                       f"{torch.get_num_threads()}")


if __name__ == "__main__":
    main(rows, __doc__)
