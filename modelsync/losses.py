"""Loss functions: each returns the mean loss and, for backprop, its gradient with respect to
the prediction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from .devices import device_of, dtype_name
from .errors import ArgumentError, DeviceMismatchError
from .xp import namespace

_LOG_FLOOR = -100.0  # PyTorch's BCELoss clamps log terms at -100 so that log(0) stays finite
_GRAD_FLOOR = 1e-12  # and floors p (1 - p) at 1e-12 in its backward


@attrs.frozen
class Loss:
    """A named loss: ``loss(pred, target)`` is the mean loss as a 0-d array on pred's device,
    ``loss.value_and_grad(pred, target)`` also gives d(loss)/d(pred)."""

    name: str
    _compute: Callable[[Any, Any], tuple[Any, Any]]

    def __call__(self, pred: Any, target: Any) -> Any:
        return self.value_and_grad(pred, target)[0]

    def value_and_grad(self, pred: Any, target: Any) -> tuple[Any, Any]:
        if device_of(pred) != device_of(target):
            raise DeviceMismatchError(
                f"{self.name}: prediction is on {device_of(pred)} but target is on "
                f"{device_of(target)}; move the target with ms.to_device(y, '{device_of(pred)}')")
        value, grad = self._compute(pred, target)
        if isinstance(value, np.generic):  # NumPy reductions give scalars: keep it an array
            value = np.asarray(value)
        return value, grad


def _check_same_shape(name: str, pred: Any, target: Any) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ArgumentError(
            f"{name}: target has shape {tuple(target.shape)}, expected the prediction's shape "
            f"{tuple(pred.shape)}")


def _mse(pred: Any, target: Any) -> tuple[Any, Any]:
    _check_same_shape("mse", pred, target)
    xp = namespace(pred, target)
    diff = pred - xp.astype(target, pred.dtype)
    if diff.size == 0:  # like torch: an empty batch has a NaN mean and an empty gradient
        return xp.sum(diff * diff) * float("nan"), diff
    return xp.mean(diff * diff), diff * (2.0 / diff.size)


def _cross_entropy_tokens(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Cross entropy over every position: logits ``(..., classes)`` with labels of the
    leading shape (a language model's (batch, time, vocab) and (batch, time)) are the mean
    over all positions, as torch's ``cross_entropy`` of the flattened pair."""
    if logits.ndim > 2 and tuple(labels.shape) == tuple(logits.shape[:-1]):
        xp = namespace(logits, labels)
        classes = logits.shape[-1]
        loss, grad = _cross_entropy(xp.reshape(logits, (-1, classes)), xp.reshape(labels, (-1,)))
        return loss, xp.reshape(grad, tuple(logits.shape))
    return _cross_entropy(logits, labels)


def _cross_entropy(logits: Any, labels: Any) -> tuple[Any, Any]:
    xp = namespace(logits, labels)
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ArgumentError(
            "cross_entropy: expected logits (batch, classes) and integer labels (batch,), or "
            f"(..., classes) and labels of the leading shape, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise ArgumentError(f"cross_entropy: labels have dtype {dtype_name(labels.dtype)}, "
                            "expected integers (class indices, e.g. int64)")
    if logits.shape[0] == 0:  # like torch: an empty batch has a NaN mean, no gradient
        return xp.sum(logits) * float("nan"), xp.zeros_like(logits)
    batch, classes = logits.shape
    if batch > 0:
        low, high = int(xp.min(labels)), int(xp.max(labels))
        if low < 0 or high >= classes:
            raise ArgumentError(
                f"cross_entropy: label {low if low < 0 else high} is outside [0, {classes}) "
                f"for logits with {classes} classes")
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_norm = xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    log_probs = shifted - log_norm
    classes_row = xp.arange(classes, device=labels.device if hasattr(labels, "device") else None)
    one_hot = xp.astype(xp.reshape(labels, (-1, 1)) == xp.reshape(classes_row, (1, -1)),
                        logits.dtype)
    loss = -xp.sum(log_probs * one_hot) / batch
    return loss, (xp.exp(log_probs) - one_hot) / batch


def _binary_cross_entropy(probs: Any, target: Any) -> tuple[Any, Any]:
    _check_same_shape("binary_cross_entropy", probs, target)
    xp = namespace(probs, target)
    if probs.size > 0 and bool(xp.any((probs < 0.0) | (probs > 1.0))):
        raise ArgumentError(
            "binary_cross_entropy: predictions must be probabilities in [0, 1] (apply sigmoid "
            "first), got values outside it")
    t = xp.astype(target, probs.dtype)
    with np.errstate(divide="ignore"):  # log(0) = -inf is expected here, then clamped
        log_p = xp.clip(xp.log(probs), _LOG_FLOOR, None)
        log_q = xp.clip(xp.log(1.0 - probs), _LOG_FLOOR, None)
    loss = -xp.mean(t * log_p + (1.0 - t) * log_q)
    # PyTorch's BCELoss backward: (p - t) / max(p (1 - p), 1e-12), kept above the
    # dtype's smallest normal number (float16)
    floor = max(_GRAD_FLOOR, float(xp.finfo(probs.dtype).smallest_normal))
    denom = xp.clip(probs * (1.0 - probs), floor, None)
    return loss, (probs - t) / denom / probs.size


mse = Loss("mse", _mse)
cross_entropy = Loss("cross_entropy", _cross_entropy_tokens)
binary_cross_entropy = Loss("binary_cross_entropy", _binary_cross_entropy)
