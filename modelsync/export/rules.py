"""The export rules of the built-in layers (evaluation mode: Dropout is the identity,
BatchNorm reads its running statistics)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers.activations import Activation
from ..layers.batchnorm import BatchNorm
from ..layers.chain import Chain
from ..layers.combinators import Parallel, SkipConnection
from ..layers.dense import Dense
from ..layers.dropout import Dropout
from ..layers.embedding import Embedding
from ..layers.norm import LayerNorm
from .emit import Emitter, Value, child_path, export_rule

#: gelu is the tanh approximation (as modelsync computes it): sqrt(2/pi)
_GELU_C = 0.7978845608028654


def activation(g: Emitter, name: str | None, x: str, path: str, dtype: Any) -> str:
    """The nodes of one named activation (modelsync.layers.activations) applied to ``x``,
    whose floating dtype is ``dtype``."""
    if name is None:
        return x
    if name == "relu":
        return g.node("Relu", [x], path)
    if name == "tanh":
        return g.node("Tanh", [x], path)
    if name == "sigmoid":
        return g.node("Sigmoid", [x], path)
    if name == "softmax":
        return g.node("Softmax", [x], path, axis=-1)
    if name == "gelu":  # 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
        cube = g.node("Mul", [g.node("Mul", [x, x], path), x], path)
        inner = g.node("Add", [x, g.node("Mul", [cube, g.scalar(0.044715, dtype, path)], path)],
                       path)
        t = g.node("Tanh", [g.node("Mul", [inner, g.scalar(_GELU_C, dtype, path)], path)], path)
        half_x = g.node("Mul", [x, g.scalar(0.5, dtype, path)], path)
        return g.node("Add", [half_x, g.node("Mul", [half_x, t], path)], path)
    raise AssertionError(f"unknown activation {name!r}")  # pragma: no cover (validated)


def linear(g: Emitter, x: str, weight: Any, bias: Any, path: str) -> str:
    """``x @ weight.T + bias`` for inputs of any rank (MatMul, not Gemm, which takes 2-D)."""
    w = g.param(weight, child_path(path, "weight"))
    y = g.node("MatMul", [x, g.node("Transpose", [w], path, perm=[1, 0])], path)
    if bias is not None:
        y = g.node("Add", [y, g.param(bias, child_path(path, "bias"))], path)
    return y


@export_rule(Chain)
def _chain(g: Emitter, layer: Chain, x: Value, path: str) -> Value:
    for i, child in enumerate(layer.layers):
        x = g.emit(child, x, child_path(path, f"layers.{i}"))
    return x


@export_rule(Dense)
def _dense(g: Emitter, layer: Dense, x: Value, path: str) -> str:
    return activation(g, layer.activation, linear(g, x.name, layer.weight, layer.bias, path),
                      path, layer.dtype)


@export_rule(Activation)
def _activation(g: Emitter, layer: Activation, x: Value, path: str) -> str:
    return activation(g, layer.name, x.name, path, x.example.dtype)


@export_rule(Dropout)
def _dropout(g: Emitter, layer: Dropout, x: Value, path: str) -> str:
    return g.node("Identity", [x.name], path)


@export_rule(Embedding)
def _embedding(g: Emitter, layer: Embedding, x: Value, path: str) -> str:
    return g.node("Gather", [g.param(layer.weight, child_path(path, "weight")), x.name], path,
                  axis=0)


@export_rule(LayerNorm)
def _layer_norm(g: Emitter, layer: LayerNorm, x: Value, path: str) -> str:
    return g.node("LayerNormalization", [
        x.name, g.param(layer.weight, child_path(path, "weight")),
        g.param(layer.bias, child_path(path, "bias"))], path, axis=-1, epsilon=layer.eps)


def join(g: Emitter, connection: str, names: list[str], path: str) -> str:
    """A combinator's connection over its branch outputs (modelsync.layers.combinators)."""
    if connection in ("add", "mul"):
        op = "Add" if connection == "add" else "Mul"
        y = names[0]
        for other in names[1:]:
            y = g.node(op, [y, other], path)
        return y
    return g.node("Concat", names, path, axis=-1 if connection == "concat" else 1)


@export_rule(SkipConnection)
def _skip(g: Emitter, layer: SkipConnection, x: Value, path: str) -> str:
    inner = g.emit(layer.layer, x, child_path(path, "layer"))
    return join(g, layer.connection, [inner.name, x.name], path)


@export_rule(Parallel)
def _parallel(g: Emitter, layer: Parallel, x: Value, path: str) -> str:
    outs = [g.emit(branch, x, child_path(path, f"layers.{i}")).name
            for i, branch in enumerate(layer.layers)]
    return join(g, layer.connection, outs, path)


@export_rule(BatchNorm)
def _batch_norm(g: Emitter, layer: BatchNorm, x: Value, path: str) -> str:
    """Evaluation mode: ONNX BatchNormalization over the running statistics (the Buffers,
    stored as initializers like Params); without them, the batch's own statistics."""
    c, rank = layer.num_features, len(x.shape)
    dtype = np.dtype(layer.dtype)
    scale = (g.param(layer.weight, child_path(path, "weight")) if layer.weight is not None
             else g.constant(np.ones(c, dtype), f"{path}.scale"))
    shift = (g.param(layer.bias, child_path(path, "bias")) if layer.bias is not None
             else g.constant(np.zeros(c, dtype), f"{path}.shift"))
    if layer.track_running_stats:
        return g.node("BatchNormalization", [
            x.name, scale, shift, g.param(layer.running_mean, child_path(path, "running_mean")),
            g.param(layer.running_var, child_path(path, "running_var"))], path,
            epsilon=layer.eps)
    axes = [0, *range(2, rank)]
    mean = g.node("ReduceMean", [x.name], path, axes=axes, keepdims=1)
    centred = g.node("Sub", [x.name, mean], path)
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred], path)], path, axes=axes,
                 keepdims=1)
    eps = g.scalar(layer.eps, dtype, f"{path}.eps")
    y = g.node("Div", [centred, g.node("Sqrt", [g.node("Add", [var, eps], path)], path)], path)
    shape = g.ints([1, c] + [1] * (rank - 2), f"{path}.shape")
    y = g.node("Mul", [y, g.node("Reshape", [scale, shape], path)], path)
    return g.node("Add", [y, g.node("Reshape", [shift, shape], path)], path)
