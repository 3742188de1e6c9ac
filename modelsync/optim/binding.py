"""Binding: which Params an optimizer updates, each once, and the key of each in state_dict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..buffers import Buffer
from ..errors import ArgumentError, ArgumentTypeError
from ..params import Param
from ..tree import is_layer


def bind_params(params: Any, paths: Sequence[str] | None = None
                ) -> tuple[list[Param], list[str]]:
    """The Params of ``params`` once each, with their state_dict keys: ``paths`` when given,
    else each one's model path when they come from ``ms.params(model)``, else each one's
    position as a string."""
    if isinstance(params, Param):
        raise ArgumentTypeError(
            "params is a single Param; pass a list of Params, e.g. [p] or ms.params(model)")
    if is_layer(params):
        raise ArgumentTypeError(
            f"params is a model ({type(params).__name__}); pass its Params: ms.params(model)")
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise ArgumentTypeError(
            f"params is a {type(params).__name__}; expected an iterable of Params such as "
            "ms.params(model)")
    items = list(params)
    path_of = getattr(params, "path_of", None)  # ms.params(model): id(Param) -> path
    if paths is not None:
        path_of = {id(p): path for p, path in zip(items, paths, strict=True)}
    if path_of is not None and not all(id(p) in path_of for p in items):
        path_of = None  # a foreign Param was added: fall back to positions for all
    bound: list[Param] = []
    keys: list[str] = []
    seen: set[int] = set()
    for i, p in enumerate(items):
        if not isinstance(p, Param):
            text = repr(p)
            text = text if len(text) <= 60 else text[:57] + "..."
            raise ArgumentTypeError(
                f"params[{i}] is a {type(p).__name__} ({text}); expected a Param: pass "
                "ms.params(model) or a list of ms.Param")
        if isinstance(p, Buffer):  # (state that is not trained: no optimizer touches it)
            raise ArgumentTypeError(
                f"params[{i}] is a Buffer ({p!r}): state that is not trained (running "
                "statistics, counters); pass ms.params(model), which never includes Buffers")
        if id(p) in seen:
            continue
        seen.add(id(p))
        keys.append(path_of[id(p)] if path_of is not None else str(len(bound)))
        bound.append(p)
    if not bound:
        raise ArgumentError(
            "params is empty: an optimizer needs at least one Param to update; pass "
            "ms.params(model) of a model that has Params")
    return bound, keys
