"""Conv1d and Conv2d: PyTorch's ``nn.Conv1d``/``nn.Conv2d`` on ``(N, C, L)`` / ``(N, C, H, W)``,
with strides, zero padding (``"same"``, ``"valid"`` or ints), dilation and groups.

The computation is one matrix product per group (im2col): the padded input, channels first
and batch last ``(C, *spatial, N)``, is sliced once per kernel offset and the slices are
stacked into ``cols`` of shape ``(groups, C/groups · K, P · N)`` (K kernel offsets, P output
positions), so ``y = weight @ cols`` is a single large GEMM, the shape BLAS is fastest at
and every array library has. The backward pass is two more GEMMs and a strided add per
kernel offset (col2im). The output comes back as a ``(N, O, *spatial)`` view of an
``(O, *spatial, N)`` buffer, which is the layout the next convolution reads without a copy.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import attrs

from ..errors import ArgumentError
from ..params import Param
from .base import Context, accumulate, as_layer_dtype, check_input, layer, param_field
from .init import check_dtype, check_positive_int, generator, positive_int
from .windows import (
    array_module,
    check_fits,
    check_ndim,
    inner,
    int_tuple,
    offsets,
    out_sizes,
    pad_pairs,
    padded,
    padding_arg,
)


def _check_groups(node: Any, field: Any, groups: int) -> None:
    """Validator: groups divide both channel counts."""
    _groups_divide(groups, node.in_channels, node.out_channels)


def _groups_divide(groups: int, in_channels: int, out_channels: int) -> None:
    for argument, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % groups:
            raise ArgumentError(
                f"groups={groups} does not divide {argument}={channels}; expected a divisor "
                "of both in_channels and out_channels")


def _check_same_stride(node: Any, field: Any, value: Any) -> None:
    """Validator of padding and stride: ``padding="same"`` only with stride 1 (torch refuses
    it otherwise too), whichever of the two is set last (on assignment the node still holds
    the old value, so the new one is ``value``)."""
    padding = value if field.name == "padding" else node.padding
    stride = value if field.name == "stride" else node.stride
    if padding == "same" and any(s != 1 for s in stride):
        raise ArgumentError(
            f"padding='same' needs stride 1 on every axis, but stride={stride}; give "
            "the padding as ints for a strided convolution")


class _Conv:
    """What Conv1d and Conv2d share: initialisation and the forward/backward pass."""

    NDIM = 0
    LAYOUT = ""

    def _init(self, in_channels: Any, out_channels: Any, kernel_size: Any, stride: Any,
              padding: Any, dilation: Any, groups: Any, bias: bool, dtype: Any,
              seed: int | None) -> None:
        nd = self.NDIM
        in_channels = check_positive_int("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        kernel = int_tuple("kernel_size", nd)(kernel_size)
        groups = check_positive_int("groups", groups)
        _groups_divide(groups, in_channels, out_channels)
        dtype = check_dtype(dtype)
        rng = generator(seed)
        # torch's default: kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        # and the bias draws from the same interval.
        fan_in = in_channels // groups * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, *kernel)
        weight = rng.uniform(-bound, bound, shape).astype(dtype)
        self.__attrs_init__(
            in_channels, out_channels, kernel, stride, padding, dilation, groups, dtype,
            Param.owning(weight, name="weight"),
            Param.owning(rng.uniform(-bound, bound, out_channels).astype(dtype), name="bias")
            if bias else None)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        name = type(self).__name__
        where = ctx.path or name
        weight = self.weight.value
        check_input(x, self.weight.device, ctx)
        check_ndim(x, self.NDIM, where, self.LAYOUT)
        if x.shape[1] != self.in_channels:
            raise ArgumentError(
                f"{where}: input has {x.shape[1]} channels (shape {tuple(x.shape)}), expected "
                f"in_channels={self.in_channels} on axis 1")
        pads = pad_pairs(self.padding, self.kernel_size, self.dilation)
        check_fits(tuple(x.shape), self.kernel_size, pads, self.dilation, where)
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, name)
        bias = self.bias.value if self.bias is not None else None
        y, back = conv(x, weight, bias, self.stride, pads, self.dilation, self.groups)

        def pullback(dy: Any) -> Any:
            dx, dw, db = back(dy)
            accumulate(self.weight, dw)
            accumulate(self.bias, db)
            return dx if dx.dtype == in_dtype else array_module(dx).astype(dx, in_dtype)

        return y, pullback


@layer
@attrs.define(eq=False, init=False)
class Conv1d(_Conv):
    """``torch.nn.Conv1d`` on ``(N, C, L)``: Params ``weight`` (out, in // groups, k) and
    ``bias`` (out,), both U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in // groups · k,
    as torch initialises them."""

    NDIM = 1
    LAYOUT = "(N, C, L)"

    in_channels: int = attrs.field(converter=positive_int("in_channels"))
    out_channels: int = attrs.field(converter=positive_int("out_channels"))
    kernel_size: tuple[int, ...] = attrs.field(converter=int_tuple("kernel_size", 1))
    stride: tuple[int, ...] = attrs.field(converter=int_tuple("stride", 1),
                                          validator=_check_same_stride)
    padding: tuple[int, ...] | str = attrs.field(converter=padding_arg(1),
                                                 validator=_check_same_stride)
    dilation: tuple[int, ...] = attrs.field(converter=int_tuple("dilation", 1))
    groups: int = attrs.field(converter=positive_int("groups"), validator=_check_groups)
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()
    bias: Param | None = param_field(default=None, optional=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int], *,
                 stride: int | tuple[int] = 1, padding: int | tuple[int] | str = 0,
                 dilation: int | tuple[int] = 1, groups: int = 1, bias: bool = True,
                 dtype: str = "float32", seed: int | None = None) -> None:
        self._init(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                   bias, dtype, seed)


@layer
@attrs.define(eq=False, init=False)
class Conv2d(_Conv):
    """``torch.nn.Conv2d`` on ``(N, C, H, W)``: Params ``weight`` (out, in // groups, kh, kw)
    and ``bias`` (out,), both U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    fan_in = in // groups · kh · kw, as torch initialises them. Sizes are ints or pairs."""

    NDIM = 2
    LAYOUT = "(N, C, H, W)"

    in_channels: int = attrs.field(converter=positive_int("in_channels"))
    out_channels: int = attrs.field(converter=positive_int("out_channels"))
    kernel_size: tuple[int, ...] = attrs.field(converter=int_tuple("kernel_size", 2))
    stride: tuple[int, ...] = attrs.field(converter=int_tuple("stride", 2),
                                          validator=_check_same_stride)
    padding: tuple[int, ...] | str = attrs.field(converter=padding_arg(2),
                                                 validator=_check_same_stride)
    dilation: tuple[int, ...] = attrs.field(converter=int_tuple("dilation", 2))
    groups: int = attrs.field(converter=positive_int("groups"), validator=_check_groups)
    dtype: str = attrs.field(converter=check_dtype)
    weight: Param = param_field()
    bias: Param | None = param_field(default=None, optional=True)

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int], *, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, dtype: str = "float32",
                 seed: int | None = None) -> None:
        self._init(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                   bias, dtype, seed)


def conv(x: Any, w: Any, b: Any, stride: tuple[int, ...], pads: tuple[tuple[int, int], ...],
         dilation: tuple[int, ...], groups: int) -> tuple[Any, Any]:
    """The convolution of checked ``x`` (N, C, *spatial) with ``w`` (O, C/groups, *kernel)
    and optional ``b`` (O,): the output and ``back(dy) -> (dx, dw, db)`` (db None without b)."""
    xp = array_module(x, w)
    n, c = x.shape[:2]
    o = w.shape[0]
    kernel = tuple(w.shape[2:])
    k = math.prod(kernel)
    spatial = tuple(x.shape[2:])
    nd = len(spatial)
    to_inner = (1, *range(2, nd + 2), 0)  # (N, C, *spatial) -> (C, *spatial, N)
    to_outer = (nd + 1, 0, *range(1, nd + 1))  # and back
    out = out_sizes(spatial, kernel, stride, pads, dilation)
    cg, og = c // groups, o // groups
    columns = math.prod(out) * n  # (sizes, not -1: an empty batch reshapes too)
    # channels first and the batch last: cols's rows are (channel, offset), its columns
    # the batch's output positions, so one GEMM per group covers the batch; and each
    # offset's slice reads runs of (output width × batch) contiguous entries, long even for
    # small images
    pads_n = (*pads, (0, 0))
    xt = padded(xp.permute_dims(x, to_inner), pads_n, 0.0, xp, lead=1)
    windows = offsets(kernel, stride, dilation, out, lead=1)
    cols = xp.reshape(xp.stack([xt[index] for index in windows], axis=1),
                      (groups, cg * k, columns))
    w2 = xp.reshape(w, (groups, og, cg * k))
    y = xp.reshape(w2 @ cols, (o, columns))
    if b is not None:
        y += xp.reshape(b, (o, 1))  # y is fresh: add in place
    y = xp.permute_dims(xp.reshape(y, (o, *out, n)), to_outer)

    def back(dy: Any) -> tuple[Any, Any, Any]:
        if dy.dtype != w.dtype:
            dy = xp.astype(dy, w.dtype)
        dyt = xp.reshape(xp.permute_dims(dy, to_inner), (groups, og, columns))
        # (cols @ dyᵀ)ᵀ, not dy @ colsᵀ: BLAS is several times faster at the long inner
        # axis (the batch's positions) with the larger operand untransposed
        dwt = cols @ xp.permute_dims(dyt, (0, 2, 1))
        dw = xp.reshape(xp.permute_dims(dwt, (0, 2, 1)), tuple(w.shape))
        db = None if b is None else xp.sum(xp.reshape(dyt, (o, columns)), axis=1)
        dcols = xp.reshape(xp.permute_dims(w2, (0, 2, 1)) @ dyt, (c, k, *out, n))
        dxt = xp.zeros(tuple(xt.shape), dtype=w.dtype, device=array_api_compat.device(x))
        for i, index in enumerate(windows):
            dxt[index] += dcols[:, i, ...]
        dxt = dxt[inner((c,), (*spatial, n), pads_n)]
        return xp.permute_dims(dxt, to_outer), dw, db

    return y, back


