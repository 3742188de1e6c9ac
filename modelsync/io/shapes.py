"""What the built-in layers' configuration says their Params must be, checked on load: a file
whose tensors agree with each other but not with the architecture (a Dense(3, 4) holding a
(3, 4) weight) is refused here instead of failing later inside a forward pass.

Each check returns ``{field: (shape, dtype) or None}`` for the layer's Param fields, read
from a configuration the class's own converters and validators have already accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..buffers import Buffer
from ..devices import dtype_name
from ..errors import LoadError
from ..layers.batchnorm import BatchNorm
from ..layers.dense import Dense
from ..layers.embedding import Embedding
from ..layers.norm import LayerNorm
from ..params import Param
from ..tree import layer_name, walk

Spec = dict[str, "tuple[tuple[int, ...], str] | None"]


# The configuration was already put through each class's own converters and validators when
# the layer was built (architecture.py), so these only read it; they check nothing of it.
def _dense(node: Dense) -> Spec:
    return {"weight": ((node.out_features, node.in_features), node.dtype),
            "bias": ((node.out_features,), node.dtype) if node.bias is not None else None}


def _embedding(node: Embedding) -> Spec:
    return {"weight": ((node.num, node.dim), node.dtype)}


def _layer_norm(node: LayerNorm) -> Spec:
    return {"weight": ((node.dim,), node.dtype), "bias": ((node.dim,), node.dtype)}


def _batch_norm(node: BatchNorm) -> Spec:
    c, dtype = (node.num_features,), node.dtype
    stats = node.track_running_stats
    return {"weight": (c, dtype) if node.affine else None,
            "bias": (c, dtype) if node.affine else None,
            "running_mean": (c, dtype) if stats else None,
            "running_var": (c, dtype) if stats else None,
            "num_batches_tracked": ((), "int64") if stats else None}


PARAM_SPECS: dict[type, Callable[[Any], Spec]] = {
    Dense: _dense, Embedding: _embedding, LayerNorm: _layer_norm}
PARAM_SPECS[BatchNorm] = _batch_norm  # (its Buffers are checked with its Params)


def check_layers(model: Any) -> None:
    """LoadError naming the first built-in layer whose Params disagree with its configuration."""
    nodes = [("", model)] + [(path, node) for path, node in walk(model)
                             if not isinstance(node, Param)]
    for path, node in nodes:
        check = PARAM_SPECS.get(type(node))
        if check is None:
            continue
        where = f"architecture at {path or 'the root'}: {layer_name(node)}"
        for field, expected in check(node).items():
            param = getattr(node, field)  # a Param or Buffer, or None
            if expected is None:
                if param is not None:
                    raise LoadError(f"{where}: {field!r} holds a {type(param).__name__} but "
                                    "the layer's configuration has none")
                continue
            kind = "Buffer" if isinstance(param, Buffer) else "Param"
            if param is None:
                raise LoadError(f"{where}: {field!r} is missing (None) but the layer's "
                                f"configuration needs {expected[0]} {expected[1]}")
            actual = (param.shape, dtype_name(param.dtype))
            if actual != expected:
                raise LoadError(f"{where}: {kind} {field!r} is {actual[0]} {actual[1]} but the "
                                f"layer's configuration needs {expected[0]} {expected[1]}")
