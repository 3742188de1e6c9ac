"""A model's architecture as JSON, and back: registered layer type names, each layer's static
configuration, its children by field, and Params and Buffers by path reference (a tied Param
or a shared layer is written once and referred to by path afterwards).

Reading is two steps. `read_plan` checks the JSON and turns it into a small tree of plain
records (nothing is constructed, so `inspect` can show a file whose layers are not imported);
`build` then makes the model from registered layer classes only, each layer the way its
attrs-generated initialiser makes one: every field through the class's own converter, then
every validator of the class. So a file cannot hold what the class would refuse (a Param
field holding an int, a Chain holding configuration, ``eps=inf``), and the check is the
class's, not a copy of it. No ``__init__`` or ``__attrs_post_init__`` runs, no weights are
initialised and nothing from the file is executed.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

import attrs

from ..buffers import Buffer
from ..errors import LoadError, SaveError
from ..params import Param
from ..tree import (
    TrackedList,
    is_container,
    is_layer,
    layer_fields,
    layer_name,
    registered_layer,
)
from ..tree import static_config as layer_config
from . import codec
from .declared import check_declared

MAX_DEPTH = 200


# -- writing ------------------------------------------------------------------------------
def encode_model(model: Any, param_path: dict[int, str]) -> dict[str, Any]:
    """The architecture of ``model``; ``param_path`` maps id(Param) (and id(Buffer)) to its
    first path."""
    return _encode_layer(model, "", param_path, {})


def _encode_layer(node: Any, path: str, param_path: dict[int, str], seen: dict[int, str]
                  ) -> dict[str, Any]:
    config_fields = layer_config(node)
    config: dict[str, Any] = {}
    for name, value in config_fields.items():
        try:
            config[name] = codec.encode(value)
        except codec.Unencodable as exc:
            raise SaveError(
                f"{_join(path, name)}: the {layer_name(node)} configuration field {name!r} holds "
                f"{exc}; only None, bool, int, float, str and lists, tuples and dicts of them "
                "can be saved") from None
    children = {name: _encode_child(value, _join(path, name), param_path, seen)
                for name, value in layer_fields(node) if name not in config_fields}
    return {"layer": layer_name(node), "config": config, "children": children}


def _encode_child(value: Any, path: str, param_path: dict[int, str], seen: dict[int, str]
                  ) -> Any:
    if value is None:
        return None
    if type(value) is Buffer:
        return {"buffer": param_path[id(value)]}
    if isinstance(value, Param):
        return {"param": param_path[id(value)]}
    if is_layer(value):
        if id(value) in seen:
            return {"same": seen[id(value)]}
        encoded = _encode_layer(value, path, param_path, seen)
        seen[id(value)] = path
        return encoded
    if is_container(value):
        if type(value) not in (list, tuple, TrackedList):
            raise SaveError(
                f"{path}: a {type(value).__qualname__} of layers or Params cannot be rebuilt by "
                "ms.load (only list and tuple containers can); hold them in a list or tuple")
        kind = "tuple" if type(value) is tuple else "list"  # a TrackedList is a list
        return {kind: [_encode_item(item, f"{path}.{i}", param_path, seen)
                       for i, item in enumerate(value)]}
    raise SaveError(f"{path}: a {type(value).__name__} is neither a Param, a layer nor "
                    "configuration")  # unreachable for trees made of registered layers


def _encode_item(item: Any, path: str, param_path: dict[int, str], seen: dict[int, str]) -> Any:
    if item is None or isinstance(item, Param) or is_layer(item) or is_container(item):
        return _encode_child(item, path, param_path, seen)
    try:
        return {"value": codec.encode(item)}
    except codec.Unencodable as exc:
        raise SaveError(f"{path}: holds {exc}, which cannot be saved") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# -- reading: JSON -> plan ------------------------------------------------------------------
@attrs.frozen
class LayerPlan:
    path: str
    name: str
    cls: type | None  # None: not registered in this process (inspect only)
    config: dict[str, Any]
    children: dict[str, Any]  # field -> plan node


@attrs.frozen
class ParamRef:
    path: str  # the path the Param is stored under


@attrs.frozen
class BufferRef:
    path: str  # the path the Buffer is stored under


@attrs.frozen
class SameLayer:
    path: str  # the path where the shared layer first appears


@attrs.frozen
class Container:
    kind: str  # "list" or "tuple"
    items: list[Any]


@attrs.frozen
class Value:
    value: Any  # a non-tree item inside a container


def read_plan(data: Any, param_paths: set[str], *, require_registered: bool = True,
              buffer_paths: set[str] | None = None) -> LayerPlan:
    """Check an architecture's JSON and return its plan; LoadError saying what is wrong.
    ``buffer_paths``: the Buffers the file lists (Params and Buffers share one set of
    names: the tensors')."""
    refs = _Refs(param_paths, buffer_paths or set())
    root = _read_node(data, "", refs, require_registered, 0, top=True)
    if not isinstance(root, LayerPlan):
        raise LoadError("the architecture's root is not a layer")
    return root


class _Refs:
    """The stored paths an architecture may refer to: Params' and Buffers'."""

    def __init__(self, params: set[str], buffers: set[str]) -> None:
        self.params = params
        self.buffers = buffers

    def __contains__(self, path: Any) -> bool:
        return path in self.params


def _read_node(data: Any, path: str, param_paths: Any, registered: bool, depth: int,
               top: bool = False, in_container: bool = False) -> Any:
    where = f"architecture at {path or 'the root'}"
    if depth > MAX_DEPTH:
        raise LoadError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if data is None and not top:
        return None
    if not isinstance(data, dict):
        raise LoadError(f"{where}: expected an object, found a {type(data).__name__}")
    keys = set(data)
    if keys == {"layer", "config", "children"}:
        return _read_layer(data, path, param_paths, registered, depth)
    if top:
        raise LoadError(f"{where}: expected a layer with keys layer, config and children, "
                        f"found {sorted(keys)}")
    if keys == {"param"} and isinstance(data["param"], str):
        if data["param"] not in param_paths:
            raise LoadError(f"{where}: refers to Param {data['param']!r}, which the file does "
                            "not list")
        return ParamRef(data["param"])
    if keys == {"buffer"} and isinstance(data["buffer"], str):
        if data["buffer"] not in param_paths.buffers:
            raise LoadError(f"{where}: refers to Buffer {data['buffer']!r}, which the file "
                            "does not list")
        return BufferRef(data["buffer"])
    if keys == {"same"} and isinstance(data["same"], str):
        return SameLayer(data["same"])
    if len(keys) == 1 and keys <= {"list", "tuple"}:
        kind = next(iter(keys))
        if not isinstance(data[kind], list):
            raise LoadError(f"{where}: {kind} must hold a JSON array")
        return Container(kind, [_read_node(item, f"{path}.{i}", param_paths, registered,
                                           depth + 1, in_container=True)
                                for i, item in enumerate(data[kind])])
    if in_container and keys == {"value"}:
        return Value(codec.decode(data["value"], where))
    raise LoadError(f"{where}: {sorted(keys)} is not a layer, param, buffer, same, list or "
                    "tuple node")


def _read_layer(data: dict[str, Any], path: str, param_paths: Any, registered: bool,
                depth: int) -> LayerPlan:
    where = f"architecture at {path or 'the root'}"
    name, config, children = data["layer"], data["config"], data["children"]
    if not isinstance(name, str):
        raise LoadError(f"{where}: the layer type name is a {type(name).__name__}, expected str")
    if not isinstance(config, dict) or not isinstance(children, dict):
        raise LoadError(f"{where}: config and children must be JSON objects")
    overlap = set(config) & set(children)
    if overlap:
        raise LoadError(f"{where}: fields {sorted(overlap)} are both config and children")
    cls = registered_layer(name)
    if cls is None and registered:
        raise LoadError(
            f"{where}: layer type {name!r} is not registered in this process; import the "
            "module that defines it (decorated with @ms.layer) before loading. Nothing from "
            "the file is executed, so only registered layer types can be rebuilt")
    if cls is not None:
        fields = [f.name for f in attrs.fields(cls)]
        stored = set(config) | set(children)
        if stored != set(fields):
            missing, extra = sorted(set(fields) - stored), sorted(stored - set(fields))
            raise LoadError(f"{where}: the {name} fields in the file do not match the class "
                            f"(missing {missing}, unknown {extra})")
    decoded = {k: codec.decode(v, f"{where}: config {k}") for k, v in config.items()}
    kids = {k: _read_node(v, _join(path, k), param_paths, registered, depth + 1)
            for k, v in children.items()}
    return LayerPlan(path, name, cls, decoded, kids)


# -- reading: plan -> model ------------------------------------------------------------------
def build(plan: LayerPlan, make_param: Callable[[str], Param],
          make_buffer: Callable[[str], Buffer] | None = None) -> Any:
    """Construct the model a plan describes; ``make_param(path)`` gives each stored Param
    and ``make_buffer(path)`` each stored Buffer (called once per path, so tied Params come
    back tied)."""
    return _Builder(make_param, make_buffer).layer(plan)


class _Builder:
    def __init__(self, make_param: Callable[[str], Param],
                 make_buffer: Callable[[str], Buffer] | None = None) -> None:
        self.make_param = make_param
        self.make_buffer = make_buffer
        self.buffers: dict[str, Buffer] = {}
        self.params: dict[str, Param] = {}
        self.layers: dict[str, Any] = {}

    def layer(self, plan: LayerPlan) -> Any:
        if plan.cls is None:
            raise LoadError(f"architecture at {plan.path or 'the root'}: layer type "
                            f"{plan.name!r} is not registered")
        fields = dict(plan.config)
        for name, child in plan.children.items():
            fields[name] = self.node(child)
        node = _validated(plan, fields)
        self.layers[plan.path] = node
        return node

    def node(self, plan: Any) -> Any:
        if plan is None:
            return None
        if isinstance(plan, LayerPlan):
            return self.layer(plan)
        if isinstance(plan, ParamRef):
            if plan.path not in self.params:
                self.params[plan.path] = self.make_param(plan.path)
            return self.params[plan.path]
        if isinstance(plan, BufferRef):
            if self.make_buffer is None:
                raise LoadError(f"architecture: a Buffer at {plan.path!r} has no stored tensor")
            if plan.path not in self.buffers:
                self.buffers[plan.path] = self.make_buffer(plan.path)
            return self.buffers[plan.path]
        if isinstance(plan, SameLayer):
            if plan.path not in self.layers:
                raise LoadError(f"architecture: a shared layer refers to {plan.path!r}, which "
                                "is not a layer built before it")
            return self.layers[plan.path]
        if isinstance(plan, Container):
            items = [self.node(item) for item in plan.items]
            return tuple(items) if plan.kind == "tuple" else TrackedList(items)
        return plan.value  # Value


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def _validated(plan: LayerPlan, fields: dict[str, Any]) -> Any:
    """The layer ``plan`` describes, with ``fields``, made as the class's attrs-generated
    initialiser makes it (which is also what the built-in constructors end in): each field,
    in declaration order, through the class's own converter (``attrs.setters.convert``, so
    converters that take self or the field work too), then ``attrs.validate``. The converted
    value is the one kept, as an initialiser keeps it. Whatever the class raises becomes a
    LoadError naming the place in the architecture; so does a field that does not hold the
    Param or layer its annotation declares (declared.py)."""
    cls = plan.cls
    where = f"architecture at {plan.path or 'the root'}"
    node = cls.__new__(cls)
    for field in attrs.fields(cls):
        value = fields[field.name]
        try:
            value = attrs.setters.convert(node, field, value)
        except Exception as exc:  # the class's own check, whatever it raises
            raise LoadError(f"{where}: {plan.name}.{field.name}={_SHORT.repr(value)} is refused "
                            f"by the class: {exc}") from None
        object.__setattr__(node, field.name, value)
    try:
        attrs.validate(node)
    except Exception as exc:  # the class's own validators, whatever they raise
        raise LoadError(f"{where}: the stored {plan.name} is refused by its validators: "
                        f"{exc}") from None
    check_declared(node, where)
    return node
