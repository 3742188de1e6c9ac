"""LayerNorm: normalise the last axis to zero mean and unit variance, then scale and shift."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..params import Param
from ..xp import namespace
from .base import (
    Context,
    accumulate,
    as_layer_dtype,
    check_features,
    check_input,
    layer,
    param_field,
)
from .init import check_dtype, check_eps, check_positive_int, positive_int


@layer
@attrs.define(eq=False, init=False)
class LayerNorm:
    """PyTorch's ``nn.LayerNorm(dim, eps)`` over the last axis:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance; Params
    ``weight`` (ones) and ``bias`` (zeros) of shape ``(dim,)``."""

    dim: int = attrs.field(converter=positive_int("dim"))
    eps: float = attrs.field(converter=check_eps)
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()
    bias: Param = param_field()

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype: str = "float32") -> None:
        check_positive_int("dim", dim)
        dtype = check_dtype(dtype)
        self.__attrs_init__(
            int(dim), eps, dtype,
            Param.owning(np.ones(dim, dtype=dtype), name="weight"),
            Param.owning(np.zeros(dim, dtype=dtype), name="bias"))

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        weight, bias = self.weight.value, self.bias.value
        check_input(x, self.weight.device, ctx)
        check_features(x, self.dim, ctx, "LayerNorm", "dim")
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, "LayerNorm")
        xp = namespace(x, weight)
        # Every temporary below is fresh, so the arithmetic runs in place where it can.
        xhat = x - xp.mean(x, axis=-1, keepdims=True)
        rstd = xp.mean(xhat * xhat, axis=-1, keepdims=True)
        rstd += self.eps
        rstd = 1.0 / xp.sqrt(rstd)
        xhat *= rstd
        y = xhat * weight
        y += bias

        def pullback(dy: Any) -> Any:
            lead = tuple(dy.shape[:-1])
            dy2 = xp.reshape(dy, (-1, self.dim))
            xhat2 = xp.reshape(xhat, (-1, self.dim))
            accumulate(self.weight, xp.sum(dy2 * xhat2, axis=0))
            accumulate(self.bias, xp.sum(dy2, axis=0))
            # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), with g = dy * weight
            g = dy2 * weight
            proj = xp.mean(g * xhat2, axis=-1, keepdims=True)
            g -= xp.mean(g, axis=-1, keepdims=True)
            g -= xhat2 * proj
            g *= xp.reshape(rstd, (-1, 1))
            dx = xp.reshape(g, (*lead, self.dim))
            return dx if dx.dtype == in_dtype else xp.astype(dx, in_dtype)

        return y, pullback
