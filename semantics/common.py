"""What every experiment shares: the model, the data on a device, one training step, and the
library calls that come from modules still finding their final home (optim, io)."""

from __future__ import annotations

from typing import Any

import numpy as np

import modelsync as ms
from modelsync import layers, losses
from modelsync.datasets import load_digits

HIDDEN = 128
BATCH = 32
LEARNING_RATE = 3e-3


def build_model(seed: int = 0, hidden: int = HIDDEN) -> Any:
    """The demo's classifier on the host: Dense(64, hidden, relu) -> Dense(hidden, 10)."""
    return layers.Chain(layers.Dense(64, hidden, "relu", seed=seed),
                        layers.Dense(hidden, 10, seed=seed + 1))


def adam(model: Any) -> Any:
    """Adam bound to ``model``'s Params."""
    from modelsync import optim

    return optim.Adam(ms.params(model), lr=LEARNING_RATE)


def save(model: Any, path: Any) -> None:
    save_fn = getattr(ms, "save", None)
    if save_fn is None:  # not exported yet
        from modelsync.io import save as save_fn
    save_fn(model, path)


def load(path: Any, device: Any = "host") -> Any:
    load_fn = getattr(ms, "load", None)
    if load_fn is None:
        from modelsync.io import load as load_fn
    return load_fn(path, device=device)


class Data:
    """The digits training set moved to ``dev`` once (counted as data), cut into batches
    that are slices of the device arrays, so a training step moves nothing."""

    def __init__(self, dev: ms.Device) -> None:
        x_train, y_train, x_test, y_test = load_digits()
        self.x_host, self.y_host = x_test, y_test
        x, y = ms.to_device(x_train, dev), ms.to_device(y_train, dev)
        n = int(x.shape[0])
        self.batches = [(x[i:min(i + BATCH, n), ...], y[i:min(i + BATCH, n)])
                        for i in range(0, n, BATCH)]
        self.probe = {dev: self.batches[0][0], ms.device("host"): x_test[:BATCH]}

    def batch(self, step: int) -> tuple[Any, Any]:
        return self.batches[step % len(self.batches)]

    def input_for(self, model: Any) -> Any:
        """A small batch on the device ``model`` computes on (host or this data's device)."""
        from modelsync.tree import param_paths

        dev = param_paths(model)[0][1].device  # raw walk: a moved model's call should raise
        if dev not in self.probe:
            self.probe[dev] = ms.to_device(self.x_host[:BATCH], dev)
        return self.probe[dev]


def train_step(model: Any, optimizer: Any, x: Any, y: Any) -> float:
    """One optimizer step: zero_grad, backprop, step."""
    optimizer.zero_grad()
    loss = ms.backprop(model, losses.cross_entropy, x, y)
    optimizer.step()
    return loss


def host_values(model: Any) -> list[np.ndarray]:
    """The model's parameter values as host arrays (through the counted door)."""
    from modelsync.transfers import copy_to

    return [copy_to(p.value, ms.device("host"), reason="semantics: compare", what="data")
            for p in ms.params(model)]


def same_values(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
