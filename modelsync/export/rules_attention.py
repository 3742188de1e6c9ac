"""Export rules of the transformer layers: RMSNorm, MultiHeadAttention (causal too),
PositionalEmbedding and Unembed (the tied table stored once)."""

from __future__ import annotations

import math

import numpy as np

from ..layers.attention import MultiHeadAttention
from ..layers.positional import PositionalEmbedding
from ..layers.rmsnorm import RMSNorm
from ..layers.unembed import Unembed
from .emit import Emitter, Value, child_path, export_rule
from .rules import linear


@export_rule(RMSNorm)
def _rms_norm(g: Emitter, layer: RMSNorm, x: Value, path: str) -> str:
    mean_square = g.node("ReduceMean", [g.node("Mul", [x.name, x.name], path)], path,
                         axes=[-1], keepdims=1)
    eps = g.scalar(layer.eps, layer.dtype, path + ".eps")
    rms = g.node("Sqrt", [g.node("Add", [mean_square, eps], path)], path)
    return g.node("Mul", [g.node("Div", [x.name, rms], path),
                          g.param(layer.weight, child_path(path, "weight"))], path)


@export_rule(PositionalEmbedding)
def _positional(g: Emitter, layer: PositionalEmbedding, x: Value, path: str) -> str:
    steps = x.shape[1]
    table = g.node("Slice", [g.param(layer.weight, child_path(path, "weight")),
                             g.ints([0], path + ".start"), g.ints([steps], path + ".end"),
                             g.ints([0], path + ".axes")], path)
    return g.node("Add", [x.name, table], path)


@export_rule(Unembed)
def _unembed(g: Emitter, layer: Unembed, x: Value, path: str) -> str:
    table = g.param(layer.embedding.weight, child_path(path, "embedding.weight"))
    return g.node("MatMul", [x.name, g.node("Transpose", [table], path, perm=[1, 0])], path)


@export_rule(MultiHeadAttention)
def _attention(g: Emitter, layer: MultiHeadAttention, x: Value, path: str) -> str:
    steps, heads = x.shape[1], layer.num_heads
    width = layer.dim // heads
    qkv = linear(g, x.name, layer.in_proj_weight, layer.in_proj_bias, path)
    split = g.node("Split", [qkv], path, outputs=3, axis=-1)
    per_head = g.ints([0, 0, heads, width], path + ".heads")
    q, k, v = (g.node("Transpose", [g.node("Reshape", [part, per_head], path)], path,
                      perm=[0, 2, 1, 3]) for part in split)  # (N, heads, T, width)
    scale = g.scalar(1.0 / math.sqrt(width), layer.dtype, path + ".scale")
    scores = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], path,
                                                         perm=[0, 1, 3, 2])], path), scale],
                    path)
    if layer.causal:
        future = np.triu(np.full((steps, steps), -np.inf, dtype=layer.dtype), k=1)
        scores = g.node("Add", [scores, g.constant(future, path + ".causal_mask")], path)
    weights = g.node("Softmax", [scores], path, axis=-1)
    merged = g.node("Reshape", [
        g.node("Transpose", [g.node("MatMul", [weights, v], path)], path, perm=[0, 2, 1, 3]),
        g.ints([0, 0, layer.dim], path + ".merge")], path)
    out = layer.out_proj
    return linear(g, merged, out.weight, out.bias, child_path(path, "out_proj"))
