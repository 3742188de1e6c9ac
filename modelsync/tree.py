"""Model trees: the layer registry, traversal, params/named_params, graph identity, each
model's cached walk, and the marks of moved layers (the map every conversion is built on
is `rebuild.py`).

A model is a tree of registered layers (attrs classes) whose fields hold Params, other
layers, lists or tuples of them, or static configuration. A node seen twice (a tied Param,
a shared layer) is visited once by `params`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from .buffers import Buffer
from .devices import dtype_name, is_array
from .errors import ArgumentError, ArgumentTypeError, MovedError
from .identity import IdentityMap
from .params import Param
from .watch import TrackedList, changed, subscribe, tracking_setattr

_REGISTRY: dict[str, type] = {}
LAYER_TYPES: set[type] = set()  # the registered classes, for an O(1) is_layer
PLAIN_CONFIG = frozenset({int, float, str, bool, type(None)})  # configuration kept as it is
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # each layer class's attrs field names
_TWIN_OF: dict[type, type] = {}  # each registered class -> its moved twin (`_moved_class`)
_MOVED_TWINS: set[type] = set()  # the twins

def register_layer(cls: type, name: str | None = None) -> type:
    """Record ``cls`` under ``name`` (default: its class name) so `ms.load` can rebuild it."""
    key = name or cls.__name__
    known = _REGISTRY.get(key)
    if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise ArgumentError(
            f"layer name {key!r} is already registered for "
            f"{known.__module__}.{known.__qualname__}; "
            f"pass @ms.layer(name=...) to register {cls.__qualname__} under another name")
    if not cls.__weakrefoffset__:
        raise ArgumentTypeError(
            f"layer class {cls.__qualname__} does not support weak references (a __slots__ "
            "without '__weakref__', or attrs weakref_slot=False); modelsync keeps its caches "
            "and marks of a model only weakly, so a layer must allow them")
    if not getattr(cls.__setattr__, "__ms_tracking__", False):  # (see watch.py)
        cls.__setattr__ = tracking_setattr(cls.__setattr__)
    _refuse_copies_when_moved(cls)
    if known is not None:
        LAYER_TYPES.discard(known)
    _REGISTRY[key] = cls
    LAYER_TYPES.add(cls)
    for cached in _walks.values():  # a tree walked before may hold instances of this class
        cached.invalidate()         # as configuration: it now walks into them
    _FIELD_NAMES.pop(cls, None)
    cls.__ms_layer_name__ = key
    return cls


def registered_layer(name: str) -> type | None:
    """The layer class registered under ``name``, or None."""
    return _REGISTRY.get(name)


def layer_name(node: Any) -> str:
    return type(node).__ms_layer_name__


def is_layer(value: Any) -> bool:
    kind = type(value)
    return kind in LAYER_TYPES or kind in _MOVED_TWINS  # (a moved layer is still a layer)


def field_names(cls: type) -> tuple[str, ...]:
    """A layer class's field names, in declaration order (cached: traversal is a hot path)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in attrs.fields(cls))
    return names


def layer_fields(node: Any) -> list[tuple[str, Any]]:
    """A layer's fields, in declaration order, as (name, value)."""
    return [(name, getattr(node, name)) for name in field_names(type(node))]


def is_container(value: Any) -> bool:
    """A list or tuple that holds Params or layers (and so is part of the tree, not config)."""
    return isinstance(value, (list, tuple)) and any(
        isinstance(v, Param) or is_layer(v) or is_container(v) for v in value)


def described(value: Any) -> str:
    """What ``value`` is, for a message about a misplaced argument: "a model (Chain)", "an
    optimizer (Adam)", "a list of Params", else "a <type>"."""
    if is_layer(value):
        return f"a model ({layer_name(value)})"
    if callable(getattr(value, "step", None)) and callable(getattr(value, "zero_grad", None)):
        return f"an optimizer ({type(value).__name__})"
    if isinstance(value, (list, tuple)) and value and all(type(v) is Param for v in value):
        return f"a {type(value).__name__} of Params".replace("ParamList", "list")
    return f"a {type(value).__name__}"


def require_model(model: Any, argument: str = "model") -> None:
    """TypeError unless ``model`` is a registered layer; MovedError if it was moved away."""
    if not is_layer(model):
        kind = described(model)
        hint = ""
        if kind.startswith(("an optimizer", "a list of Params", "a tuple of Params")):
            hint = ("; pass the model itself (an optimizer, or ms.params(model), holds only its "
                    "Params)")
        elif isinstance(model, (list, tuple)) and any(is_layer(v) for v in model):
            hint = "; pass one model (a Chain holds several layers: layers.Chain(a, b))"
        raise ArgumentTypeError(
            f"{argument} is {kind}; expected a model: a tree of layers registered with "
            f"@ms.layer{hint}")
    check_not_moved(model)
    moved = cache_of(model).moved
    if moved is not None:
        path, where = moved
        raise MovedError(
            f"this {layer_name(model)} holds the layer {path}, which was moved to {where} by "
            "to_device(mode=\"move\") and no longer owns its Params; rebuild this model "
            "around the model that to_device returned")


# -- traversal ----------------------------------------------------------------------------
# Each model's walk (and what is derived from it: its graph id, its sync plans) is cached in
# `_walks`, keyed weakly by the model, and subscribed (watch.py) to every layer, TrackedList
# and Param it passed through: a change to one of them (a Param's: `Param.rehome`)
# invalidates exactly the walks that hold it. Trees holding what can change unseen (a plain
# list) are walked afresh each time.
class Walked:
    """One model's walk, cached with what is derived from it: every (path, node) below the
    model, its (path, Param) pairs, the first layer in it that was moved away (path, where),
    its graph id once asked for, and ``derived`` (syncing.py keeps its sync plans there,
    convert.py its layout). ``valid`` while no node it passed through has changed, nor any
    of its Params been re-homed (see watch.py)."""

    __slots__ = ("found", "with_params", "with_buffers", "moved", "valid", "graph_id",
                 "derived", "__weakref__")

    def __init__(self, found: list[tuple[str, Any]], with_params: list[tuple[str, Param]],
                 moved: tuple[str, str] | None,
                 with_buffers: list[tuple[str, Buffer]] | None = None) -> None:
        self.found = found
        self.with_params = with_params
        self.with_buffers = with_buffers or []
        self.moved = moved
        self.valid = False  # until it is cached
        self.graph_id: str | None = None
        self.derived: dict[str, Any] = {}

    def invalidate(self) -> None:
        self.valid = False
        self.derived = {}  # (let go of what it derived: plans hold other models' Params)


#: model -> its cached Walked (held weakly by the model: it goes when the model does)
_walks: IdentityMap[Walked] = IdentityMap()


def walk(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every (path, node) below ``model`` depth-first, Params and layers, repeats included.
    (The list may be shared with a cache: do not change it.)"""
    if prefix:
        found: list[tuple[str, Any]] = []
        _walk_layer(model, prefix, found, [], [True])
        return found
    return cache_of(model).found


def param_paths(model: Any) -> list[tuple[str, Param]]:
    """Every (path, Param) pair, a tied Param once per place it is used (do not change it)."""
    return cache_of(model).with_params


def cache_of(model: Any) -> Walked:
    """``model``'s current walk: the cached one while its tree is unchanged, else a new walk
    (cached, and ``valid``, unless the tree holds something that can change unseen)."""
    cached = _walks.get(model)
    if cached is not None and cached.valid:
        return cached
    found: list[tuple[str, Any]] = []
    tracked: list[Any] = [model]  # the nodes whose changes must invalidate this walk
    watchable = [True]
    _walk_layer(model, "", found, tracked, watchable)
    with_params = []
    with_buffers = []
    for item in found:
        kind = type(item[1])
        if kind is Param:
            with_params.append(item)
        elif kind is Buffer:
            with_buffers.append(item)
        tracked.append(item[1])  # (a Param too: re-homing it changes its device and store)
    moved = None
    if len(_moved):
        for path, node in found:
            where = _moved.get(node)
            if where is not None:
                moved = (path, where)
                break
    cached = Walked(found, with_params, moved, with_buffers)
    if watchable[0] and subscribe(tracked, cached) and _walks.set(model, cached):
        cached.valid = True
    return cached


def _walk_layer(node: Any, prefix: str, found: list[tuple[str, Any]], tracked: list[Any],
                watchable: list[bool]) -> None:
    if type(node) in _MOVED_TWINS:
        _walk_moved(node, prefix, found, tracked, watchable)
        return
    for name in field_names(type(node)):
        _walk_value(getattr(node, name), prefix + name, found, tracked, watchable)


def _walk_moved(node: Any, prefix: str, found: list[tuple[str, Any]], tracked: list[Any],
                watchable: list[bool], _get: Any = object.__getattribute__) -> None:
    """`_walk_layer` of a moved layer, which refuses getattr: object's own lookup reads its
    fields, so the walk of a model that holds it can say where it went. (Slower than
    getattr, so live layers do not take this path.)"""
    for name in field_names(type(node)):
        _walk_value(_get(node, name), prefix + name, found, tracked, watchable)


def _walk_value(value: Any, path: str, found: list[tuple[str, Any]], tracked: list[Any],
                watchable: list[bool]) -> None:
    kind = type(value)
    if kind is Param or kind is Buffer:
        found.append((path, value))
    elif kind in LAYER_TYPES:
        found.append((path, value))
        _walk_layer(value, path + ".", found, tracked, watchable)
    elif kind in PLAIN_CONFIG:
        pass
    elif kind in _MOVED_TWINS:  # a moved layer: walked, so the model holding it says so
        found.append((path, value))
        _walk_moved(value, path + ".", found, tracked, watchable)
    else:
        if kind is TrackedList:
            tracked.append(value)
        elif kind is not tuple and (isinstance(value, (list, dict, set, bytearray))
                                    or hasattr(value, "__dict__") or is_array(value)):
            watchable[0] = False  # it can change in place unseen: do not cache this tree
        if isinstance(value, (list, tuple)) and value and is_container(value):
            for i, item in enumerate(value):
                _walk_value(item, f"{path}.{i}", found, tracked, watchable)
        elif isinstance(value, dict) and any(
                isinstance(v, Param) or is_layer(v) or is_container(v) for v in value.values()):
            raise ArgumentTypeError(
                f"{path}: a dict of Params or layers is not part of a model tree (its Params "
                "would be left out of params, conversions and saves); hold them in a list or "
                "tuple, or in fields of their own")


class ParamList(list):
    """What `params` returns: a plain list of Params that also knows each one's path, so an
    optimizer built from it can key its state_dict by path. Paths are looked up by Param
    identity, so reordering or filtering the list cannot mislabel them."""

    paths: list[str]
    path_of: dict[int, str]
    owner: str  # the model's layer name, for messages ("Chain")


def params(model: Any) -> ParamList:
    """Every Param once, in depth-first order; a tied Param appears at its first place."""
    named = named_params(model)
    found = ParamList(named.values())
    found.paths = list(named)
    found.path_of = {id(p): path for path, p in named.items()}
    found.owner = layer_name(model)
    return found


def named_params(model: Any) -> dict[str, Param]:
    """Dotted path -> Param; a tied Param is listed under its first path only."""
    require_model(model)
    seen: set[int] = set()
    named: dict[str, Param] = {}
    for path, p in param_paths(model):
        if id(p) not in seen:
            seen.add(id(p))
            named[path] = p
    return named


def aliases(model: Any) -> dict[str, str]:
    """For each tied place after the first: its path -> the path the Param is listed under."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for path, p in param_paths(model):
        if id(p) in first:
            tied[path] = first[id(p)]
        else:
            first[id(p)] = path
    return tied


def buffer_paths(model: Any) -> list[tuple[str, Buffer]]:
    """Every (path, Buffer) pair, a shared Buffer once per place (do not change it)."""
    return cache_of(model).with_buffers


def named_buffers(model: Any) -> dict[str, Buffer]:
    """Dotted path -> Buffer (state that is not trained: running statistics, counters); a
    Buffer of a shared layer is listed under its first path only."""
    require_model(model)
    named: dict[str, Buffer] = {}
    seen: set[int] = set()
    for path, b in buffer_paths(model):
        if id(b) not in seen:
            seen.add(id(b))
            named[path] = b
    return named


def buffers(model: Any) -> list[Buffer]:
    """Every Buffer once, in depth-first order (never in `params`: no optimizer sees them)."""
    return list(named_buffers(model).values())


def state_paths(model: Any) -> list[tuple[str, Param]]:
    """Every (path, Param or Buffer) pair in the model's order: what a state dict holds."""
    return [item for item in cache_of(model).found if type(item[1]) in (Param, Buffer)]


def static_config(node: Any) -> dict[str, Any]:
    """A layer's configuration fields (everything that is not a Param, layer or container)."""
    return {name: value for name, value in layer_fields(node)
            if not (isinstance(value, Param) or is_layer(value) or is_container(value)
                    or value is None and _field_holds_param(node, name))}


def _field_holds_param(node: Any, name: str) -> bool:
    field = attrs.fields_dict(type(node))[name]
    return field.metadata.get("param", False) or field.metadata.get("buffer", False)


def structure(model: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype name) for every place a Param is used, then every Buffer's: what
    check="structure" compares."""
    walked = cache_of(model)
    return [(path, p.shape, dtype_name(p.dtype))
            for path, p in [*walked.with_params, *walked.with_buffers]]


def graph_id(model: Any) -> str:
    """The identity of the graph this model was made as.

    Built from the layer types, their configuration, the tie pattern and each Param's
    origin (kept by every copy, move, wrap and save/load), so conversions share it and a
    model built separately with the same architecture does not.
    """
    require_model(model)
    cached = cache_of(model)
    if cached.graph_id is None:
        cached.graph_id = _graph_id(model, cached.found)
    return cached.graph_id


def _graph_id(model: Any, found: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    first: dict[int, str] = {}
    for path, node in found:
        if isinstance(node, Param):
            tied_to = first.setdefault(id(node), path)
            mark = "B" if type(node) is Buffer else "P"
            digest.update(f"{mark}|{path}|{node.origin}|{tied_to}\n".encode())
        else:
            config = sorted((k, repr(v)) for k, v in static_config(node).items())
            digest.update(f"L|{path}|{layer_name(node)}|{config}\n".encode())
    digest.update(f"R|{layer_name(model)}|{sorted(static_config(model).items())!r}".encode())
    return digest.hexdigest()[:32]


# -- moved models ---------------------------------------------------------------------------
#: layer -> where its Params went (held weakly: the mark goes with the layer)
_moved: IdentityMap[str] = IdentityMap()


def mark_moved(model: Any, where: str) -> None:
    """Make every layer of ``model`` refuse use from now on: its Params went to ``where``.

    Each layer also becomes an instance of its class's moved twin (`_moved_class`), whose
    attribute access raises MovedError: ``orig.layers``, ``orig[0].weight``, ``len(orig)``.
    Live layers keep their own class, so the guard costs their hot paths nothing."""
    nodes = [model] + [node for _, node in walk(model) if is_layer(node)]
    for node in nodes:
        _moved.set(node, where)  # (registered layers take weak references)
    for node in nodes:
        changed(node)  # the walks that hold these layers must now say so
    for node in nodes:
        if type(node) not in _MOVED_TWINS:
            try:
                object.__setattr__(node, "__class__", _moved_class(type(node)))
            except TypeError:  # (a layout or metaclass that refuses it: the marks still hold)
                pass


def check_not_moved(model: Any) -> None:
    """MovedError if ``model`` gave its Params away with to_device(mode="move")."""
    where = _moved.get(model)
    if where is not None:
        raise MovedError(
            f"this {layer_name(model)} was moved to {where} by to_device(mode=\"move\") and "
            "no longer owns its Params; use the model that to_device returned")


def _moved_class(cls: type) -> type:
    """``cls``'s moved twin: a subclass with the same layout (so ``__class__`` can be set)
    whose every non-dunder attribute read, write and delete raises MovedError, and whose
    repr says where the Params went. ``is_layer`` and the walk know the twins (not as
    LAYER_TYPES: a snapshot of the registry must not lose them), so ``require_model`` and
    the walk of a model that holds one report the move."""
    twin = _TWIN_OF.get(cls)
    if twin is None:
        twin = type(cls)(cls.__name__, (cls,), {
            "__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__getattribute__": _refusing_getattribute, "__setattr__": _refusing_setattr,
            "__delattr__": _refusing_delattr, "__repr__": _moved_repr})
        _TWIN_OF[cls] = twin
        _MOVED_TWINS.add(twin)
        _FIELD_NAMES[twin] = field_names(cls)
    return twin


def _refusing_getattribute(self: Any, name: str) -> Any:
    if name[:2] == "__":  # (type(x), isinstance and the copy/pickle guards look these up)
        return object.__getattribute__(self, name)
    raise _moved_error(self, f"reading .{name} of")


def _refusing_setattr(self: Any, name: str, value: Any) -> None:
    raise _moved_error(self, f"setting .{name} of")


def _refusing_delattr(self: Any, name: str) -> None:
    raise _moved_error(self, f"deleting .{name} of")


def _moved_repr(self: Any) -> str:
    return f"{layer_name(self)}(<moved to {_moved.get(self, '?')}>)"


def _moved_error(node: Any, doing: str) -> MovedError:
    return MovedError(
        f"{doing} this {layer_name(node)}: it was moved to {_moved.get(node, '?')} by "
        "to_device(mode=\"move\") and no longer owns its Params or layers; use the model "
        "that to_device returned")


def _refuse_copies_when_moved(cls: type) -> None:
    """Make ``copy.copy``, ``copy.deepcopy`` and pickling of a moved layer raise MovedError
    (its Params belong to the model that to_device returned); a model holding one raises
    when the copy reaches it."""
    for name in ("__reduce_ex__", "__deepcopy__", "__copy__"):
        original = getattr(cls, name, None)
        if original is None or getattr(original, "__ms_refuses_moved__", False):
            continue

        def guarded(self: Any, *args: Any, _original: Any = original) -> Any:
            check_not_moved(self)
            return _original(self, *args)

        guarded.__name__ = name
        guarded.__ms_refuses_moved__ = True
        setattr(cls, name, guarded)
