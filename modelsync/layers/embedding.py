"""Embedding: a lookup table from integer indices to rows of a ``(num, dim)`` weight."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..devices import device_of, dtype_name, on_device
from ..errors import ArgumentError
from ..params import Param
from ..xp import namespace
from .base import Context, accumulate, check_input, layer, param_field
from .init import check_dtype, check_positive_int, generator, positive_int


@layer
@attrs.define(eq=False, init=False)
class Embedding:
    """``Embedding(num, dim)(idx)[..., :] == weight[idx]``: Param ``weight`` of shape
    ``(num, dim)``, initialised N(0, 1) like PyTorch's ``nn.Embedding``.

    The input is an integer array of any shape on the layer's device, each entry in
    ``[0, num)``; the output has shape ``(*idx.shape, dim)``. Backward adds each output row's
    gradient into the row it was read from (a scatter-add); the indices get no gradient, so
    the pullback returns None.
    """

    num: int = attrs.field(converter=positive_int("num"))
    dim: int = attrs.field(converter=positive_int("dim"))
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()

    def __init__(self, num: int, dim: int, *, dtype: str = "float32",
                 seed: int | None = None) -> None:
        check_positive_int("num", num)
        check_positive_int("dim", dim)
        dtype = check_dtype(dtype)
        weight = generator(seed).standard_normal((num, dim)).astype(dtype)
        self.__attrs_init__(int(num), int(dim), dtype, Param.owning(weight, name="weight"))

    def forward(self, idx: Any, ctx: Context) -> tuple[Any, Any]:
        weight = self.weight.value
        check_input(idx, self.weight.device, ctx)
        xp = namespace(idx, weight)
        self._check_indices(idx, xp, ctx)
        lead = tuple(idx.shape)
        flat = xp.reshape(idx, (-1,))
        if isinstance(weight, np.ndarray):
            rows = weight[flat]  # NumPy fast path: one fancy-index gather
        else:
            rows = xp.take(weight, flat, axis=0)

        def pullback(dy: Any) -> None:
            dy2 = xp.reshape(dy, (-1, self.dim))
            if dy2.dtype != weight.dtype:
                dy2 = xp.astype(dy2, weight.dtype)
            accumulate(self.weight, _scatter_add_rows(xp, flat, dy2, self.num))
            return None

        return xp.reshape(rows, (*lead, self.dim)), pullback

    def _check_indices(self, idx: Any, xp: Any, ctx: Context) -> None:
        where = ctx.path or "Embedding"
        if not xp.isdtype(idx.dtype, "integral"):
            raise ArgumentError(
                f"{where}: indices have dtype {dtype_name(idx.dtype)}, expected an integer "
                f"dtype (int32 or int64) with values in [0, {self.num})")
        if idx.size == 0:
            return
        if not isinstance(idx, np.ndarray) and not self._any_outside(idx, xp):
            return  # (on a device: one scalar read; only a bad batch reads more, to name it)
        low, high = int(xp.min(idx)), int(xp.max(idx))
        if low < 0 or high >= self.num:
            bad = low if low < 0 else high
            raise ArgumentError(
                f"{where}: index {bad} is outside [0, {self.num}) (num={self.num})")

    def _any_outside(self, idx: Any, xp: Any) -> bool:
        """Whether an index is outside ``[0, num)``: reduced on the device, one bool read."""
        outside = idx < 0
        if self.num <= xp.iinfo(idx.dtype).max:  # (else no index of this dtype reaches num)
            outside = outside | (idx >= self.num)
        return bool(xp.any(outside))


def _scatter_add_rows(xp: Any, flat: Any, dy2: Any, num: int) -> Any:
    """A ``(num, dim)`` array whose row ``i`` sums the rows of ``dy2`` where ``flat == i``.

    NumPy uses ``np.add.at`` and CuPy ``cupyx.scatter_add`` (memory of the gradient only);
    the simulated device builds a one-hot ``(n, num)`` matrix and computes ``onehot.T @ dy2``,
    which the array API can express (it has no scatter-add): each entry sums the same terms,
    though a non-finite ``dy2`` entry spreads NaN over its column there.
    """
    if isinstance(dy2, np.ndarray):
        grad = np.zeros((num, dy2.shape[1]), dtype=dy2.dtype)
        np.add.at(grad, flat, dy2)
        return grad
    if type(dy2).__module__.startswith("cupy"):
        import cupy
        import cupyx

        with on_device(device_of(dy2)):  # (CuPy allocates on the current GPU)
            grad = cupy.zeros((num, dy2.shape[1]), dtype=dy2.dtype)
            cupyx.scatter_add(grad, flat.astype(cupy.int64), dy2)
        return grad
    flat = xp.astype(flat, xp.int64)  # int8/int16 indices cannot count past their range
    classes = xp.arange(num, dtype=xp.int64, device=flat.device)
    onehot = xp.astype(xp.reshape(flat, (-1, 1)) == xp.reshape(classes, (1, -1)), dy2.dtype)
    return xp.matrix_transpose(onehot) @ dy2
