"""Plain SGD, SGD with momentum, and Nesterov momentum (torch.optim.SGD, dampening 0)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ...kernels import prange
from ...kernels.cuda import Elementwise
from ...params import Param
from ..optimizer import Optimizer
from ..ranges import restrict_range

#: (``param -= 0`` is skipped where it is an exact no-op, unlike -0 - -0 = +0: run, it would
#: flush a subnormal param; see cuda.py)
_SGD = Elementwise("sgd", "T grad, T lr", "T param", "T delta = lr * grad; "
                   "if (delta != T(0) || (signbit(delta) && signbit(param))) param -= delta;")
_MOMENTUM_BODY = "T b = first ? grad : T(momentum * buf + grad); buf = b; param -= lr * ({});"
_MOMENTUM_IN, _MOMENTUM_OUT = "T grad, T momentum, T lr, int32 first", "T param, T buf"
_MOMENTUM = Elementwise("momentum", _MOMENTUM_IN, _MOMENTUM_OUT, _MOMENTUM_BODY.format("b"))
_NESTEROV = Elementwise("nesterov", _MOMENTUM_IN, _MOMENTUM_OUT,
                        _MOMENTUM_BODY.format("grad + momentum * b"))


class SGD(Optimizer):
    """``p -= lr * g`` (torch ``SGD(params, lr)``)."""

    lr = restrict_range("[0, ∞)")

    def __init__(self, params: Iterable[Param], lr: float) -> None:
        super().__init__(params, lr=lr)

    def scalars(self, step: int) -> tuple[float]:
        return (self.lr,)

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        (lr,) = s
        data -= lr * grad

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        (tmp,) = scratch
        np.multiply(grad, s[0], out=tmp)
        data -= tmp

    @staticmethod
    def loop(p: Any, g: Any, lr: Any) -> None:
        for i in prange(p.shape[0]):
            p[i] = p[i] - g[i] * lr

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple) -> None:
        _SGD(grad, *s, data)


class Momentum(Optimizer):
    """Heavy-ball momentum, torch ``SGD(params, lr, momentum)`` with dampening 0:
    ``b = g`` on the first step, then ``b = momentum * b + g``; ``p -= lr * b``."""

    lr = restrict_range("[0, ∞)")
    momentum = restrict_range("[0, 1)")
    state_names = ("momentum_buffer",)
    nesterov = False

    def __init__(self, params: Iterable[Param], lr: float, momentum: float = 0.9) -> None:
        super().__init__(params, lr=lr, momentum=momentum)

    def scalars(self, step: int) -> tuple[float, float, bool]:
        return (self.momentum, self.lr, step == 1)

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        mu, lr, first = s
        buf = xp.asarray(grad, copy=True) if first else mu * state[0] + grad
        state[0] = buf
        if self.nesterov:
            data -= lr * (grad + mu * buf)
        else:
            data -= lr * buf

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        mu, lr, first = s
        (buf,), (tmp,) = state, scratch
        if first:
            np.copyto(buf, grad)
        else:
            buf *= mu
            buf += grad
        if self.nesterov:
            np.multiply(buf, mu, out=tmp)
            tmp += grad
            tmp *= lr
        else:
            np.multiply(buf, lr, out=tmp)
        data -= tmp

    @staticmethod
    def loop(p: Any, g: Any, buf: Any, mu: Any, lr: Any, first: bool) -> None:
        for i in prange(p.shape[0]):
            b = g[i] if first else buf[i] * mu + g[i]
            p[i] = p[i] - b * lr
            buf[i] = b

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple) -> None:
        mu, lr, first = s
        (_NESTEROV if self.nesterov else _MOMENTUM)(grad, mu, lr, int(first), data, *state)


class Nesterov(Momentum):
    """Nesterov momentum, torch ``SGD(params, lr, momentum, nesterov=True)``:
    ``b`` as in Momentum, then ``p -= lr * (g + momentum * b)``."""

    nesterov = True

    @staticmethod
    def loop(p: Any, g: Any, buf: Any, mu: Any, lr: Any, first: bool) -> None:
        for i in prange(p.shape[0]):
            b = g[i] if first else buf[i] * mu + g[i]
            p[i] = p[i] - (b * mu + g[i]) * lr
            buf[i] = b
