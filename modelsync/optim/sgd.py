"""Plain SGD, SGD with momentum, and Nesterov momentum (torch.optim.SGD, dampening 0)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..params import Param
from ._cuda import elementwise
from .base import Optimizer, Slot, on_device
from .ranges import restrict_range


class SGD(Optimizer):
    """``p -= lr * g`` (torch ``SGD(params, lr)``)."""

    lr = restrict_range("[0, ∞)")
    hyper_names = ("lr",)
    numba_kernel = "sgd"

    def __init__(self, params: Iterable[Param], lr: float) -> None:
        self.lr = lr
        super().__init__(params)

    def _kernel_args(self, step: int) -> tuple[float, ...]:
        return (self.lr,)

    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        data -= self.lr * grad

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        (tmp,) = slot.scratch
        np.multiply(grad, self.lr, out=tmp)
        data -= tmp

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        kernel = elementwise("sgd", "T grad, T lr", "T param", "param -= lr * grad;")
        with on_device(slot):
            kernel(grad, self.lr, data)


class Momentum(Optimizer):
    """Heavy-ball momentum, torch ``SGD(params, lr, momentum)`` with dampening 0:
    ``b = g`` on the first step, then ``b = momentum * b + g``; ``p -= lr * b``."""

    lr = restrict_range("[0, ∞)")
    momentum = restrict_range("[0, 1)")
    hyper_names = ("lr", "momentum")
    state_names = ("momentum_buffer",)
    nesterov = False
    numba_kernel = "momentum"

    def __init__(self, params: Iterable[Param], lr: float, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum
        super().__init__(params)

    def _kernel_args(self, step: int) -> tuple[float | bool, ...]:
        return (self.momentum, self.lr, step == 1)

    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        mu = self.momentum
        if slot.step == 1:
            buf = slot.xp.asarray(grad, copy=True)
        else:
            buf = mu * slot.arrays[0] + grad
        slot.arrays[0] = buf
        if self.nesterov:
            data -= self.lr * (grad + mu * buf)
        else:
            data -= self.lr * buf

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        mu = self.momentum
        buf = slot.arrays[0]
        (tmp,) = slot.scratch
        if slot.step == 1:
            np.copyto(buf, grad)
        else:
            buf *= mu
            buf += grad
        if self.nesterov:
            np.multiply(buf, mu, out=tmp)
            tmp += grad
            tmp *= self.lr
        else:
            np.multiply(buf, self.lr, out=tmp)
        data -= tmp

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        step = "grad + momentum * b" if self.nesterov else "b"
        kernel = elementwise(
            "nesterov" if self.nesterov else "momentum",
            "T grad, T momentum, T lr, int32 first", "T param, T buf",
            f"T b = first ? grad : T(momentum * buf + grad); buf = b; param -= lr * ({step});")
        with on_device(slot):
            kernel(grad, self.momentum, self.lr, int(slot.step == 1), data, slot.arrays[0])


class Nesterov(Momentum):
    """Nesterov momentum, torch ``SGD(params, lr, momentum, nesterov=True)``:
    ``b`` as in Momentum, then ``p -= lr * (g + momentum * b)``."""

    nesterov = True
    numba_kernel = "nesterov"
