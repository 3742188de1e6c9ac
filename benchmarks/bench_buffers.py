"""Buffers (issue 18): BatchNorm's training step against torch's, what a model's Buffers add
to a sync, and the bytes a wrapper's training step moves for its running statistics.

- BatchNorm forward + backward in training mode (which also updates the running statistics)
  on ``(32, 16, 8, 8)`` float32, modelsync on the host against ``torch.nn.BatchNorm2d``.
- ``ms.sync`` of an MLP with a BatchNorm after each of its Dense layers against the same MLP
  without them: between two conversions (flat stores, whole buffers) and from the original
  (loose arrays, read one by one).
- A wrapper's training steps on sim:1: bytes moved (the ledger), then the bytes one read of
  the original's statistics pulls.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
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
from modelsync import layers, losses, optim  # noqa: E402

torch = optional_torch()


def _shape(settings: Settings) -> tuple[int, ...]:
    return (4, 3, 2, 2) if settings.tiny else (32, 16, 8, 8)


def batchnorm_rows(settings: Settings) -> Iterator[Row]:
    shape = _shape(settings)
    what = f"BatchNorm training forward + backward {shape} float32, host, vs torch BatchNorm2d"
    if torch is None:
        yield na_row(what, goal_of(3.0), NO_TORCH)
        return
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    ours = layers.BatchNorm(shape[1])
    ctx = layers.Context(train=True)

    def modelsync_step() -> object:
        for p in ms.params(ours):
            p.grad = None
        y, pullback = ours.forward(x, ctx)
        return pullback(dy)

    theirs = torch.nn.BatchNorm2d(shape[1])
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def torch_step() -> object:
        theirs.zero_grad()
        xt.grad = None
        theirs(xt).backward(dyt)
        return xt.grad

    timings = in_turns({"torch": torch_step, "modelsync": modelsync_step}, settings)
    yield compared(what, timings, "modelsync", "torch", 3.0)


def _mlp(width: int, depth: int, norm: bool) -> object:
    found: list[object] = []
    for i in range(depth):
        found.append(layers.Dense(width, width, "relu", seed=i))
        if norm:
            found.append(layers.BatchNorm(width))
    return layers.Chain(*found)


def sync_rows(settings: Settings) -> Iterator[Row]:
    width, depth = (4, 2) if settings.tiny else (64, 20)
    loose, whole = {}, {}
    for norm in (False, True):
        src = _mlp(width, depth, norm)
        loose[norm] = (ms.to_device(src, "host"), src)  # into a conversion from the original
        whole[norm] = (ms.to_device(src, "host"), ms.to_device(src, "host"))  # copy to copy
    what = (f"ms.sync of a {depth}-layer MLP (width {width}) with a BatchNorm after each Dense "
            "vs the same without")
    timings = in_turns({"without": lambda: ms.sync(*whole[False]),
                        "with": lambda: ms.sync(*whole[True])}, settings)
    yield compared(f"{what}, between two conversions", timings, "with", "without", 1.5,
                   "the Buffers are laid out flat too: one more whole-buffer copy per dtype")
    timings = in_turns({"without": lambda: ms.sync(*loose[False]),
                        "with": lambda: ms.sync(*loose[True])}, settings)
    yield compared(f"{what}, from the original (loose arrays)", timings, "with", "without",
                   None, f"{2 * depth} Params vs {2 * depth} Params and {3 * depth} Buffers, "
                   "each read once")


def ledger_rows(settings: Settings) -> Iterator[Row]:
    rng = np.random.default_rng(1)
    original = layers.Chain(layers.Dense(8, 8, seed=0), layers.BatchNorm(8), layers.ReLU(),
                            layers.Dense(8, 2, seed=1))
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    opt = optim.SGD(ms.params(wrapper), lr=0.1)
    steps = 2 if settings.tiny else 20
    data = [(ms.to_device(rng.normal(size=(16, 8)).astype(np.float32), "sim:1"),
             ms.to_device(rng.integers(0, 2, 16), "sim:1")) for _ in range(steps)]
    with ms.track_transfers() as ledger:
        for x, y in data:
            opt.zero_grad()
            ms.backprop(wrapper, losses.cross_entropy, x, y)
            opt.step()
    per_step = ledger.bytes / steps
    yield Row("wrap mode on sim:1, BatchNorm model: bytes moved per training step (ledger)",
              per_step, "B", "0 B", "yes" if per_step == 0 else "NO",
              f"{steps} steps; the running statistics stay on the wrapper")
    with ms.track_transfers() as ledger:
        for b in ms.buffers(original):
            _ = b.value
        pulled = ledger.bytes
        for b in ms.buffers(original):
            _ = b.value
    nbytes = sum(b.nbytes for b in ms.buffers(original))
    yield Row("wrap mode: bytes to read the original's running statistics once, then again",
              pulled, "B", f"{nbytes} B (the Buffers, once)",
              "yes" if pulled == nbytes and ledger.bytes == nbytes else "NO",
              f"the second read moved {ledger.bytes - pulled} B")
    ms.detach(wrapper)


def rows(settings: Settings) -> Iterator[Row]:
    yield from batchnorm_rows(settings)
    yield from sync_rows(settings)
    yield from ledger_rows(settings)


if __name__ == "__main__":
    main(rows, __doc__)
