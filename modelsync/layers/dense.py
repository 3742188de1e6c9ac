"""Dense (alias Affine): ``y = activation(x @ weight.T + bias)``."""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..params import Param
from ..xp import namespace
from .activations import activate, check_activation
from .base import (
    Context,
    accumulate,
    as_layer_dtype,
    check_features,
    check_input,
    layer,
    param_field,
)
from .init import check_dtype, check_positive_int, generator, positive_int


@layer
@attrs.define(eq=False, init=False)
class Dense:
    """A fully connected layer with Params ``weight`` (out_features, in_features) and ``bias``
    (out_features), initialised like PyTorch's Linear: U(-1/sqrt(in), 1/sqrt(in))."""

    # The converters are the constructor's checks, run again by attrs on assignment and by
    # ms.load on a stored configuration.
    in_features: int = attrs.field(converter=positive_int("in_features"))
    out_features: int = attrs.field(converter=positive_int("out_features"))
    activation: str | None = attrs.field(converter=check_activation)
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()
    bias: Param | None = param_field(default=None, optional=True)

    def __init__(self, in_features: int, out_features: int, activation: Any = None, *,
                 bias: bool = True, dtype: str = "float32", seed: int | None = None) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        dtype = check_dtype(dtype)
        rng = generator(seed)
        bound = 1.0 / math.sqrt(in_features)
        weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        self.__attrs_init__(
            in_features, out_features, activation, dtype,
            Param.owning(weight, name="weight"),
            Param.owning(rng.uniform(-bound, bound, out_features).astype(dtype), name="bias")
            if bias else None)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        weight = self.weight.value
        check_input(x, self.weight.device, ctx)
        check_features(x, self.in_features, ctx, "Dense", "in_features")
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, "Dense")
        xp = namespace(x, weight)
        lead = tuple(x.shape[:-1])
        x2 = xp.reshape(x, (-1, self.in_features))
        z = x2 @ xp.matrix_transpose(weight)
        if self.bias is not None:
            z += self.bias.value  # z is fresh: add in place
        y, act_back = activate(self.activation, z)

        def pullback(dy: Any) -> Any:
            dz = act_back(xp.reshape(dy, (-1, self.out_features)))
            accumulate(self.weight, xp.matrix_transpose(dz) @ x2)
            accumulate(self.bias, xp.sum(dz, axis=0))
            dx = xp.reshape(dz @ weight, (*lead, self.in_features))
            return dx if dx.dtype == in_dtype else xp.astype(dx, in_dtype)

        return xp.reshape(y, (*lead, self.out_features)), pullback


Affine = Dense
