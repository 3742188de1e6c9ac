"""``names=``: from a model's parameter paths to another library's keys.

`load_into` and `state_dict` take ``names`` as a dict (our path -> their key; a path the
dict leaves out keeps its own name) or a function (our path -> their key), so a PyTorch
state dict keyed ``"2.weight"`` meets a Param at ``"layers.1.weight"``. A tied Param is
named at every place it is used, as PyTorch names a tied weight under each module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ArgumentError, ArgumentTypeError
from ..params import Param
from ..tree import state_paths

Names = Mapping[str, str] | Callable[[str], str] | None


def check_names(names: Any) -> None:
    """ArgumentTypeError unless ``names`` is None, a mapping or a function."""
    if names is None or isinstance(names, Mapping) or callable(names):
        return
    raise ArgumentTypeError(
        f"names={names!r} is a {type(names).__name__}; expected None, a dict from the model's "
        "parameter paths to the other side's keys, or a function path -> key")


def keyed_places(model: Any, names: Names) -> list[tuple[str, Param, str]]:
    """(path, Param, key) for every place a Param or Buffer is used, in the model's order (a
    tied Param once per place; Buffers by their paths too, so BatchNorm's ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` meet torch's keys of those names). Every
    dict key must be one of the model's paths and every key a str; ArgumentError or
    ArgumentTypeError otherwise, before anything is read or written."""
    places = state_paths(model)
    if names is None:
        return [(path, p, path) for path, p in places]
    if isinstance(names, Mapping):
        known = {path for path, _ in places}
        for path, key in names.items():
            if path not in known:
                listed = ", ".join(repr(p) for p, _ in places[:4])
                raise ArgumentError(
                    f"names[{path!r}]: the model has no Param or Buffer at that path; names "
                    f"maps the model's paths (here {listed}{', ...' if len(places) > 4 else ''})"
                    " to the other side's keys")
            _check_key(key, f"names[{path!r}] = {key!r}")
        return [(path, p, names.get(path, path)) for path, p in places]
    keyed = []
    for path, p in places:
        key = names(path)
        _check_key(key, f"names({path!r}) returned {key!r}, which")
        keyed.append((path, p, key))
    return keyed


def _check_key(key: Any, what: str) -> None:
    if not isinstance(key, str):
        raise ArgumentTypeError(f"{what} is a {type(key).__name__}; expected a str key")
