"""A tagged JSON codec for configuration and optimizer values, so that what is saved comes back
with the same Python types (a tuple stays a tuple, an int stays an int, a NumPy scalar keeps
its dtype) and a file can hold nothing that decoding would have to execute.

Plain JSON carries None, bool, int, str, finite floats, lists and dicts with plain str keys
(exactly those types: a subclass such as an IntEnum or a namedtuple would not come back as
itself, so it is refused at save time rather than silently changed);
anything else is a one-key dict whose key is a tag: ``{"__tuple__": [...]}``,
``{"__float__": "nan"}``, ``{"__scalar__": ["float32", 0.5]}``, ``{"__dict__": [[k, v], ...]}``
and, where the caller allows arrays, ``{"__tensor__": name}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import LoadError
from ..tree import TrackedList

#: NumPy scalar dtypes a file may name; nothing outside this list is ever constructed.
SCALAR_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64")
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
MAX_DEPTH = 64


class Unencodable(Exception):
    """A value the codec cannot store; the caller turns it into a SaveError naming where."""


def encode(value: Any, on_array: Callable[[Any], str] | None = None, depth: int = 0) -> Any:
    """``value`` as tagged JSON; arrays go through ``on_array`` (which returns a tensor name)."""
    if depth > MAX_DEPTH:
        raise Unencodable(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if isinstance(value, np.generic):
        name = value.dtype.name
        if name not in SCALAR_DTYPES:
            raise Unencodable(f"a NumPy scalar of dtype {name}")
        return {"__scalar__": [name, encode(value.item(), depth=depth + 1)]}
    if kind is int:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if kind is list or kind is TrackedList:
        return [encode(v, on_array, depth + 1) for v in value]
    if kind is tuple:
        return {"__tuple__": [encode(v, on_array, depth + 1) for v in value]}
    if kind is dict:
        if all(type(k) is str and not k.startswith("__") for k in value):
            return {k: encode(v, on_array, depth + 1) for k, v in value.items()}
        return {"__dict__": [[encode(k, None, depth + 1), encode(v, on_array, depth + 1)]
                             for k, v in value.items()]}
    if on_array is not None and hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"__tensor__": on_array(value)}
    raise Unencodable(f"a {type(value).__module__}.{type(value).__qualname__}")


def decode(data: Any, where: str, on_tensor: Callable[[str, str], Any] | None = None,
           depth: int = 0) -> Any:
    """The value ``encode`` made; LoadError naming ``where`` for anything malformed.
    ``on_tensor(name, where)`` returns the array a ``__tensor__`` tag refers to."""
    if depth > MAX_DEPTH:
        raise LoadError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, float):
        if not math.isfinite(data):
            raise LoadError(f"{where}: a bare non-finite number; expected the __float__ tag")
        return data
    if isinstance(data, list):
        return [decode(v, f"{where}[{i}]", on_tensor, depth + 1) for i, v in enumerate(data)]
    if not isinstance(data, dict):
        raise LoadError(f"{where}: a {type(data).__name__} is not a stored value")
    tagged = [k for k in data if k.startswith("__")]
    if not tagged:
        return {k: decode(v, f"{where}.{k}", on_tensor, depth + 1) for k, v in data.items()}
    if len(data) != 1:
        raise LoadError(f"{where}: a tag must be the only key of its object, found {sorted(data)}")
    tag, body = next(iter(data.items()))
    return _decode_tagged(tag, body, where, on_tensor, depth)


def _decode_tagged(tag: str, body: Any, where: str, on_tensor: Callable[[str, str], Any] | None,
                   depth: int) -> Any:
    if tag == "__tuple__" and isinstance(body, list):
        return tuple(decode(v, f"{where}[{i}]", on_tensor, depth + 1) for i, v in enumerate(body))
    if tag == "__float__" and body in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[body]
    if tag == "__scalar__" and isinstance(body, list) and len(body) == 2:
        value = decode(body[1], where, None, depth + 1)
        if _fits_scalar(body[0], value):
            with np.errstate(all="ignore"):
                return np.dtype(body[0]).type(value)
    if tag == "__dict__" and isinstance(body, list) and all(
            isinstance(kv, list) and len(kv) == 2 for kv in body):
        out: dict[Any, Any] = {}
        for i, (k, v) in enumerate(body):
            key = decode(k, f"{where} key {i}", None, depth + 1)
            try:
                hash(key)
            except TypeError:
                raise LoadError(f"{where}: key {i} is a {type(key).__name__}, which cannot be "
                                "a dict key") from None
            out[key] = decode(v, f"{where}[{key!r}]", on_tensor, depth + 1)
        return out
    if tag == "__tensor__" and isinstance(body, str) and on_tensor is not None:
        return on_tensor(body, where)
    raise LoadError(f"{where}: {tag!r} with a {type(body).__name__} is not a known stored value")


def _fits_scalar(dtype: Any, value: Any) -> bool:
    """True when ``value`` is a Python value of the kind a ``dtype`` scalar was saved as."""
    if dtype not in SCALAR_DTYPES:
        return False
    if dtype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if dtype.startswith(("int", "uint")):
        if not isinstance(value, int):
            return False
        info = np.iinfo(dtype)
        return bool(info.min <= value <= info.max)
    return isinstance(value, (int, float))
