"""What the built-in layers' configuration says their Params must be, checked on load: a file
whose tensors agree with each other but not with the architecture (a Dense(3, 4) holding a
(3, 4) weight) is refused here instead of failing later inside a forward pass.

Each check returns ``{field: (shape, dtype) or None}`` for the layer's Param fields, or raises
ValueError for a configuration value of the wrong kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..devices import dtype_name
from ..errors import LoadError
from ..layers.activations import ACTIVATIONS
from ..layers.dense import Dense
from ..layers.embedding import Embedding
from ..layers.init import FLOAT_DTYPES
from ..layers.norm import LayerNorm
from ..params import Param
from ..tree import layer_name, walk

Spec = dict[str, "tuple[tuple[int, ...], str] | None"]


def _positive(node: Any, name: str) -> int:
    value = getattr(node, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not a positive int")
    return value


def _dtype(node: Any) -> str:
    if node.dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype={node.dtype!r} is not one of {FLOAT_DTYPES}")
    return node.dtype


def _dense(node: Any) -> Spec:
    n_in, n_out = _positive(node, "in_features"), _positive(node, "out_features")
    dtype = _dtype(node)
    if node.activation is not None and node.activation not in ACTIVATIONS:
        raise ValueError(f"activation={node.activation!r} is not one of {sorted(ACTIVATIONS)}")
    return {"weight": ((n_out, n_in), dtype),
            "bias": ((n_out,), dtype) if node.bias is not None else None}


def _embedding(node: Any) -> Spec:
    return {"weight": ((_positive(node, "num"), _positive(node, "dim")), _dtype(node))}


def _layer_norm(node: Any) -> Spec:
    dim, dtype = _positive(node, "dim"), _dtype(node)
    if isinstance(node.eps, bool) or not isinstance(node.eps, (int, float)) or not node.eps > 0:
        raise ValueError(f"eps={node.eps!r} is not a positive number")
    return {"weight": ((dim,), dtype), "bias": ((dim,), dtype)}


CHECKS: dict[type, Callable[[Any], Spec]] = {
    Dense: _dense, Embedding: _embedding, LayerNorm: _layer_norm}


def check_layers(model: Any) -> None:
    """LoadError naming the first built-in layer whose Params disagree with its configuration."""
    nodes = [("", model)] + [(path, node) for path, node in walk(model)
                             if not isinstance(node, Param)]
    for path, node in nodes:
        check = CHECKS.get(type(node))
        if check is None:
            continue
        where = f"architecture at {path or 'the root'}: {layer_name(node)}"
        try:
            spec = check(node)
        except (ValueError, TypeError, AttributeError) as exc:
            raise LoadError(f"{where}: {exc}") from None
        for field, expected in spec.items():
            param = getattr(node, field)
            if expected is None or not isinstance(param, Param):
                if (expected is None) != (param is None):
                    raise LoadError(f"{where}: field {field!r} holds {param!r}, expected "
                                    + ("no Param" if expected is None else "a Param"))
                continue
            actual = (param.shape, dtype_name(param.dtype))
            if actual != expected:
                raise LoadError(f"{where}: Param {field!r} is {actual[0]} {actual[1]} but the "
                                f"layer's configuration needs {expected[0]} {expected[1]}")
