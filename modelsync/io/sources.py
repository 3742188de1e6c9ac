"""Where `load_into` reads values from: a safetensors file or a mapping of arrays.

A mapping's values may be modelsync's own arrays (NumPy, CuPy, sim), PyTorch tensors, or
anything else with ``__dlpack__`` or ``__array__`` (JAX, TensorFlow, ...). PyTorch is never
imported here unless a value already is a torch tensor, so it stays out of the run-time
dependencies. Values are converted lazily, one key at a time, so keys that nothing uses
(``strict=False``) are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from ..devices import is_array
from ..errors import ArgumentTypeError


@attrs.frozen
class Source:
    """The keys a source offers and how to get each one's array.

    ``where`` names it in messages ("the source", or the file's path), ``side`` in a shape
    comparison ("file", "source"), ``noun`` what a key holds ("tensor", "key"). ``owned``
    says the arrays are fresh copies that may be written into a host Param as they are.
    """

    keys: list[Any]
    fetch: Callable[[Any], Any]
    where: str
    side: str
    noun: str
    owned: bool


def file_source(arrays: dict[str, np.ndarray], names: list[str], path: str) -> Source:
    """A file's tensors ``names`` (already read and validated into fresh host arrays)."""
    return Source(list(names), arrays.__getitem__, path, "file", "tensor", owned=True)


def mapping_source(mapping: Mapping[Any, Any]) -> Source:
    """A state dict in memory; each value is converted on first use."""
    keys = list(mapping)
    converted: dict[Any, Any] = {}

    def fetch(key: Any) -> Any:
        if key not in converted:
            converted[key] = as_array(mapping[key], f"source[{key!r}]")
        return converted[key]

    return Source(keys, fetch, "the source", "source", "key", owned=False)


def as_array(value: Any, what: str) -> Any:
    """``value`` as an array modelsync can copy from: its own arrays as they are, a torch
    tensor detached and on the host, anything else through DLPack or ``__array__`` (on the
    host). ArgumentTypeError naming ``what`` for anything else."""
    if is_array(value):
        return value
    if _is_torch_tensor(value):
        return _from_torch(value, what)
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            if not hasattr(value, "__array__"):
                raise ArgumentTypeError(
                    f"{what}: a {type(value).__name__} whose data NumPy cannot import through "
                    f"DLPack ({exc}); move it to the host as a NumPy array first") from exc
    if hasattr(value, "__array__"):
        try:
            array = np.asarray(value)
        except Exception as exc:  # foreign __array__ methods raise what they like
            raise ArgumentTypeError(
                f"{what}: a {type(value).__name__} that NumPy cannot convert: {exc}") from exc
        if array.dtype.kind not in "biuf":
            raise ArgumentTypeError(f"{what}: a {type(value).__name__} of dtype {array.dtype}; "
                                    "expected numbers")
        return array
    raise ArgumentTypeError(
        f"{what} is a {type(value).__name__}; expected an array: a NumPy array, a torch "
        "tensor, or anything with __dlpack__ or __array__")


def _is_torch_tensor(value: Any) -> bool:
    module = type(value).__module__
    if module != "torch" and not module.startswith("torch."):
        return False
    import torch  # already imported: the value is one of its tensors

    return isinstance(value, torch.Tensor)


def _from_torch(tensor: Any, what: str) -> np.ndarray:
    """A host NumPy array of ``tensor``'s values (a view when it is already on the CPU)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        raise ArgumentTypeError(
            f"{what} is a torch.bfloat16 tensor, which NumPy (and so modelsync) cannot hold; "
            "convert the state dict first, e.g. {k: v.float() for k, v in state.items()}")
    if tensor.layout != torch.strided:
        raise ArgumentTypeError(f"{what} is a {tensor.layout} torch tensor; expected a dense "
                                "one (call .to_dense() first)")
    try:
        return tensor.detach().cpu().resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ArgumentTypeError(
            f"{what}: a torch {tensor.dtype} tensor on {tensor.device} that cannot be brought "
            f"to a NumPy array: {exc}") from exc
