"""BatchNorm: normalise each channel over the batch (and spatial axes), keeping running
statistics as Buffers that training mode updates and evaluation mode reads."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from ..buffers import Buffer
from ..checks import as_float
from ..errors import ArgumentError
from ..params import Param
from ..xp import namespace
from .base import Context, accumulate, as_layer_dtype, buffer_field, check_input, layer, param_field
from .init import bool_arg, check_dtype, check_eps, check_positive_int, positive_int


def _check_momentum(momentum: Any) -> float | None:
    """``momentum`` in [0, 1], or None (the cumulative average over the batches seen)."""
    if momentum is None:
        return None
    value = as_float("momentum", momentum)
    if not 0.0 <= value <= 1.0:
        raise ArgumentError(f"momentum={momentum!r} is outside [0, 1] (or None: the "
                            "cumulative average)")
    return value


@layer
@attrs.define(eq=False, init=False)
class BatchNorm:
    """PyTorch's ``nn.BatchNorm1d``/``nn.BatchNorm2d(num_features, eps, momentum, affine,
    track_running_stats)`` on ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs.

    Training mode normalises with the batch's biased variance and updates the Buffers
    ``running_mean`` and ``running_var`` (with the unbiased variance) and the counter
    ``num_batches_tracked`` exactly as torch does (``momentum=None``: the cumulative
    average, ``1/num_batches_tracked``); evaluation mode normalises with the Buffers.
    Without ``track_running_stats`` there are no Buffers and batch statistics are always
    used; without ``affine`` no Params ``weight`` (ones) and ``bias`` (zeros)."""

    num_features: int = attrs.field(converter=positive_int("num_features"))
    eps: float = attrs.field(converter=check_eps)
    momentum: float | None = attrs.field(converter=_check_momentum)
    affine: bool = attrs.field(converter=bool_arg("affine"))
    track_running_stats: bool = attrs.field(converter=bool_arg("track_running_stats"))
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param | None = param_field(optional=True)
    bias: Param | None = param_field(optional=True)
    running_mean: Buffer | None = buffer_field(optional=True)
    running_var: Buffer | None = buffer_field(optional=True)
    num_batches_tracked: Buffer | None = buffer_field(optional=True)

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 dtype: str = "float32") -> None:
        c = check_positive_int("num_features", num_features)
        dtype = check_dtype(dtype)
        affine = bool_arg("affine")(affine)
        tracking = bool_arg("track_running_stats")(track_running_stats)
        self.__attrs_init__(
            c, eps, momentum, affine, tracking, dtype,
            Param.owning(np.ones(c, dtype=dtype), name="weight") if affine else None,
            Param.owning(np.zeros(c, dtype=dtype), name="bias") if affine else None,
            Buffer.owning(np.zeros(c, dtype=dtype), name="running_mean") if tracking else None,
            Buffer.owning(np.ones(c, dtype=dtype), name="running_var") if tracking else None,
            Buffer.owning(np.zeros((), dtype=np.int64), name="num_batches_tracked")
            if tracking else None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches counted (as torch's method)."""
        if self.running_mean is None:
            return
        for buffer, fill in ((self.running_mean, 0), (self.running_var, 1),
                             (self.num_batches_tracked, 0)):
            data = buffer.writable(overwrite=True)
            data[...] = fill

    def _device(self) -> Any:
        for held in (self.weight, self.running_mean):
            if held is not None:
                return held.device
        return None

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        where = ctx.path or "BatchNorm"
        check_input(x, self._device(), ctx)
        if x.ndim not in (2, 3, 4) or x.shape[1] != self.num_features:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)}, expected (N, C), (N, C, L) or "
                f"(N, C, H, W) with C=num_features={self.num_features}")
        in_dtype = x.dtype
        xp = namespace(x)
        held = self.weight if self.weight is not None else self.running_mean
        x = as_layer_dtype(x, getattr(xp, self.dtype) if held is None else held.dtype, ctx,
                           "BatchNorm")
        axes = (0, *range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        n = math.prod(x.shape[i] for i in axes)
        batch_stats = ctx.train or not self.track_running_stats
        if batch_stats:
            if ctx.train and n <= 1:
                raise ArgumentError(
                    f"{where}: input has shape {tuple(x.shape)}: expected more than 1 value "
                    "per channel when training (the batch variance of one value is undefined)")
            mean = xp.mean(x, axis=axes, keepdims=True)
            xc = x - mean
            var = xp.mean(xc * xc, axis=axes, keepdims=True)
            if ctx.train and self.track_running_stats:
                self._update_running(xp, mean, var, n)
        else:
            mean = xp.reshape(self.running_mean.value, bshape)
            var = xp.reshape(self.running_var.value, bshape)
            xc = x - mean
        # Every temporary below is fresh, so the arithmetic runs in place where it can.
        rstd = 1.0 / xp.sqrt(var + self.eps)
        xhat = xc
        xhat *= rstd
        weight = None if self.weight is None else xp.reshape(self.weight.value, bshape)
        y = xhat * weight if weight is not None else xhat + 0.0  # (y is the caller's)
        if self.bias is not None:
            y += xp.reshape(self.bias.value, bshape)

        def pullback(dy: Any) -> Any:
            dy = dy if dy.dtype == xhat.dtype else xp.astype(dy, xhat.dtype)
            dw = xp.sum(dy * xhat, axis=axes, keepdims=True)
            db = xp.sum(dy, axis=axes, keepdims=True)
            if self.weight is not None:
                accumulate(self.weight, xp.reshape(dw, (-1,)))
                accumulate(self.bias, xp.reshape(db, (-1,)))
            scale = rstd if weight is None else rstd * weight
            if not batch_stats:
                dx = dy * scale
            else:
                # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight,
                # whose means are weight * db / n and weight * dw / n
                dx = xhat * (dw * (-1.0 / n))
                dx += dy
                dx -= db * (1.0 / n)
                dx *= scale
            return dx if dx.dtype == in_dtype else xp.astype(dx, in_dtype)

        return y, pullback

    def _update_running(self, xp: Any, mean: Any, var: Any, n: int) -> None:
        """torch's update: count the batch, then blend by ``momentum`` (or ``1/count``) the
        batch mean and the unbiased batch variance into the running statistics."""
        count = self.num_batches_tracked.writable()
        count[...] = count + 1
        if self.momentum is None:
            factor: Any = 1.0 / xp.astype(count, xp.float64)
            factor = xp.astype(factor, mean.dtype)
        else:
            factor = self.momentum
        batch_mean = xp.reshape(mean, (-1,))
        unbiased = xp.reshape(var, (-1,)) * (n / (n - 1))
        for buffer, batch in ((self.running_mean, batch_mean), (self.running_var, unbiased)):
            data = buffer.writable()
            data[...] = (1 - factor) * data + factor * batch
