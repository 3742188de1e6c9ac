"""What a layer class's annotations say its fields hold, checked on load.

A field annotated ``Param``, ``Param | None``, a registered layer class or ``Optional`` of one
is a declaration even when the class gives it no validator (``gain: ms.Param`` in a user's
layer): a file that stores configuration, ``null`` or a Param there would load a model whose
forward fails on its first call. The class's own converters and validators run first
(architecture.py); this only reads the annotations, so it refuses nothing a declared type
allows. Annotations that do not resolve (a name imported only for type checkers) are left
unchecked.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs

from ..errors import LoadError
from ..params import Param
from ..tree import registered_layer

# class -> {field: (the declared class, whether None is allowed)}
_CACHE: dict[type, dict[str, tuple[type, bool]]] = {}


def declared_kinds(cls: type) -> dict[str, tuple[type, bool]]:
    """The fields of layer class ``cls`` annotated as a Param or a registered layer class,
    alone or with None: ``{field: (class, optional)}``."""
    found = _CACHE.get(cls)
    if found is None:
        found = _CACHE[cls] = _read_annotations(cls)
    return found


def _read_annotations(cls: type) -> dict[str, tuple[type, bool]]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: nothing is declared
        return {}
    found: dict[str, tuple[type, bool]] = {}
    for field in attrs.fields(cls):
        hint = hints.get(field.name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        kinds = [m for m in members if m is not type(None)]
        if len(kinds) == 1 and _is_tree_class(kinds[0]):
            found[field.name] = (kinds[0], len(kinds) < len(members))
    return found


def _is_tree_class(kind: Any) -> bool:
    if kind is Param:
        return True
    name = getattr(kind, "__ms_layer_name__", None)
    return isinstance(kind, type) and name is not None and registered_layer(name) is kind


def check_declared(node: Any, where: str) -> None:
    """LoadError if a field of ``node`` does not hold what its annotation declares."""
    for name, (kind, optional) in declared_kinds(type(node)).items():
        value = getattr(node, name)
        if isinstance(value, kind) or (optional and value is None):
            continue
        expected = kind.__name__ + (" or None" if optional else "")
        raise LoadError(f"{where}: {type(node).__name__}.{name} holds a "
                        f"{type(value).__name__}, but the class declares it a {expected}")
