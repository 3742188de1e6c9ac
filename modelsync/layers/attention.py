"""MultiHeadAttention: scaled dot-product self-attention over ``(N, T, dim)`` sequences, as
PyTorch's ``nn.MultiheadAttention(dim, num_heads, batch_first=True)`` computes it.

The attention core is written once against the array API, on 4-D ``(N, heads, T,
head_dim)`` arrays (batched ``matmul``, a softmax shifted by its row maximum so it cannot
overflow). On the host a NumPy fast path does the same arithmetic with ``np.matmul``
writing straight into the layouts the projections need (no transposed copies) and in-place
updates of fresh temporaries.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from ..devices import device_of, dtype_name, is_array
from ..errors import ArgumentError, ArgumentTypeError, DeviceMismatchError
from ..params import Param
from ..tree import require_model
from ..xp import namespace
from .base import (
    Context,
    accumulate,
    as_layer_dtype,
    check_input,
    check_rng,
    layer,
    on_model_device,
    param_field,
)
from .dense import Dense
from .init import bool_arg, check_dtype, check_positive_int, generator, positive_int


def _divides_dim(node: Any, field: Any, heads: int) -> None:
    """Validator of ``num_heads`` (run at construction, on assignment and by ms.load)."""
    if node.dim % heads:
        raise ArgumentError(
            f"num_heads={heads} does not divide dim={node.dim}; each head gets dim / num_heads "
            f"features, so expected a divisor of {node.dim}")


def _holds_dense(node: Any, field: Any, value: Any) -> None:
    if not isinstance(value, Dense) or (value.in_features, value.out_features, value.activation
                                        ) != (node.dim, node.dim, None):
        found = (f"Dense({value.in_features}, {value.out_features}, {value.activation!r})"
                 if isinstance(value, Dense) else f"a {type(value).__name__}")
        raise ArgumentTypeError(
            f"MultiHeadAttention.out_proj holds {found}; expected a layers.Dense(dim, dim) "
            f"without activation (dim={node.dim})")


@layer
@attrs.define(eq=False, init=False)
class MultiHeadAttention:
    """Self-attention: ``(N, T, dim) -> (N, T, dim)``, ``num_heads`` heads of
    ``dim // num_heads`` features each. Params as PyTorch names them: ``in_proj_weight``
    ``(3·dim, dim)`` and ``in_proj_bias`` ``(3·dim,)`` (query, key and value rows, in that
    order; None without bias) and the sublayer ``out_proj``, a ``Dense(dim, dim)`` (Params
    ``out_proj.weight``, ``out_proj.bias``). Initialised as torch does: ``in_proj_weight``
    Xavier-uniform, ``out_proj.weight`` like a Linear's, both biases zero.

    ``causal=True`` lets position ``t`` attend to positions ``<= t`` only (torch's
    ``is_causal``, an upper-triangular ``-inf`` mask). Called directly, ``layer(x,
    mask=m)`` also takes a boolean ``m`` of shape ``(T, T)`` or ``(N, T, T)`` where True
    means *may not attend* (torch's boolean ``attn_mask``), combined with ``causal``; a row
    with every key masked gives NaN, as in torch.

    The layer calls its ``out_proj`` sublayer as any layer holding others does: through
    ``out_proj.forward(o, ctx.child("out_proj"))``, which returns the sublayer's output and
    its pullback (so the Dense adds its own Params' gradients, and errors name
    ``...out_proj``).
    """

    dim: int = attrs.field(converter=positive_int("dim"))
    num_heads: int = attrs.field(converter=positive_int("num_heads"), validator=_divides_dim)
    causal: bool = attrs.field(converter=bool_arg("causal"))
    dtype: str = attrs.field(converter=check_dtype)
    in_proj_weight: Param = param_field()
    in_proj_bias: Param | None = param_field(optional=True)
    out_proj: Dense = attrs.field(validator=_holds_dense)

    def __init__(self, dim: int, num_heads: int, *, bias: bool = True, causal: bool = False,
                 dtype: str = "float32", seed: int | None = None) -> None:
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        bias = bool_arg("bias")(bias)
        dtype = check_dtype(dtype)
        rng = generator(seed)
        bound = math.sqrt(6.0 / (dim + 3 * dim))  # xavier_uniform_ of a (3·dim, dim) matrix
        weight = rng.uniform(-bound, bound, (3 * dim, dim)).astype(dtype)
        out_proj = Dense(dim, dim, bias=bias, dtype=dtype,
                         seed=int(rng.integers(0, 2**63 - 1)))
        if bias:
            out_proj.bias = Param.owning(np.zeros(dim, dtype=dtype), name="bias")
        self.__attrs_init__(
            int(dim), int(num_heads), causal, dtype, Param.owning(weight, name="in_proj_weight"),
            Param.owning(np.zeros(3 * dim, dtype=dtype), name="in_proj_bias") if bias else None,
            out_proj)

    def __call__(self, x: Any, mask: Any = None, *, train: bool = False,
                 rng: np.random.Generator | None = None) -> Any:
        """Run the layer on ``x`` (evaluation mode unless ``train``), with an optional
        boolean attention ``mask`` (True: may not attend), and return its output."""
        require_model(self)
        with on_model_device(self):
            y, _ = self.forward(x, Context(train=train, rng=check_rng(rng)), mask=mask)
        return y

    def forward(self, x: Any, ctx: Context, mask: Any = None) -> tuple[Any, Any]:
        weight = self.in_proj_weight.value
        bias = None if self.in_proj_bias is None else self.in_proj_bias.value
        check_input(x, self.in_proj_weight.device, ctx)
        where = ctx.path or "MultiHeadAttention"
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)}, expected (N, T, dim={self.dim}) "
                "(batch first)")
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, "MultiHeadAttention")
        n, t, d = (int(s) for s in x.shape)
        heads = self.num_heads
        xp = namespace(x, weight)
        add_mask = self._additive_mask(xp, mask, n, t, x, where)
        # core(xp, x2, weight, bias, shape, add_mask) -> (o2, back(do2) -> (dx2, dw, db))
        core = _numpy_core if isinstance(weight, np.ndarray) else _array_api_core
        o2, core_back = core(xp, xp.reshape(x, (n * t, d)), weight, bias, (n, t, heads, d // heads),
                             add_mask)
        y, out_back = self.out_proj.forward(xp.reshape(o2, (n, t, d)), ctx.child("out_proj"))

        def pullback(dy: Any) -> Any:
            do = out_back(dy)
            dx2, dweight, dbias = core_back(xp.reshape(do, (n * t, d)))
            accumulate(self.in_proj_weight, dweight)
            accumulate(self.in_proj_bias, dbias)
            dx = xp.reshape(dx2, (n, t, d))
            return dx if dx.dtype == in_dtype else xp.astype(dx, in_dtype)

        return y, pullback

    def _additive_mask(self, xp: Any, mask: Any, n: int, t: int, x: Any, where: str) -> Any:
        """The mask as ``0``/``-inf`` entries to add to the scores, ``(T, T)`` or
        ``(N, 1, T, T)``, on ``x``'s device; None when nothing is masked."""
        blocked = None
        if mask is not None:
            if not is_array(mask):
                raise ArgumentTypeError(
                    f"{where}: mask is a {type(mask).__name__}; expected a bool array of shape "
                    f"(T, T)=({t}, {t}) or (N, T, T)=({n}, {t}, {t})")
            if device_of(mask) != device_of(x):
                raise DeviceMismatchError(
                    f"{where}: mask is on {device_of(mask)} but the input is on "
                    f"{device_of(x)}; move it with ms.to_device(mask, '{device_of(x)}')")
            if mask.dtype != xp.bool or tuple(mask.shape) not in ((t, t), (n, t, t)):
                raise ArgumentError(
                    f"{where}: mask has shape {tuple(mask.shape)} and dtype "
                    f"{dtype_name(mask.dtype)}, expected a bool array of shape (T, T)=({t}, "
                    f"{t}) or (N, T, T)=({n}, {t}, {t}) (True: may not attend)")
            blocked = mask if mask.ndim == 2 else xp.reshape(mask, (n, 1, t, t))
        if self.causal:
            future = xp.arange(t, device=x.device)
            future = xp.reshape(future, (1, t)) > xp.reshape(future, (t, 1))
            blocked = future if blocked is None else xp.logical_or(blocked, future)
        if blocked is None:
            return None
        return xp.where(blocked, xp.full((), -math.inf, dtype=x.dtype, device=x.device),
                        xp.zeros((), dtype=x.dtype, device=x.device))


def _array_api_core(xp: Any, x2: Any, weight: Any, bias: Any, shape: tuple[int, ...],
                    add_mask: Any) -> tuple[Any, Any]:
    """Attention on any array-API namespace: ``x2`` (N·T, dim) -> the heads' outputs
    concatenated, (N·T, dim), and the pullback to (dx2, dweight, dbias)."""
    n, t, heads, hd = shape
    d = heads * hd
    scale = 1.0 / math.sqrt(hd)
    qkv = x2 @ xp.matrix_transpose(weight)
    if bias is not None:
        qkv += bias  # qkv is fresh: add in place
    qkv = xp.permute_dims(xp.reshape(qkv, (n, t, 3, heads, hd)), (2, 0, 3, 1, 4))
    q = qkv[0, ...] * scale  # (N, heads, T, hd), the scale folded into the queries
    k, v = qkv[1, ...], qkv[2, ...]
    p = xp.matmul(q, xp.matrix_transpose(k))
    if add_mask is not None:
        p += add_mask
    p -= xp.max(p, axis=-1, keepdims=True)
    p = xp.exp(p)
    p /= xp.sum(p, axis=-1, keepdims=True)
    o = xp.matmul(p, v)
    o2 = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (n * t, d))

    def back(do2: Any) -> tuple[Any, Any, Any]:
        do = xp.permute_dims(xp.reshape(do2, (n, t, heads, hd)), (0, 2, 1, 3))
        dv = xp.matmul(xp.matrix_transpose(p), do)
        ds = xp.matmul(do, xp.matrix_transpose(v))
        # the softmax's pullback p * (ds - sum_j ds_ij p_ij), that sum being do_i · o_i
        ds -= xp.sum(do * o, axis=-1, keepdims=True)
        ds *= p
        dq = xp.matmul(ds, k)
        dq *= scale
        dk = xp.matmul(xp.matrix_transpose(ds), q)
        dqkv = xp.permute_dims(xp.stack([dq, dk, dv], axis=0), (1, 3, 0, 2, 4))
        dqkv = xp.reshape(dqkv, (n * t, 3 * d))
        dweight = xp.matrix_transpose(dqkv) @ x2
        dbias = None if bias is None else xp.sum(dqkv, axis=0)
        return dqkv @ weight, dweight, dbias

    return o2, back


def _numpy_core(xp: Any, x2: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                shape: tuple[int, ...], add_mask: np.ndarray | None) -> tuple[Any, Any]:
    """`_array_api_core` for NumPy: the same arithmetic, each batched product written by
    ``np.matmul`` straight into (a transposed view of) the buffer its consumer reads, so
    no head is copied out or back; every update is in place on a fresh temporary."""
    n, t, heads, hd = shape
    d = heads * hd
    scale = 1.0 / math.sqrt(hd)
    qkv = x2 @ weight.T
    if bias is not None:
        qkv += bias
    qkv5 = qkv.reshape(n, t, 3, heads, hd)
    heads_of = (0, 2, 1, 3)  # (N, T, heads, hd) <-> (N, heads, T, hd)
    q = qkv5[:, :, 0].transpose(heads_of)
    q *= scale  # (in place: qkv is this layer's own temporary)
    k = qkv5[:, :, 1].transpose(heads_of)
    v = qkv5[:, :, 2].transpose(heads_of)
    p = np.matmul(q, k.transpose(0, 1, 3, 2))
    if add_mask is not None:
        p += add_mask
    p -= p.max(axis=-1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.empty((n, t, heads, hd), dtype=x2.dtype)
    np.matmul(p, v, out=o.transpose(heads_of))

    def back(do2: np.ndarray) -> tuple[Any, Any, Any]:
        do = do2.reshape(n, t, heads, hd).transpose(heads_of)
        dqkv = np.empty((n, t, 3, heads, hd), dtype=x2.dtype)
        np.matmul(p.transpose(0, 1, 3, 2), do, out=dqkv[:, :, 2].transpose(heads_of))
        ds = np.matmul(do, v.transpose(0, 1, 3, 2))
        # The softmax's pullback p * (ds - sum_j ds_ij p_ij), that sum being do_i · o_i
        # (as FlashAttention computes it): a (T, head_dim) product, not a (T, T) one.
        row = (do2 * o.reshape(n * t, d)).reshape(n, t, heads, hd).sum(axis=-1)
        ds -= row.transpose(0, 2, 1)[..., None]
        ds *= p
        dq = dqkv[:, :, 0].transpose(heads_of)
        np.matmul(ds, k, out=dq)
        dq *= scale
        np.matmul(ds.transpose(0, 1, 3, 2), q, out=dqkv[:, :, 1].transpose(heads_of))
        dqkv2 = dqkv.reshape(n * t, 3 * d)
        dbias = None if bias is None else dqkv2.sum(axis=0)
        return dqkv2 @ weight, dqkv2.T @ x2, dbias

    return o.reshape(n * t, d), back
