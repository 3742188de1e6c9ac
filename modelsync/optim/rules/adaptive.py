"""RMSProp and AdaGrad (torch.optim.RMSprop non-centered without momentum; torch Adagrad
with lr_decay 0 and a zero initial accumulator): both step by ``g / (sqrt(second) + eps)``,
with a second moment that decays (RMSProp) or only grows (AdaGrad)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ...kernels import prange
from ...kernels.cuda import Elementwise
from ...params import Param
from ..optimizer import Optimizer
from ..ranges import restrict_range

_STEP_BY_ROOT = "param -= lr * (grad / (sqrt({0}) + eps));"
_RMSPROP = Elementwise("rmsprop", "T grad, T alpha, T one_minus_alpha, T lr, T eps",
                       "T param, T v", "v = alpha * v + one_minus_alpha * grad * grad;"
                       + _STEP_BY_ROOT.format("v"))
_ADAGRAD = Elementwise("adagrad", "T grad, T lr, T eps", "T param, T s",
                       "s = s + grad * grad; " + _STEP_BY_ROOT.format("s"))


class RMSProp(Optimizer):
    """``v = alpha v + (1-alpha) g²``; ``p -= lr * g / (sqrt(v) + eps)``."""

    lr = restrict_range("[0, ∞)")
    alpha = restrict_range("[0, 1]")
    eps = restrict_range("(0, ∞)")
    state_names = ("square_avg",)

    def __init__(self, params: Iterable[Param], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, alpha=alpha, eps=eps)

    def scalars(self, step: int) -> tuple[float, ...]:
        return (self.alpha, 1.0 - self.alpha, self.lr, self.eps)

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        alpha, one_minus_alpha, lr, eps = s
        v = state[0] = alpha * state[0] + one_minus_alpha * grad * grad
        data -= lr * (grad / (xp.sqrt(v) + eps))

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        alpha, one_minus_alpha, lr, eps = s
        (v,), (tmp,) = state, scratch
        v *= alpha
        np.multiply(grad, one_minus_alpha, out=tmp)
        tmp *= grad
        v += tmp
        _step_by_root(data, grad, v, tmp, lr, eps)

    @staticmethod
    def loop(p: Any, g: Any, v: Any, alpha: Any, one_minus_alpha: Any, lr: Any,
             eps: Any) -> None:
        for i in prange(p.shape[0]):
            vi = v[i] * alpha + g[i] * one_minus_alpha * g[i]
            p[i] = p[i] - g[i] / (np.sqrt(vi) + eps) * lr
            v[i] = vi

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple) -> None:
        _RMSPROP(grad, *s, data, *state)


class AdaGrad(Optimizer):
    """``s += g²``; ``p -= lr * g / (sqrt(s) + eps)``."""

    lr = restrict_range("[0, ∞)")
    eps = restrict_range("(0, ∞)")
    state_names = ("sum",)

    def __init__(self, params: Iterable[Param], lr: float = 1e-2, eps: float = 1e-10) -> None:
        super().__init__(params, lr=lr, eps=eps)

    def scalars(self, step: int) -> tuple[float, ...]:
        return (self.lr, self.eps)

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        lr, eps = s
        total = state[0] = state[0] + grad * grad
        data -= lr * (grad / (xp.sqrt(total) + eps))

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        (total,), (tmp,) = state, scratch
        np.multiply(grad, grad, out=tmp)
        total += tmp
        _step_by_root(data, grad, total, tmp, *s)

    @staticmethod
    def loop(p: Any, g: Any, total: Any, lr: Any, eps: Any) -> None:
        for i in prange(p.shape[0]):
            si = total[i] + g[i] * g[i]
            p[i] = p[i] - g[i] / (np.sqrt(si) + eps) * lr
            total[i] = si

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple) -> None:
        _ADAGRAD(grad, *s, data, *state)


def _step_by_root(data: Any, grad: Any, second: Any, tmp: Any, lr: float, eps: float) -> None:
    """``data -= lr * grad / (sqrt(second) + eps)`` in place through ``tmp`` (the host step
    RMSProp and AdaGrad share once their second-moment buffer is updated)."""
    np.sqrt(second, out=tmp)
    tmp += eps
    np.divide(grad, tmp, out=tmp)
    tmp *= lr
    data -= tmp
