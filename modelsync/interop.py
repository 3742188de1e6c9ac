"""Weights out by name, and the name maps for PyTorch models (``ms.interop``).

The way in is `ms.load_into(model, state_dict, check="structure", names=...)`; the way out
is `state_dict`. Between a modelsync model and its PyTorch twin only the names differ, not
the layouts: ``Dense.weight`` is ``(out_features, in_features)`` like ``nn.Linear.weight``
(no transpose), ``LayerNorm`` has ``weight`` and ``bias`` of shape ``(dim,)`` like
``nn.LayerNorm`` (with its default ``elementwise_affine=True``), ``Embedding.weight`` is
``(num, dim)`` like ``nn.Embedding.weight``, and ``BatchNorm`` holds ``weight``, ``bias`` and
the Buffers ``running_mean``, ``running_var`` and ``num_batches_tracked`` (int64) like
``nn.BatchNorm1d``/``2d``. PyTorch is never imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .devices import HOST, device_of
from .errors import ArgumentError, ArgumentTypeError
from .io.names import check_names, keyed_places
from .layers import (
    GRU,
    LSTM,
    BatchNorm,
    Chain,
    Conv1d,
    Conv2d,
    Dense,
    Embedding,
    LayerNorm,
    MultiHeadAttention,
    RMSNorm,
)
from .params import Param
from .transfers import copy_to
from .tree import layer_name, require_model, walk

__all__ = ["state_dict", "torch_sequential_names"]

#: Layers whose Params (and Buffers) carry PyTorch's names for them (``weight``, ``bias``;
#: ``in_proj_weight`` and ``out_proj.weight`` of ``nn.MultiheadAttention``; ``weight_ih_l0``
#: ... of ``nn.GRU`` and ``nn.LSTM``; BatchNorm's ``running_mean``, ``running_var``,
#: ``num_batches_tracked``), in PyTorch's layouts.
_SAME_NAMES = (Dense, LayerNorm, Embedding, Conv1d, Conv2d, RMSNorm, MultiHeadAttention, GRU,
               LSTM, BatchNorm)


def state_dict(model: Any, *, names: Mapping[str, str] | Callable[[str], str] | None = None
               ) -> dict[str, np.ndarray]:
    """The model's values as host NumPy arrays keyed by parameter path (or by
    ``names[path]``), in the model's order: what ``torch.nn.Module.load_state_dict`` takes
    after ``torch.from_numpy`` (which shares the array, no copy).

    The arrays are fresh copies: changing one changes nothing in the model. A device
    model's values are copied to the host (counted as d2h, refused by
    ``transfer_guard("disallow")``). A tied Param is listed under every path it is used at,
    as PyTorch lists a tied weight under each module's name, as one array.
    """
    require_model(model)
    check_names(names)
    places = keyed_places(model, names)
    owner: dict[str, tuple[str, Param]] = {}
    for path, p, key in places:
        first = owner.setdefault(key, (path, p))
        if first[1] is not p:
            raise ArgumentError(
                f"names maps both {first[0]} and {path} to {key!r}, but they are two Params; "
                "a state dict holds one array per key")
    host: dict[int, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for _, p, key in places:
        if id(p) not in host:
            host[id(p)] = _host_copy(p)
        out[key] = host[id(p)]
    return out


def _host_copy(p: Param) -> np.ndarray:
    value = p.value  # a stale wrap-mode side pulls first
    if device_of(value) == HOST:
        return np.array(value, copy=True, order="C")
    return np.require(copy_to(value, HOST, reason="state_dict", what="param"),
                      requirements="C")  # (ascontiguousarray makes 0-d 1-d)


def torch_sequential_names(model: Any) -> dict[str, str]:
    """The names that map ``model``, a `layers.Chain`, to the PyTorch ``nn.Sequential`` it
    mirrors: ``{"layers.0.weight": "0.weight", "layers.1.weight": "2.weight", ...}``, for
    ``names=`` of `load_into` and `state_dict`.

    PyTorch numbers every module, parameterless ones too; modelsync's `Dense` carries its
    activation. So each `Dense` with an activation stands for two modules (``nn.Linear``
    then the activation), and every other layer for one: `Dense` without activation,
    `LayerNorm`, `RMSNorm`, `Embedding`, `MultiHeadAttention`, `GRU`, `LSTM` (and the
    convolutions and BatchNorm), an activation layer, `Dropout` or any other layer without
    Params (pools, `Flatten`). A nested `Chain` is a nested ``nn.Sequential``. A single such
    layer (an ``nn.Linear``, ...) maps to its own names. Any other layer holding Params is
    an ArgumentError: write its names yourself (a dict or a function).
    """
    require_model(model)
    if isinstance(model, _SAME_NAMES):
        return {path: path for path, node in walk(model) if isinstance(node, Param)}
    if not isinstance(model, Chain):
        raise ArgumentTypeError(
            f"model is a {layer_name(model)}; torch_sequential_names maps a layers.Chain (an "
            "nn.Sequential) or a single layer with a PyTorch twin ("
            f"{', '.join(t.__name__ for t in _SAME_NAMES)})")
    out: dict[str, str] = {}
    _sequential(model, "", "", out)
    return out


def _sequential(chain: Chain, ours: str, theirs: str, out: dict[str, str]) -> None:
    index = 0
    for i, child in enumerate(chain.layers):
        here, there = f"{ours}layers.{i}", f"{theirs}{index}"
        if isinstance(child, Chain):
            _sequential(child, here + ".", there + ".", out)
        else:
            found = [path for path, node in walk(child, here + ".") if isinstance(node, Param)]
            if found and not isinstance(child, _SAME_NAMES):
                raise ArgumentError(
                    f"{here} is a {layer_name(child)} with Params, which has no known PyTorch "
                    "twin (torch_sequential_names knows "
                    f"{', '.join(t.__name__ for t in _SAME_NAMES)}, Chain and layers without "
                    "Params); write this model's names yourself, as a dict or a function from "
                    "its paths to the torch keys")
            for path in found:
                out[path] = there + path[len(here):]
        index += 2 if isinstance(child, Dense) and child.activation is not None else 1
