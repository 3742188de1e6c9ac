"""The array namespace of an array: the one place the package asks array_api_compat.

Host arrays skip it: the flat helpers below handle a thousand NumPy arrays at a time, and
the namespace lookup (a check of every argument) costs more than the concatenation itself.
The array API stays the interface for the simulated device and CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .devices import on_array_device, on_device


def namespace(*arrays: Any) -> Any:
    """The array-API namespace that computes on ``arrays`` (NumPy, CuPy or array_api_strict)."""
    return array_namespace(*arrays)


def concat_flat(arrays: Any) -> Any:
    """One new 1-D array of ``arrays`` (all on one device), flattened in order. NumPy arrays
    go to ``np.concatenate`` directly; others through array_api_compat, since raw CuPy has
    ``concatenate`` but not the standard's ``concat``."""
    if type(arrays[0]) is np.ndarray:  # (one device: the first tells)
        return np.concatenate(arrays, axis=None)
    xp = array_namespace(*arrays)
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def concat_on(arrays: Any, device: Any) -> Any:
    """`concat_flat` of ``arrays`` (all on ``device``, a `Device`) with that device current:
    CuPy allocates on the current GPU, so a CUDA device is entered first."""
    with on_device(device):
        return concat_flat(arrays)


def zeros_on(device: Any, shape: Any, dtype: Any) -> Any:
    """A new array of zeros on ``device`` (a `Device`)."""
    return _new_on("zeros", device, shape, dtype)


def empty_on(device: Any, shape: Any, dtype: Any) -> Any:
    """A new uninitialised array on ``device`` (a `Device`), for a buffer about to be written."""
    return _new_on("empty", device, shape, dtype)


def _new_on(how: str, device: Any, shape: Any, dtype: Any) -> Any:
    if device.kind == "host":
        return getattr(np, how)(shape, dtype=dtype)
    make = getattr(device.xp, how)
    if device.kind == "cuda":
        with on_device(device):
            return make(shape, dtype=dtype)
    return make(shape, dtype=dtype, device=device.native)


def concat_into(arrays: Any, out: Any) -> None:
    """Write ``arrays`` (all on ``out``'s device, their sizes adding up to ``out``'s),
    flattened in order, into the 1-D ``out``: one pass on the host and on CuPy."""
    if type(out) is np.ndarray:
        np.concatenate(arrays, axis=None, out=out)
        return
    if type(out).__module__.startswith("cupy"):
        import cupy

        with on_array_device(out):
            cupy.concatenate(arrays, axis=None, out=out)
        return
    out[...] = concat_flat(arrays)  # sim: the array API has no out=
