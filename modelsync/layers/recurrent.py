"""Recurrent layers: GRU and LSTM (one layer, batch first, torch's gates and Param names),
and LastStep, which keeps a sequence's last step (for a classifier in a Chain).

``layer(x)`` starts from a zero state; ``layer(x, h0)`` (GRU) or ``layer(x, (h0, c0))``
(LSTM) starts from the one given. The state is an argument, never stored in the layer, and
the output is the sequence of hidden states ``(N, T, H)`` (``y[:, -1]`` is the last one).
Inside a Chain a recurrent layer gets only ``x``, so it starts from zero.

``forward(x, ctx, state)`` returns ``(y, pullback)`` with ``pullback(dy) -> dx``, as every
layer; ``forward_state(x, ctx, state)`` returns a pullback giving ``(dx, dstate)``, for a
user layer that trains an initial state or chains recurrent layers through their states.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from ..devices import device_of, dtype_name, is_array
from ..errors import ArgumentError, ArgumentTypeError, DeviceMismatchError
from ..params import Param
from ..tree import require_model
from ..xp import namespace, zeros_on
from . import recurrent_kernels as kernels
from .base import (
    Context,
    accumulate,
    as_layer_dtype,
    check_features,
    check_input,
    check_rng,
    forward_pair,
    layer,
    on_model_device,
    param_field,
)
from .init import check_dtype, check_positive_int, generator, positive_int


def _call_with_state(model: Any, x: Any, state: Any = None, *, train: bool = False,
                     rng: np.random.Generator | None = None) -> Any:
    """``layer(x)`` or ``layer(x, state)``: run in evaluation mode (unless ``train``) and
    return the output sequence."""
    require_model(model)
    ctx = Context(train=train, rng=check_rng(rng))
    with on_model_device(model):
        if state is None:
            y, _ = forward_pair(model, x, ctx)
        else:
            y, _ = model.forward(x, ctx, state)
    return y


def _init_params(input_size: int, hidden_size: int, gates: int, bias: bool, dtype: str,
                 seed: int | None) -> list[Param | None]:
    """torch's initialisation: every Param U(-1/sqrt(H), 1/sqrt(H)), drawn in torch's order
    ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0``."""
    rng = generator(seed)
    bound = 1.0 / math.sqrt(hidden_size)
    shapes = [(gates * hidden_size, input_size), (gates * hidden_size, hidden_size)]
    names = ["weight_ih_l0", "weight_hh_l0"]
    if bias:
        shapes += [(gates * hidden_size,), (gates * hidden_size,)]
        names += ["bias_ih_l0", "bias_hh_l0"]
    made: list[Param | None] = [
        Param.owning(rng.uniform(-bound, bound, shape).astype(dtype), name=name)
        for shape, name in zip(shapes, names, strict=True)]
    return made if bias else [*made, None, None]


@attrs.define(eq=False, init=False)
class _Recurrent:
    """What GRU and LSTM share: their configuration and Params (torch's names), the
    constructor, the input checks, the time-major layout and the pullback that turns stacked
    gate gradients into Param gradients (one matmul each)."""

    kind: ClassVar[str] = ""
    gates: ClassVar[int] = 0
    input_size: int = attrs.field(converter=positive_int("input_size"))
    hidden_size: int = attrs.field(converter=positive_int("hidden_size"))
    dtype: str = attrs.field(converter=check_dtype)
    weight_ih_l0: Param = param_field()
    weight_hh_l0: Param = param_field()
    bias_ih_l0: Param | None = param_field(default=None, optional=True)
    bias_hh_l0: Param | None = param_field(default=None, optional=True)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 dtype: str = "float32", seed: int | None = None) -> None:
        _construct(self, input_size, hidden_size, bias, dtype, seed)

    def forward(self, x: Any, ctx: Context, state: Any = None) -> tuple[Any, Any]:
        y, pullback = self.forward_state(x, ctx, state)

        def dx_only(dy: Any) -> Any:
            return pullback(dy)[0]

        return y, dx_only

    def forward_state(self, x: Any, ctx: Context, state: Any = None) -> tuple[Any, Any]:
        """``(y, pullback)`` with ``pullback(dy) -> (dx, dstate)``: ``dstate`` is the gradient
        of the initial state given (GRU ``dh0``, LSTM ``(dh0, dc0)``), None when none was."""
        w_ih, w_hh = self.weight_ih_l0.value, self.weight_hh_l0.value
        b_ih = None if self.bias_ih_l0 is None else self.bias_ih_l0.value
        b_hh = None if self.bias_hh_l0 is None else self.bias_hh_l0.value
        x, in_dtype = self._check_x(x, w_ih, ctx)
        xp = namespace(x, w_ih)
        batch, steps = x.shape[0], x.shape[1]
        states = self._states(state, batch, w_ih.dtype, ctx)
        x_tm = xp.permute_dims(x, (1, 0, 2))
        if isinstance(x_tm, np.ndarray):
            x_tm = np.ascontiguousarray(x_tm)
        hs, cache = self._run(xp, x_tm, states, w_ih, w_hh, b_ih, b_hh)
        y = xp.permute_dims(hs[1:, ...], (1, 0, 2))
        if isinstance(y, np.ndarray):
            y = np.ascontiguousarray(y)
        size = self.hidden_size

        def pullback(dy: Any) -> tuple[Any, Any]:
            if dy.dtype != w_ih.dtype:
                dy = xp.astype(dy, w_ih.dtype)
            dy_tm = xp.permute_dims(xp.reshape(dy, (batch, steps, size)), (1, 0, 2))
            grads = self._back(xp, dy_tm, hs, cache, w_ih, w_hh)
            x2 = xp.reshape(x_tm, (steps * batch, self.input_size))
            h2 = xp.reshape(hs[:-1, ...], (steps * batch, size))
            accumulate(self.weight_ih_l0, xp.matrix_transpose(grads.dgi) @ x2)
            accumulate(self.weight_hh_l0, xp.matrix_transpose(grads.dgh) @ h2)
            if self.bias_ih_l0 is not None:
                accumulate(self.bias_ih_l0, xp.sum(grads.dgi, axis=0))
                accumulate(self.bias_hh_l0, xp.sum(grads.dgh, axis=0))
            dx = xp.permute_dims(grads.dx, (1, 0, 2))
            if isinstance(dx, np.ndarray):
                dx = np.ascontiguousarray(dx)
            if dx.dtype != in_dtype:
                dx = xp.astype(dx, in_dtype)
            return dx, (None if state is None else grads.dstate)

        return y, pullback

    # -- checks ----------------------------------------------------------------------------
    def _check_x(self, x: Any, weight: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, self.weight_ih_l0.device, ctx)
        where = ctx.path or self.kind
        if x.ndim != 3:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)} ({x.ndim} axes), expected "
                f"(N, T, input_size) = (N, T, {self.input_size}), batch first")
        check_features(x, self.input_size, ctx, self.kind, "input_size")
        if x.shape[1] < 1:
            raise ArgumentError(
                f"{where}: input has shape {tuple(x.shape)}, expected at least one step "
                "(T >= 1 on axis 1)")
        return as_layer_dtype(x, weight.dtype, ctx, self.kind), x.dtype

    def _check_state(self, argument: str, value: Any, batch: int, dtype: Any,
                     ctx: Context) -> Any:
        """``value`` as an initial state: an array of shape (N, H) on the layer's device,
        cast to the layer's dtype; errors name the path, the argument and what was expected."""
        where = ctx.path or self.kind
        expected = f"(N, hidden_size) = ({batch}, {self.hidden_size})"
        if not is_array(value):
            raise ArgumentTypeError(
                f"{where}: {argument} is a {type(value).__name__}; expected an array of shape "
                f"{expected}")
        dev = self.weight_ih_l0.device
        if device_of(value) != dev:
            raise DeviceMismatchError(
                f"{where}: {argument} is on {device_of(value)} but the layer's Params are on "
                f"{dev}; move it with ms.to_device({argument}, '{dev}')")
        if tuple(value.shape) != (batch, self.hidden_size):
            hint = (" (torch's (num_layers, N, H) state: pass state[0])"
                    if value.ndim == 3 and value.shape[0] == 1 else "")
            raise ArgumentError(
                f"{where}: {argument} has shape {tuple(value.shape)}, expected {expected} "
                f"(N from the input){hint}")
        xp = namespace(value)
        if value.dtype == dtype:
            return value
        if not xp.isdtype(value.dtype, "real floating"):
            raise ArgumentError(
                f"{where}: {argument} has dtype {dtype_name(value.dtype)}, expected a floating "
                f"dtype (the layer computes in {dtype_name(dtype)})")
        return xp.astype(value, dtype)

    def _zeros(self, batch: int, dtype: Any) -> Any:
        return zeros_on(self.weight_ih_l0.device, (batch, self.hidden_size), dtype)


def _construct(self: Any, input_size: int, hidden_size: int, bias: bool, dtype: str,
               seed: int | None) -> None:
    check_positive_int("input_size", input_size)
    check_positive_int("hidden_size", hidden_size)
    dtype = check_dtype(dtype)
    if not isinstance(bias, (bool, np.bool_)):
        raise ArgumentTypeError(f"bias={bias!r} is a {type(bias).__name__}; expected a bool")
    self.__attrs_init__(int(input_size), int(hidden_size), dtype, *_init_params(
        input_size, hidden_size, self.gates, bool(bias), dtype, seed))


@layer
@attrs.define(eq=False, init=False)
class GRU(_Recurrent):
    """torch's ``nn.GRU(input_size, hidden_size, batch_first=True)``, one layer:
    ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``, ``z = σ(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Params ``weight_ih_l0 (3H, in)``, ``weight_hh_l0 (3H, H)``, ``bias_ih_l0``,
    ``bias_hh_l0 (3H,)``, rows in the gate order r, z, n. ``gru(x, h0)``: h0 of shape (N, H)."""

    kind: ClassVar[str] = "GRU"
    gates: ClassVar[int] = 3
    __call__ = _call_with_state

    def _states(self, state: Any, batch: int, dtype: Any, ctx: Context) -> Any:
        if state is None:
            return self._zeros(batch, dtype)
        return self._check_state("h0", state, batch, dtype, ctx)

    def _run(self, xp: Any, x: Any, h0: Any, *weights: Any) -> tuple[Any, Any]:
        return kernels.gru_forward(xp, x, h0, *weights)

    def _back(self, xp: Any, dy: Any, hs: Any, cache: Any, w_ih: Any, w_hh: Any) -> Any:
        return kernels.gru_backward(xp, dy, hs, cache, w_ih, w_hh)


@layer
@attrs.define(eq=False, init=False)
class LSTM(_Recurrent):
    """torch's ``nn.LSTM(input_size, hidden_size, batch_first=True)``, one layer: gates
    ``i, f, g, o = σ, σ, tanh, σ (W_ih x + b_ih + W_hh h + b_hh)``, ``c' = f * c + i * g``,
    ``h' = o * tanh(c')``. Params ``weight_ih_l0 (4H, in)``, ``weight_hh_l0 (4H, H)``,
    ``bias_ih_l0``, ``bias_hh_l0 (4H,)``, rows in the gate order i, f, g, o.
    ``lstm(x, (h0, c0))``: both of shape (N, H). The output is the hidden states only."""

    kind: ClassVar[str] = "LSTM"
    gates: ClassVar[int] = 4
    __call__ = _call_with_state

    def _states(self, state: Any, batch: int, dtype: Any, ctx: Context) -> Any:
        if state is None:
            zeros = self._zeros(batch, dtype)
            return zeros, zeros
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            where = ctx.path or self.kind
            raise ArgumentTypeError(
                f"{where}: the state is a {type(state).__name__}"
                f"{f' of {len(state)}' if isinstance(state, (tuple, list)) else ''}; expected "
                f"a tuple (h0, c0) of arrays of shape (N, hidden_size)")
        return (self._check_state("h0", state[0], batch, dtype, ctx),
                self._check_state("c0", state[1], batch, dtype, ctx))

    def _run(self, xp: Any, x: Any, state: Any, *weights: Any) -> tuple[Any, Any]:
        return kernels.lstm_forward(xp, x, state[0], state[1], *weights)

    def _back(self, xp: Any, dy: Any, hs: Any, cache: Any, w_ih: Any, w_hh: Any) -> Any:
        return kernels.lstm_backward(xp, dy, hs, cache, w_ih, w_hh)


@layer
@attrs.define(eq=False)
class LastStep:
    """``y = x[:, -1]``: the last step of a batch-first sequence ``(N, T, ...)``, as
    ``Chain(GRU(...), LastStep(), Dense(...))`` classifies sequences by their final state.
    No Params; the gradient goes to the last step only."""

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        check_input(x, None, ctx)
        if x.ndim < 2 or x.shape[1] < 1:
            raise ArgumentError(
                f"{ctx.path or 'LastStep'}: input has shape {tuple(x.shape)}, expected "
                "(N, T, ...) with T >= 1 (batch first)")
        xp = namespace(x)
        shape, dtype = tuple(x.shape), x.dtype

        def pullback(dy: Any) -> Any:
            rest = zeros_on(device_of(dy), (shape[0], shape[1] - 1, *shape[2:]), dtype)
            return xp.concat([rest, xp.expand_dims(xp.astype(dy, dtype), axis=1)], axis=1)

        return x[:, -1, ...], pullback
