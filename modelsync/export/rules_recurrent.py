"""Export rules of GRU, LSTM and LastStep: ONNX orders the gates differently from torch, so
the stacked weights are written as constants in ONNX's order, derived from the Params."""

from __future__ import annotations

import numpy as np

from ..layers.recurrent import GRU, LSTM, LastStep
from .emit import Emitter, Value, child_path, export_rule
from .graph import host_values


@export_rule(LastStep)
def _last_step(g: Emitter, layer: LastStep, x: Value, path: str) -> str:
    index = g.constant(np.asarray(-1, dtype=np.int64), path + ".last")
    return g.node("Gather", [x.name, index], path, axis=1)


def _gates(array: np.ndarray, hidden: int, order: list[int]) -> np.ndarray:
    """The gate blocks of a stacked (G·H, ...) array in ONNX's order."""
    blocks = [array[i * hidden:(i + 1) * hidden] for i in range(len(order))]
    return np.concatenate([blocks[i] for i in order], axis=0)


def _recurrent(g: Emitter, layer: GRU | LSTM, x: Value, path: str, op: str,
               order: list[int], **attributes: int) -> str:
    h = layer.hidden_size
    w = _gates(host_values(layer.weight_ih_l0.value), h, order)[None]
    r = _gates(host_values(layer.weight_hh_l0.value), h, order)[None]
    inputs = [g.node("Transpose", [x.name], path, perm=[1, 0, 2]),  # (T, N, in)
              g.constant(w, child_path(path, "W")), g.constant(r, child_path(path, "R"))]
    if layer.bias_ih_l0 is not None:
        bias = np.concatenate([_gates(host_values(layer.bias_ih_l0.value), h, order),
                               _gates(host_values(layer.bias_hh_l0.value), h, order)])
        inputs.append(g.constant(bias[None], child_path(path, "B")))
    y = g.node(op, inputs, path, hidden_size=h, **attributes)  # (T, 1, N, H)
    squeezed = g.node("Squeeze", [y, g.ints([1], path + ".direction")], path)
    return g.node("Transpose", [squeezed], path, perm=[1, 0, 2])


@export_rule(GRU)
def _gru(g: Emitter, layer: GRU, x: Value, path: str) -> str:
    # torch's gates r, z, n; ONNX's z, r, h, with torch's reset applied after the matmul
    return _recurrent(g, layer, x, path, "GRU", [1, 0, 2], linear_before_reset=1)


@export_rule(LSTM)
def _lstm(g: Emitter, layer: LSTM, x: Value, path: str) -> str:
    # torch's gates i, f, g, o; ONNX's i, o, f, c
    return _recurrent(g, layer, x, path, "LSTM", [0, 3, 1, 2])
