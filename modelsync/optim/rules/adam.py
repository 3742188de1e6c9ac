"""Adam and AdamW (torch.optim.Adam / AdamW, amsgrad off), with torch's bias correction."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...kernels import prange
from ...kernels.cuda import Elementwise
from ...params import Param
from ..optimizer import Optimizer
from ..ranges import restrict_range

_ADAM = Elementwise(
    "adam", "T grad, T beta1, T beta2, T one_minus_beta1, T one_minus_beta2, T step_size, "
    "T bias_correction2_sqrt, T eps, T decay", "T param, T m, T v", """
m = beta1 * m + one_minus_beta1 * grad;
v = beta2 * v + one_minus_beta2 * grad * grad;
if (decay != T(1)) param *= decay;
T delta = step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps));
if (delta != T(0) || (signbit(delta) && signbit(param))) param -= delta;
""")  # (the skipped operations are exact no-ops that would flush a subnormal param: cuda.py)


class Adam(Optimizer):
    """``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g²``, and
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (torch's form of the update)."""

    lr = restrict_range("[0, ∞)")
    betas = restrict_range("[0, 1)", names=("beta1", "beta2"))
    eps = restrict_range("(0, ∞)")
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Param], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps)

    def _decay(self) -> float:
        """The factor the param is scaled by before the update (AdamW's decoupled decay)."""
        return 1.0

    def scalars(self, step: int) -> tuple[float, ...]:
        """beta1, beta2, 1 - beta1, 1 - beta2, the step size lr/(1-beta1^t), the root of the
        second bias correction sqrt(1-beta2^t), eps, and the decay factor."""
        beta1, beta2 = self.betas
        return (beta1, beta2, 1.0 - beta1, 1.0 - beta2, self.lr / (1.0 - beta1 ** step),
                math.sqrt(1.0 - beta2 ** step), self.eps, self._decay())

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        beta1, beta2, omb1, omb2, step_size, bc2_sqrt, eps, decay = s
        m = beta1 * state[0] + omb1 * grad
        v = beta2 * state[1] + omb2 * grad * grad
        state[0], state[1] = m, v
        if decay != 1.0:
            data *= decay
        data -= step_size * (m / (xp.sqrt(v) / bc2_sqrt + eps))

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        beta1, beta2, omb1, omb2, step_size, bc2_sqrt, eps, decay = s
        (m, v), (tmp,) = state, scratch
        m *= beta1
        np.multiply(grad, omb1, out=tmp)
        m += tmp
        v *= beta2
        np.multiply(grad, omb2, out=tmp)
        tmp *= grad
        v += tmp
        if decay != 1.0:
            data *= decay
        np.sqrt(v, out=tmp)
        tmp /= bc2_sqrt
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        data -= tmp

    @staticmethod
    def loop(p: Any, g: Any, m: Any, v: Any, beta1: Any, beta2: Any, omb1: Any, omb2: Any,
             step_size: Any, bc2_sqrt: Any, eps: Any, decay: Any) -> None:
        for i in prange(p.shape[0]):
            mi = m[i] * beta1 + g[i] * omb1
            vi = v[i] * beta2 + g[i] * omb2 * g[i]
            p[i] = p[i] * decay - mi / (np.sqrt(vi) / bc2_sqrt + eps) * step_size
            m[i] = mi
            v[i] = vi

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple) -> None:
        _ADAM(grad, *s, data, *state)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch AdamW): ``p *= 1 - lr * weight_decay`` first,
    then the Adam update."""

    weight_decay = restrict_range("[0, ∞)")

    def __init__(self, params: Iterable[Param], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        Optimizer.__init__(self, params, lr=lr, betas=betas, eps=eps,  # (one more hyper
                           weight_decay=weight_decay)                # than Adam.__init__)

    def _decay(self) -> float:
        return 1.0 - self.lr * self.weight_decay
