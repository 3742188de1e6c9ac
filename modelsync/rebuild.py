"""The one map with memo that every conversion is built on: `rebuild` makes a new tree like a
model whose Params are mapped by a function. A node seen twice (a tied Param, a shared layer)
is handled once, and the result keeps that sharing (the guarantee Functors.jl's ``fmap``
states). Layers are copied field by field, without running ``__init__``.
"""

from __future__ import annotations

import inspect
import keyword
import types
from collections.abc import Callable
from typing import Any

from .buffers import Buffer
from .params import Param
from .tree import LAYER_TYPES, PLAIN_CONFIG, field_names, is_container
from .watch import TrackedList


def rebuild(model: Any, on_param: Callable[[Param], Param], memo: dict[int, Any] | None = None
            ) -> Any:
    """A new tree like ``model`` whose Params are ``on_param(p)``; each Param and layer seen
    twice is mapped once, so ties and shared layers survive."""
    memo = {} if memo is None else memo
    return _rebuild_value(model, on_param, memo)


def _rebuild_value(value: Any, on_param: Callable[[Param], Param], memo: dict[int, Any]) -> Any:
    # (type checks by identity first: this runs once per node of every conversion)
    kind = type(value)
    if kind is Param or kind is Buffer or kind in LAYER_TYPES:
        key = id(value)
        made = memo.get(key)
        if made is None:
            if kind is Param or kind is Buffer:  # (a Buffer is mapped like a Param)
                made = on_param(value)
            else:  # a layer, field by field, without running __init__
                copier = _COPIERS.get(kind) or _make_copier(kind)
                made = copier(value, on_param, memo)
            memo[key] = made
        return made
    if (kind is TrackedList or kind is list or kind is tuple
            or isinstance(value, (list, tuple))) and value and is_container(value):
        items = _rebuild_items(value, on_param, memo)
        return kind(*items) if hasattr(value, "_fields") else kind(items)
    return value


def _rebuild_items(value: Any, on_param: Callable[[Param], Param], memo: dict[int, Any]
                   ) -> list[Any]:
    """``_rebuild_value`` of each item of a container, a layer's copier called from here (a
    Chain's list holds hundreds of them: one Python call each, not two)."""
    items = []
    append = items.append
    get = memo.get
    for v in value:
        kind = type(v)
        if kind in LAYER_TYPES:
            made = get(id(v))
            if made is None:
                made = memo[id(v)] = (_COPIERS.get(kind) or _make_copier(kind))(
                    v, on_param, memo)
            append(made)
        else:
            append(_rebuild_value(v, on_param, memo))
    return items


#: layer class -> the function that copies one of its layers for `_rebuild_value`
_COPIERS: dict[type, Callable[[Any, Callable[[Param], Param], dict[int, Any]], Any]] = {}

_COPY_FIELD = """
    v = {read}
    t = type(v)
    if t in plain:
        pass
    elif t is Param:
        v = get(id(v)) or rebuild_value(v, on_param, memo)
    else:
        v = rebuild_value(v, on_param, memo)
    {write}"""


def _make_copier(kind: type) -> Callable[[Any, Callable[[Param], Param], dict[int, Any]], Any]:
    """A function copying a ``kind`` layer field by field (without running ``__init__`` or
    the attrs converters), its fields' reads and writes spelled out: a conversion copies
    hundreds of layers, and a loop over the field names with ``getattr`` and
    ``object.__setattr__`` costs twice as much. (attrs writes its ``__init__`` this way.)
    A slot is written through its member descriptor, any other field by
    ``object.__setattr__``."""
    env: dict[str, Any] = {"new": kind.__new__, "kind": kind, "Param": Param, "plain": PLAIN_CONFIG,
                           "rebuild_value": _rebuild_value, "osa": object.__setattr__,
                           "gets": getattr}
    lines = ["def copy(value, on_param, memo):", "    made = new(kind)", "    get = memo.get"]
    for i, name in enumerate(field_names(kind)):
        plain = name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")
        env[f"name{i}"] = name
        read = f"value.{name}" if plain else f"gets(value, name{i})"
        slot = inspect.getattr_static(kind, name, None)
        if type(slot) is types.MemberDescriptorType:
            env[f"set{i}"] = slot.__set__
            write = f"set{i}(made, v)"
        else:
            write = f"osa(made, name{i}, v)"
        lines.append(_COPY_FIELD.format(read=read, write=write))
    lines.append("    return made")
    exec("\n".join(lines), env)  # noqa: S102 (names are checked identifiers or passed in env)
    copier = _COPIERS[kind] = env["copy"]
    return copier
