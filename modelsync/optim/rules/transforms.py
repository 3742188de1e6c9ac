"""The gradient transforms' maths: WeightDecay, ClipValue (per Param, every form side by side)
and ClipNorm (one factor for all bound gradients, so a step of its own)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ...devices import on_device
from ...kernels.cuda import Elementwise
from ...params import Param
from ...transfers import copy_to
from ...xp import namespace
from ..ranges import restrict_range
from ..transform import GradientTransform

#: Added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does.
CLIP_NORM_EPS = 1e-6
_WEIGHT_DECAY = Elementwise("weight_decay", "T param, T decay", "T grad",
                            "grad += decay * param;")


class WeightDecay(GradientTransform):
    """L2 weight decay as torch SGD applies it: ``g += decay * p``."""

    decay = restrict_range("[0, ∞)")
    reads_params = True

    def __init__(self, params: Iterable[Param], decay: float) -> None:
        super().__init__(params, decay=decay)

    def scalars(self, step: int) -> tuple[float]:
        return (self.decay,)

    def update_xp(self, value: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        grad += s[0] * value

    def update_host(self, value: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        (tmp,) = scratch
        np.multiply(value, s[0], out=tmp)
        grad += tmp

    def update_cuda(self, value: Any, grad: Any, state: list[Any], s: tuple) -> None:
        _WEIGHT_DECAY(value, *s, grad)


class ClipValue(GradientTransform):
    """Clamp every gradient entry into ``[-limit, limit]`` (torch ``clip_grad_value_``)."""

    limit = restrict_range("(0, ∞)")
    scratch_count = 0

    def __init__(self, params: Iterable[Param], limit: float) -> None:
        super().__init__(params, limit=limit)

    def scalars(self, step: int) -> tuple[float]:
        return (self.limit,)

    def update_xp(self, _: Any, grad: Any, state: list[Any], s: tuple, xp: Any) -> None:
        if type(grad).__module__.startswith("cupy"):  # float16 on a GPU (no fused kernel):
            self.update_cuda(_, grad, state, s)  # array-api-compat's clip masks on the host
            return
        grad[...] = xp.clip(grad, min=-s[0], max=s[0])

    def update_host(self, _: Any, grad: Any, state: list[Any], s: tuple,
                    scratch: tuple) -> None:
        np.clip(grad, -s[0], s[0], out=grad)

    def update_cuda(self, _: Any, grad: Any, state: list[Any], s: tuple) -> None:
        import cupy  # cupy.clip runs one kernel; the compat clip(out=) masks on the host

        cupy.clip(grad, -s[0], s[0], out=grad)


class ClipNorm(GradientTransform):
    """Scale all bound gradients together so their global L2 norm is at most ``max_norm``
    (torch ``clip_grad_norm_``): ``g *= min(1, max_norm / (norm + 1e-6))``.

    On a device the norm and the factor stay on the device (no host round trip per step).
    """

    max_norm = restrict_range("(0, ∞)")

    def __init__(self, params: Iterable[Param], max_norm: float) -> None:
        super().__init__(params, max_norm=max_norm)

    def _prepare_step(self) -> Callable[[], None]:
        """Nothing to prepare: the norm is of the gradients as the step finds them (after
        the transforms before this one in a chain)."""
        return self._clip

    def _clip(self) -> None:
        """Clip the gradients of the bound Params that have one, as one vector."""
        groups: dict[Any, list[Any]] = {}
        for p, grad in zip(self._params, Param.grads_of(self._params), strict=True):
            if grad is not None:
                groups.setdefault(p.device, []).append(grad)
        if not groups:
            return
        if len(groups) == 1 and next(iter(groups)).kind == "host":
            self._clip_host(next(iter(groups.values())))
        else:
            self._clip_devices(groups)

    def _clip_host(self, grads: list[Any]) -> None:
        total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
        coef = self.max_norm / (total + CLIP_NORM_EPS)
        if not coef >= 1.0:  # torch multiplies by min(coef, 1); NaN (a NaN grad) spreads too
            for g in grads:
                np.multiply(g, coef, out=g)

    def _clip_devices(self, groups: dict[Any, list[Any]]) -> None:
        devices = list(groups)
        primary = devices[0]
        sums = {}
        for dev, gs in groups.items():
            with on_device(dev):
                sums[dev] = _sum_of_squares(gs)
        with on_device(primary):  # (the total and the factor are made on the first device)
            total_sq = sums[primary]
            for dev in devices[1:]:
                total_sq = total_sq + copy_to(sums[dev], primary, reason="ClipNorm global norm",
                                              what="grad")
            xp = namespace(total_sq)
            coef = xp.minimum(self.max_norm / (xp.sqrt(total_sq) + CLIP_NORM_EPS), 1.0)
        for dev, gs in groups.items():
            here = coef if dev == primary else copy_to(coef, dev, reason="ClipNorm global norm",
                                                       what="grad")
            gxp = namespace(here)
            with on_device(dev):
                for g in gs:
                    g *= gxp.astype(here, g.dtype)


def _sum_of_squares(grads: list[Any]) -> Any:
    """Σ g² over ``grads`` (one device) as a 0-d float64 array on that device."""
    xp = namespace(grads[0])
    if xp.__name__.endswith("numpy"):
        return np.asarray(sum(float(np.vdot(g, g)) for g in grads), dtype=np.float64)
    total = None
    for g in grads:
        s = xp.astype(xp.sum(g * g), xp.float64)
        total = s if total is None else total + s
    return total
