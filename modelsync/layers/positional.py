"""PositionalEmbedding: a learned table of position vectors added to a sequence."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..errors import ArgumentError
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
from .init import check_dtype, check_positive_int, generator, positive_int


@layer
@attrs.define(eq=False, init=False)
class PositionalEmbedding:
    """``y[..., t, :] = x[..., t, :] + weight[t]`` on ``(N, T, dim)`` inputs (batch first;
    an unbatched ``(T, dim)`` works too), for ``T <= max_len``. Param ``weight`` of shape
    ``(max_len, dim)``, initialised N(0, 1) like Embedding (the learned positions of GPT-2).
    Backward sums the gradient over the batch into the first ``T`` rows."""

    max_len: int = attrs.field(converter=positive_int("max_len"))
    dim: int = attrs.field(converter=positive_int("dim"))
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()

    def __init__(self, max_len: int, dim: int, *, dtype: str = "float32",
                 seed: int | None = None) -> None:
        check_positive_int("max_len", max_len)
        check_positive_int("dim", dim)
        dtype = check_dtype(dtype)
        weight = generator(seed).standard_normal((max_len, dim)).astype(dtype)
        self.__attrs_init__(int(max_len), int(dim), dtype, Param.owning(weight, name="weight"))

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        weight = self.weight.value
        check_input(x, self.weight.device, ctx)
        check_features(x, self.dim, ctx, "PositionalEmbedding", "dim")
        where = ctx.path or "PositionalEmbedding"
        if x.ndim < 2:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)}, expected (N, T, dim={self.dim}) "
                f"or (T, dim={self.dim})")
        steps = int(x.shape[-2])
        if steps > self.max_len:
            raise ArgumentError(
                f"{where}: the sequence length T={steps} (input shape {tuple(x.shape)}) "
                f"exceeds max_len={self.max_len}")
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, "PositionalEmbedding")
        xp = namespace(x, weight)
        y = x + weight[:steps, :]

        def pullback(dy: Any) -> Any:
            rows = xp.sum(xp.reshape(dy, (-1, steps, self.dim)), axis=0)
            if rows.dtype != weight.dtype:
                rows = xp.astype(rows, weight.dtype)
            accumulate(self.weight, _pad_rows(xp, rows, self.max_len))
            return dy if dy.dtype == in_dtype else xp.astype(dy, in_dtype)

        return y, pullback


def _pad_rows(xp: Any, rows: Any, total: int) -> Any:
    """``rows`` (T, dim) followed by zero rows up to ``total`` rows."""
    steps, dim = rows.shape
    if steps == total:
        return rows
    if isinstance(rows, np.ndarray):
        full = np.zeros((total, dim), dtype=rows.dtype)
        full[:steps] = rows
        return full
    return xp.concat([rows, xp.zeros((total - steps, dim), dtype=rows.dtype,
                                     device=rows.device)], axis=0)
