"""The array namespace of an array: the one place the package asks array_api_compat."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace


def namespace(*arrays: Any) -> Any:
    """The array-API namespace that computes on ``arrays`` (NumPy, CuPy or array_api_strict)."""
    return array_namespace(*arrays)


def concat_flat(arrays: Any) -> Any:
    """One new 1-D array of ``arrays`` (all on one device), flattened in order. Through
    array_api_compat, since raw CuPy has ``concatenate`` but not the standard's ``concat``."""
    xp = array_namespace(*arrays)
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])
