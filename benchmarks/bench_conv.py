"""Convolutions in modelsync against PyTorch on the CPU, float32, timed in turns.

(a) One Conv2d forward + backward: batch 32, 32 -> 64 channels, 32×32, 3×3 kernel, padding 1
    (goal ≤ 2×: modelsync runs im2col and one BLAS GEMM per pass; torch runs oneDNN's direct
    convolution).
(b) One training step of a digits-sized CNN with Adam: Conv2d(1→16, 3×3, pad 1), relu,
    MaxPool2d(2), Conv2d(16→32, 3×3, pad 1), relu, GlobalAvgPool, Dense(32→10), on batches of
    32 images 1×8×8, cross-entropy (goal ≤ 1×).

torch gets as many threads as NumPy's BLAS uses (OpenBLAS: one per core, unless
OPENBLAS_NUM_THREADS or OMP_NUM_THREADS says otherwise), so both sides have the same cores.
Both start from the same weights; (b) first checks that a few steps give the same losses.
"""

from __future__ import annotations

import os
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
from modelsync import layers, losses, optim, workloads  # noqa: E402
from modelsync.layers import Context  # noqa: E402

torch = optional_torch()


def blas_threads() -> int:
    """The threads NumPy's OpenBLAS runs on (its own default: one per core)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return os.cpu_count() or 1


if torch is not None:
    torch.set_num_threads(blas_threads())


def copy_weights(ours: object, theirs: object) -> None:
    """torch's Params get ours, by name."""
    with torch.no_grad():
        named = dict(theirs.named_parameters())
        for path, p in ms.named_params(ours).items():
            named[path].copy_(torch.from_numpy(np.asarray(p.value)))


# -- (a) one convolution ------------------------------------------------------------------------
def conv_sides(settings: Settings) -> dict[str, Callable[[], object]]:
    n, cin, cout, size = (2, 4, 8, 8) if settings.tiny else (32, 32, 64, 32)
    conv = layers.Conv2d(cin, cout, 3, padding=1, seed=0)
    net = torch.nn.Conv2d(cin, cout, 3, padding=1)
    copy_weights(conv, net)
    x = np.random.default_rng(0).standard_normal((n, cin, size, size)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((n, cout, size, size)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    dyt = torch.from_numpy(dy)

    def theirs() -> object:
        net.zero_grad(set_to_none=True)
        xt.grad = None
        net(xt).backward(dyt)
        return xt.grad

    def ours() -> object:
        conv.weight.grad = conv.bias.grad = None
        _, pullback = conv.forward(x, Context(train=True))
        return pullback(dy)

    np.testing.assert_allclose(ours(), theirs().numpy(), rtol=1e-3, atol=1e-4)
    return {"torch": theirs, "modelsync": ours}


def conv_rows(settings: Settings) -> Iterator[Row]:
    what = "Conv2d forward+backward (32×32→64 channels, 32×32, 3×3 pad 1, batch 32) vs torch"
    if torch is None:
        yield na_row(what, goal_of(2.0), NO_TORCH)
        return
    timings = in_turns(conv_sides(settings), settings)
    yield compared(what, timings, "modelsync", "torch", 2.0, f"{blas_threads()} threads each")


# -- (b) a CNN training step ---------------------------------------------------------------------
def cnn(seed: int = 0) -> object:
    return layers.Chain(
        layers.Conv2d(1, 16, 3, padding=1, seed=seed), "relu", layers.MaxPool2d(2),
        layers.Conv2d(16, 32, 3, padding=1, seed=seed + 1), "relu", layers.GlobalAvgPool(),
        layers.Dense(32, 10, seed=seed + 2))


def torch_cnn() -> object:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def demo_torch_cnn() -> object:
    """The demo CNN's twin (modelsync.workloads.build_cnn), module for module."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def step_sides(settings: Settings, model: object, net: object, shift: int = 0
               ) -> tuple[dict[str, Callable[[], float]], float]:
    """One Adam step on each side (cycling through a few batches), and the largest loss
    difference over the first steps from the same weights (torch's get ours by name;
    ``shift``: torch's last module comes that many places later, after its extra Flatten)."""
    rng = np.random.default_rng(0)
    count = 2 if settings.tiny else 8
    xs = rng.standard_normal((count, 32, 1, 8, 8)).astype(np.float32)
    ys = rng.integers(0, 10, size=(count, 32))
    names = ms.interop.torch_sequential_names(model)
    last = str(len(model.layers) - 1)
    names = {k: (str(int(last) + shift) + v[len(last):] if v.startswith(last + ".") else v)
             for k, v in names.items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in
                         ms.state_dict(model, names=names).items()})
    opt = optim.Adam(ms.params(model), lr=1e-3)
    topt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)
    batches = [(xs[i], ys[i]) for i in range(count)]
    tbatches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
    state = {"ours": 0, "theirs": 0}

    def ours() -> float:
        x, y = batches[state["ours"] % count]
        state["ours"] += 1
        opt.zero_grad()
        loss = ms.backprop(model, losses.cross_entropy, x, y)
        opt.step()
        return loss

    def theirs() -> float:
        x, y = tbatches[state["theirs"] % count]
        state["theirs"] += 1
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        topt.step()
        return loss.item()

    diff = max(abs(ours() - theirs()) for _ in range(count))
    return {"torch Adam foreach": theirs, "modelsync": ours}, diff


def step_rows(settings: Settings) -> Iterator[Row]:
    cases = [
        ("digits CNN training step (2 Conv2d, MaxPool2d, GlobalAvgPool, Dense; Adam) vs torch",
         cnn, lambda: torch_cnn(), 1),
        ("demo CNN training step (modelsync demo --model cnn: 2 Conv2d with BatchNorm, "
         "MaxPool2d, Flatten, Dense; Adam) vs torch", lambda: workloads.build_cnn(0),
         lambda: demo_torch_cnn(), 0),
    ]
    for what, ours, theirs, shift in cases:
        if torch is None:
            yield na_row(what, goal_of(1.0), NO_TORCH)
            continue
        sides, diff = step_sides(settings, ours(), theirs(), shift)
        timings = in_turns(sides, settings)
        yield compared(what, timings, "modelsync", "torch Adam foreach", 1.0,
                       f"{blas_threads()} threads each; first losses differ by at most "
                       f"{diff:.1e}")


def rows(settings: Settings) -> Iterator[Row]:
    yield from conv_rows(settings)
    yield from step_rows(settings)


if __name__ == "__main__":
    main(rows, __doc__)
