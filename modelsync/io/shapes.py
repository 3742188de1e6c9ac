"""What the built-in layers' configuration says their Params must be, checked on load: a file
whose tensors agree with each other but not with the architecture (a Dense(3, 4) holding a
(3, 4) weight) is refused here instead of failing later inside a forward pass.

Each check returns ``{field: (shape, dtype) or None}`` for the layer's Param fields, read
from a configuration the class's own converters and validators have already accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..devices import dtype_name
from ..errors import LoadError
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


PARAM_SPECS: dict[type, Callable[[Any], Spec]] = {
    Dense: _dense, Embedding: _embedding, LayerNorm: _layer_norm}


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
            param = getattr(node, field)  # a Param, or None where expected is None: the
            if expected is None:          # class's param_field validators saw to that
                continue
            actual = (param.shape, dtype_name(param.dtype))
            if actual != expected:
                raise LoadError(f"{where}: Param {field!r} is {actual[0]} {actual[1]} but the "
                                f"layer's configuration needs {expected[0]} {expected[1]}")
