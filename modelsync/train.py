"""backprop (one forward and backward pass) and train (the loop, with a progress bar)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from .batching import batches
from .devices import Device, device, is_array
from .errors import ArgumentError, ArgumentTypeError
from .layers.base import Context, check_rng, forward_pair, on_model_device, param_device
from .losses import Loss
from .transfers import to_device_array
from .tree import is_layer, params, require_model


def backprop(model: Any, loss_fn: Loss, x: Any, y: Any, *, rng: Any = None) -> float:
    """Forward ``x`` through ``model`` in training mode, compute ``loss_fn(out, y)``, and add
    every Param's gradient into its ``.grad`` (on the Param's device). Returns the loss."""
    require_model(model)
    if not isinstance(loss_fn, Loss):
        raise ArgumentTypeError(
            f"loss_fn is a {type(loss_fn).__name__}; expected a loss from modelsync.losses "
            "(mse, cross_entropy, binary_cross_entropy)")
    with on_model_device(model):
        out, pullback = forward_pair(model, x, Context(train=True, rng=check_rng(rng)))
        loss, d_out = loss_fn.value_and_grad(out, y)
        pullback(d_out)
        return float(loss)


def train(model: Any, data: Iterable[tuple[Any, Any]], loss_fn: Loss, optimizer: Any, *,
          epochs: int = 1, device: Device | str | None = None, progress: bool = True,
          rng: Any = None, batch_size: int | None = None, shuffle: bool = False,
          seed: int | None = None) -> list[float]:
    """Train for ``epochs`` passes over ``data``, moving each batch to the model's device.
    Returns each step's loss.

    ``data`` is an iterable of (x, y) batches (re-iterable when epochs > 1), or, given
    ``batch_size``, an (x, y) pair of arrays batched by `ms.batches` (``shuffle`` by
    ``seed``: a new order each epoch). The progress bar goes to stderr, and only to a
    terminal; ``progress=False`` turns it off.
    """
    require_model(model)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ArgumentError(f"epochs={epochs!r} is outside [1, ∞)")
    target = _resolve(device, model)
    _check_optimizer(optimizer, model)
    if batch_size is not None:
        data = batches(*_arrays_pair(data), batch_size=batch_size, shuffle=shuffle, seed=seed,
                       device=target)
    elif shuffle or seed is not None:
        raise ArgumentError(
            f"shuffle={shuffle!r}, seed={seed!r} without batch_size: only data that train "
            "batches itself can be shuffled; pass batch_size= with an (x, y) pair of arrays, "
            "or shuffle your own batches (ms.batches(x, y, batch_size=..., shuffle=True))")
    elif _is_array_pair(data):
        raise ArgumentError(
            "data is an (x, y) pair of arrays but batch_size is not given; pass batch_size= "
            "(ms.train(model, (x, y), ..., batch_size=32)) or an iterable of (x, y) batches "
            "such as ms.batches(x, y, batch_size=32)")
    rng = check_rng(rng)  # an int seed becomes one generator for the whole run
    if epochs > 1 and iter(data) is data:
        raise ArgumentError(
            "data is a one-shot iterator but epochs > 1; pass a list or another re-iterable")
    losses: list[float] = []
    total = len(data) * epochs if hasattr(data, "__len__") else None
    with tqdm(total=total, disable=True if not progress else None, file=sys.stderr,
              desc="train", unit="step", leave=False) as bar:
        for _ in range(epochs):
            for index, item in enumerate(data):
                x, y = _pair(item, index)
                optimizer.zero_grad()
                loss = backprop(model, loss_fn, to_device_array(x, target),
                                to_device_array(y, target), rng=rng)
                with on_model_device(model):  # (the step's CuPy work: the model's GPU)
                    optimizer.step()
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return losses


def _check_optimizer(optimizer: Any, model: Any) -> None:
    """TypeError for a non-optimizer; ArgumentError for one bound to none of the model's
    Params (the classic slip: an optimizer made before a copy-mode conversion)."""
    if is_layer(optimizer):
        raise ArgumentTypeError(
            f"optimizer is a model ({type(optimizer).__name__}); expected an optimizer bound to "
            "the model's Params, e.g. optim.Adam(ms.params(model)) (the order is "
            "ms.train(model, data, loss_fn, optimizer))")
    if not (callable(getattr(optimizer, "step", None))
            and callable(getattr(optimizer, "zero_grad", None))):
        raise ArgumentTypeError(
            f"optimizer is a {type(optimizer).__name__}; expected an object with step() and "
            "zero_grad(), e.g. optim.Adam(ms.params(model))")
    bound = getattr(optimizer, "params", None)
    if bound:
        mine = {id(p) for p in params(model)}
        if not any(id(p) in mine for p in bound):
            raise ArgumentError(
                "optimizer is bound to none of this model's Params (was it made for the model "
                "before a copy-mode to_device?); bind it to the model you train: "
                "optim.Adam(ms.params(model))")


def _is_array_pair(data: Any) -> bool:
    """(x, y) arrays: iterated, they would give rows of x, not batches (a common slip)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(map(is_array, data))


def _arrays_pair(data: Any) -> tuple[Any, Any]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        size = f" of {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise ArgumentTypeError(
            f"data is a {type(data).__name__}{size}; with batch_size= it must be an (x, y) "
            "pair of arrays, e.g. ms.train(model, (x_train, y_train), ..., batch_size=32)")
    return data[0], data[1]


def _pair(item: Any, index: int) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ArgumentTypeError(
            f"data[{index}] is a {type(item).__name__}; expected an (x, y) pair of arrays")
    return item[0], item[1]


def _resolve(spec: Device | str | None, model: Any) -> Device:
    found = param_device(model)
    if spec is not None:
        wanted = device(spec)
        if found is not None and wanted != found:
            raise ArgumentError(
                f"device={spec!r}, but the model's Params are on {found}: batches must go where "
                f"the model is; convert the model first (ms.to_device(model, {str(wanted)!r})) "
                "or leave device=None")
        return wanted
    if found is None:
        raise ArgumentError("device=None but the model has no Params to say where it lives; "
                            "pass device=")
    return found
