"""Optimizer state in a file: ``opt.state_dict()`` split into tensors (its arrays, named
``__optim__/<param path>/<name>``) and tagged JSON for everything else (type, hyperparameters,
step counts), and put back together for ``opt.load_state_dict``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..devices import HOST, device_of, is_array
from ..errors import ArgumentTypeError, LoadError, SaveError
from ..transfers import copy_to
from ..tree import described
from . import codec
from .modelfile import OPTIMIZER_PREFIX


def check_optimizer(optimizer: Any) -> None:
    """ArgumentTypeError unless ``optimizer`` has state_dict() and load_state_dict()."""
    if not (callable(getattr(optimizer, "state_dict", None))
            and callable(getattr(optimizer, "load_state_dict", None))):
        raise ArgumentTypeError(
            f"optimizer is {described(optimizer)}; expected an optimizer from "
            "modelsync.optim (something with state_dict() and load_state_dict()), e.g. "
            "optim.Adam(ms.params(model))"
            + (" (the order is ms.load_optimizer(path, optimizer))"
               if isinstance(optimizer, (str, os.PathLike)) else ""))


def encode_state(state: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``state`` as tagged JSON plus the host arrays it refers to, by tensor name."""
    tensors: dict[str, np.ndarray] = {}
    return _encode(state, (), tensors), tensors


def _encode(value: Any, keys: tuple[str, ...], tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict) and all(isinstance(k, str) and not k.startswith("__")
                                       for k in value):
        return {k: _encode(v, (*keys, k), tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(is_array(v) for v in value):
        items = [_encode(v, (*keys, str(i)), tensors) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if is_array(value):
        return {"__tensor__": _add_tensor(value, keys, tensors)}
    try:
        return codec.encode(value, lambda array: _add_tensor(array, keys, tensors))
    except codec.Unencodable as exc:
        raise SaveError(f"optimizer state at {'/'.join(keys) or 'the top'} holds {exc}, which "
                        "cannot be saved") from None


def _add_tensor(array: Any, keys: tuple[str, ...], tensors: dict[str, np.ndarray]) -> str:
    if device_of(array) != HOST:  # state_dict() promises host arrays; be forgiving anyway
        array = copy_to(array, HOST, reason="save", what="state")
    parts = keys[1:] if keys[:1] == ("state",) and len(keys) > 1 else keys
    base = OPTIMIZER_PREFIX + "/".join(parts)
    name, n = base, 1
    while name in tensors:
        n += 1
        name = f"{base}#{n}"
    tensors[name] = np.require(array, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
    return name


def decode_state(data: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The state_dict ``encode_state`` stored, with its tensors read back as host arrays."""

    def tensor(name: str, where: str) -> np.ndarray:
        if name not in arrays:
            raise LoadError(f"optimizer state at {where} refers to missing tensor {name!r}")
        return arrays[name]

    return codec.decode(data, "optimizer state", tensor)
