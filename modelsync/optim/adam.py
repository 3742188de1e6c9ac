"""Adam and AdamW (torch.optim.Adam / AdamW, amsgrad off), with torch's bias correction."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..params import Param
from ._cuda import elementwise
from .base import Optimizer, Slot, on_device
from .ranges import restrict_range

_ADAM_CUDA = """
m = beta1 * m + one_minus_beta1 * grad;
v = beta2 * v + one_minus_beta2 * grad * grad;
param *= decay;
param -= step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps));
"""


class Adam(Optimizer):
    """``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g²``, and
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (torch's form of the update)."""

    lr = restrict_range("[0, ∞)")
    betas = restrict_range("[0, 1)", names=("beta1", "beta2"))
    eps = restrict_range("(0, ∞)")
    hyper_names: tuple[str, ...] = ("lr", "betas", "eps")
    state_names = ("exp_avg", "exp_avg_sq")
    numba_kernel = "adam"

    def __init__(self, params: Iterable[Param], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr = lr
        self.betas = betas
        self.eps = eps
        super().__init__(params)

    def _decay(self) -> float:
        """The factor the param is scaled by before the update (AdamW's decoupled decay)."""
        return 1.0

    def _scalars(self, step: int) -> tuple[float, ...]:
        beta1, beta2 = self.betas
        step_size = self.lr / (1.0 - beta1 ** step)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        return beta1, beta2, 1.0 - beta1, 1.0 - beta2, step_size, bias_correction2_sqrt

    def _kernel_args(self, step: int) -> tuple[float, ...]:
        return (*self._scalars(step), self.eps, self._decay())

    def _update_xp(self, data: Any, grad: Any, slot: Slot) -> None:
        beta1, beta2, omb1, omb2, step_size, bc2_sqrt = self._scalars(slot.step)
        m = beta1 * slot.arrays[0] + omb1 * grad
        v = beta2 * slot.arrays[1] + omb2 * grad * grad
        slot.arrays[0], slot.arrays[1] = m, v
        decay = self._decay()
        if decay != 1.0:
            data *= decay
        data -= step_size * (m / (slot.xp.sqrt(v) / bc2_sqrt + self.eps))

    def _update_host(self, data: Any, grad: Any, slot: Slot) -> None:
        beta1, beta2, omb1, omb2, step_size, bc2_sqrt = self._scalars(slot.step)
        m, v = slot.arrays
        (tmp,) = slot.scratch
        m *= beta1
        np.multiply(grad, omb1, out=tmp)
        m += tmp
        v *= beta2
        np.multiply(grad, omb2, out=tmp)
        tmp *= grad
        v += tmp
        decay = self._decay()
        if decay != 1.0:
            data *= decay
        np.sqrt(v, out=tmp)
        tmp /= bc2_sqrt
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        data -= tmp

    def _update_cuda(self, data: Any, grad: Any, slot: Slot) -> None:
        beta1, beta2, omb1, omb2, step_size, bc2_sqrt = self._scalars(slot.step)
        kernel = elementwise(
            "adam", "T grad, T beta1, T beta2, T one_minus_beta1, T one_minus_beta2, "
            "T step_size, T bias_correction2_sqrt, T eps, T decay", "T param, T m, T v",
            _ADAM_CUDA)
        with on_device(slot):
            kernel(grad, beta1, beta2, omb1, omb2, step_size, bc2_sqrt, self.eps,
                   self._decay(), data, slot.arrays[0], slot.arrays[1])


class AdamW(Adam):
    """Adam with decoupled weight decay (torch AdamW): ``p *= 1 - lr * weight_decay`` first,
    then the Adam update."""

    weight_decay = restrict_range("[0, ∞)")
    hyper_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params: Iterable[Param], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        self.weight_decay = weight_decay
        super().__init__(params, lr, betas, eps)

    def _decay(self) -> float:
        return 1.0 - self.lr * self.weight_decay
