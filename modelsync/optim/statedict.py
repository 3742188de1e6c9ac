"""Checking a state_dict before anything is loaded: its keys, hyperparameters and per-Param
entries, each problem named with where it is and what was expected."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..devices import dtype_name, is_array
from ..errors import ArgumentError, ModelSyncError
from ..params import Param


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else ArgumentError naming ``where``."""
    if not isinstance(value, Mapping):
        raise ArgumentError(f"{where} is a {type(value).__name__}; expected a dict")
    return value


def exact_keys(found: Mapping[str, Any], expected: Iterable[str], where: str) -> None:
    """ArgumentError listing the missing and unexpected keys, if any."""
    expected = tuple(expected)
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unexpected {extra}"] if extra else [])
        raise ArgumentError(f"{where} has keys {list(found)}: {', '.join(parts)}; "
                            f"expected {list(expected)}")


def check_type(found: Any, type_name: str, where: str, hint: str) -> None:
    if found != type_name:
        raise ArgumentError(
            f"{where}['type'] is {found!r} but this optimizer is {type_name}; {hint}")


def check_hyper(owner: type, names: Sequence[str], hyper: Mapping[str, Any], where: str
                ) -> dict[str, Any]:
    """Each hyperparameter checked by ``owner``'s `restrict_range` without assigning it."""
    exact_keys(hyper, names, where)
    checked = {}
    for name in names:
        try:
            checked[name] = getattr(owner, name).check(hyper[name])
        except ModelSyncError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    return checked


def check_entries(state: Mapping[str, Any], bound: Mapping[str, Param],
                  state_names: Sequence[str], type_name: str, where: str
                  ) -> list[tuple[Param, int, list[Any]]]:
    """``(Param, step, arrays)`` for each entry of ``state``, keyed by the bound Params'
    paths: every array checked against its Param's shape and dtype."""
    checked = []
    for path, entry in state.items():
        p = bound.get(path)
        if p is None:
            paths = list(bound)
            known = ", ".join(repr(k) for k in paths[:8])
            more = ", ..." if len(paths) > 8 else ""
            raise ArgumentError(
                f"{where} has an entry for {path!r}, which is not a Param bound to this "
                f"{type_name} (bound: {known}{more})")
        if not state_names:
            raise ArgumentError(f"{where}[{path!r}]: a {type_name} keeps no per-Param state")
        here = f"{where}[{path!r}]"
        entry = mapping(entry, here)
        exact_keys(entry, ("step", *state_names), here)
        step = entry["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ArgumentError(f"{here}['step']={step!r}; expected an int >= 0")
        checked.append((p, int(step), [_array(entry[name], p, f"{here}[{name!r}]")
                                       for name in state_names]))
    return checked


def _array(array: Any, p: Param, where: str) -> Any:
    expected = f"{p.shape} {dtype_name(p.dtype)}"
    if not is_array(array):
        raise ArgumentError(
            f"{where} is a {type(array).__name__}; expected an array of shape {expected}")
    if tuple(array.shape) != p.shape or dtype_name(array.dtype) != dtype_name(p.dtype):
        raise ArgumentError(f"{where} is {tuple(array.shape)} {dtype_name(array.dtype)} but "
                            f"the Param is {expected}")
    return array
