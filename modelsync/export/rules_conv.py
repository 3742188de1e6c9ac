"""Export rules of the convolution, pooling and shape layers."""

from __future__ import annotations

from ..layers.conv import Conv1d, Conv2d
from ..layers.pool import AvgPool2d, GlobalAvgPool, MaxPool2d
from ..layers.shape import Flatten, Reshape
from ..layers.windows import pad_pairs
from .emit import Emitter, Value, child_path, export_rule


def _pads(pairs: tuple[tuple[int, int], ...]) -> list[int]:
    """ONNX's pads: every axis's start, then every axis's end."""
    return [lo for lo, _ in pairs] + [hi for _, hi in pairs]


def _conv(g: Emitter, layer: Conv1d | Conv2d, x: Value, path: str) -> str:
    inputs = [x.name, g.param(layer.weight, child_path(path, "weight"))]
    if layer.bias is not None:
        inputs.append(g.param(layer.bias, child_path(path, "bias")))
    pairs = pad_pairs(layer.padding, layer.kernel_size, layer.dilation)
    return g.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), dilations=list(layer.dilation),
                  pads=_pads(pairs), group=layer.groups)


export_rule(Conv1d)(_conv)
export_rule(Conv2d)(_conv)


@export_rule(MaxPool2d)
def _max_pool(g: Emitter, layer: MaxPool2d, x: Value, path: str) -> str:
    return g.node("MaxPool", [x.name], path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), pads=_pads(tuple((p, p) for p in layer.padding)))


@export_rule(AvgPool2d)
def _avg_pool(g: Emitter, layer: AvgPool2d, x: Value, path: str) -> str:
    return g.node("AveragePool", [x.name], path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), pads=_pads(tuple((p, p) for p in layer.padding)),
                  count_include_pad=1)


@export_rule(GlobalAvgPool)
def _global_avg_pool(g: Emitter, layer: GlobalAvgPool, x: Value, path: str) -> str:
    return g.node("ReduceMean", [x.name], path, axes=list(range(2, len(x.shape))), keepdims=0)


@export_rule(Flatten)
def _flatten(g: Emitter, layer: Flatten, x: Value, path: str) -> str:
    start = layer.start_dim + len(x.shape) if layer.start_dim < 0 else layer.start_dim
    if start == 1:
        return g.node("Flatten", [x.name], path, axis=1)
    return g.node("Reshape", [x.name, g.ints([0] * start + [-1], path + ".shape")], path)


@export_rule(Reshape)
def _reshape(g: Emitter, layer: Reshape, x: Value, path: str) -> str:
    return g.node("Reshape", [x.name, g.ints([0, *layer.shape], path + ".shape")], path)
