"""Dropout: in training, zero each entry with probability ``p`` and scale the rest by
``1/(1-p)`` (inverted dropout); in evaluation, the identity.

Training mode is ``ctx.train``: ``ms.backprop``, ``ms.train`` and ``model(x, train=True)``
train; ``model(x)`` evaluates. The keep-mask is drawn on the host from ``ctx.generator()``
(the ``rng=`` given to ``backprop``/``train``/``model(...)``, or fresh entropy), so one seed
gives the same mask on every device. For an input on a device the boolean mask (one byte
per entry) crosses through ``copy_to(..., reason="dropout mask", what="data")``: counted by
``track_transfers`` as data, never as a parameter transfer, and allowed by
``transfer_guard("disallow")``.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..checks import as_float
from ..devices import HOST, device_of, dtype_name
from ..errors import ArgumentError
from ..transfers import copy_to
from ..xp import namespace
from .base import Context, check_input, layer


def _check_p(p: Any) -> float:
    value = as_float("p", p)
    if not 0.0 <= value < 1.0:
        raise ArgumentError(f"p={p!r} is outside [0, 1)")
    return value


@layer
@attrs.define(eq=False)
class Dropout:
    """``Dropout(p)``: drop probability ``p`` in ``[0, 1)``; no Params."""

    p: float = attrs.field(converter=_check_p)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, None, ctx)
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ArgumentError(
                f"{ctx.path or 'Dropout'}: input has dtype {dtype_name(x.dtype)}, expected a "
                "floating dtype")
        if not ctx.train or self.p == 0.0:
            return x, _identity
        keep = ctx.generator().random(tuple(x.shape), dtype=np.float32) >= self.p
        dev = device_of(x)
        if dev != HOST:
            keep = copy_to(keep, dev, reason="dropout mask", what="data")
        mask = xp.astype(keep, x.dtype)
        mask *= 1.0 / (1.0 - self.p)

        def pullback(dy: Any) -> Any:
            return dy * mask

        return x * mask, pullback


def _identity(dy: Any) -> Any:
    return dy
