"""RMSProp and AdaGrad (torch.optim.RMSprop non-centered without momentum; torch Adagrad
with lr_decay 0 and a zero initial accumulator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..params import Param
from ._cuda import elementwise
from .base import Optimizer, Slot, on_device
from .ranges import restrict_range


class RMSProp(Optimizer):
    """``v = alpha v + (1-alpha) g²``; ``p -= lr * g / (sqrt(v) + eps)``."""

    lr = restrict_range("[0, ∞)")
    alpha = restrict_range("[0, 1]")
    eps = restrict_range("(0, ∞)")
    hyper_names = ("lr", "alpha", "eps")
    state_names = ("square_avg",)
    numba_kernel = "rmsprop"

    def __init__(self, params: Iterable[Param], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8) -> None:
        self.lr = lr
        self.alpha = alpha
        self.eps = eps
        super().__init__(params)

    def _kernel_args(self, step: int) -> tuple[float, ...]:
        return (self.alpha, 1.0 - self.alpha, self.lr, self.eps)

    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        v = self.alpha * slot.arrays[0] + (1.0 - self.alpha) * grad * grad
        slot.arrays[0] = v
        data -= self.lr * (grad / (slot.xp.sqrt(v) + self.eps))

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        v = slot.arrays[0]
        (tmp,) = slot.scratch
        v *= self.alpha
        np.multiply(grad, 1.0 - self.alpha, out=tmp)
        tmp *= grad
        v += tmp
        _step_by_root(data, grad, v, tmp, self.lr, self.eps)

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        kernel = elementwise(
            "rmsprop", "T grad, T alpha, T one_minus_alpha, T lr, T eps", "T param, T v",
            "v = alpha * v + one_minus_alpha * grad * grad;"
            "param -= lr * (grad / (sqrt(v) + eps));")
        with on_device(slot):
            kernel(grad, self.alpha, 1.0 - self.alpha, self.lr, self.eps, data, slot.arrays[0])


class AdaGrad(Optimizer):
    """``s += g²``; ``p -= lr * g / (sqrt(s) + eps)``."""

    lr = restrict_range("[0, ∞)")
    eps = restrict_range("(0, ∞)")
    hyper_names = ("lr", "eps")
    state_names = ("sum",)
    numba_kernel = "adagrad"

    def __init__(self, params: Iterable[Param], lr: float = 1e-2, eps: float = 1e-10) -> None:
        self.lr = lr
        self.eps = eps
        super().__init__(params)

    def _kernel_args(self, step: int) -> tuple[float, ...]:
        return (self.lr, self.eps)

    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        s = slot.arrays[0] + grad * grad
        slot.arrays[0] = s
        data -= self.lr * (grad / (slot.xp.sqrt(s) + self.eps))

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        s = slot.arrays[0]
        (tmp,) = slot.scratch
        np.multiply(grad, grad, out=tmp)
        s += tmp
        _step_by_root(data, grad, s, tmp, self.lr, self.eps)

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        kernel = elementwise(
            "adagrad", "T grad, T lr, T eps", "T param, T s",
            "s = s + grad * grad; param -= lr * (grad / (sqrt(s) + eps));")
        with on_device(slot):
            kernel(grad, self.lr, self.eps, data, slot.arrays[0])


def _step_by_root(data: Any, grad: Any, second: Any, tmp: Any, lr: float, eps: float) -> None:
    """``data -= lr * grad / (sqrt(second) + eps)`` in place through ``tmp`` (the host step
    RMSProp and AdaGrad share once their second-moment buffer is updated)."""
    np.sqrt(second, out=tmp)
    tmp += eps
    np.divide(grad, tmp, out=tmp)
    tmp *= lr
    data -= tmp
