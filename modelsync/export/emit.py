"""Export rules and the walk that applies them: each layer type has a rule that writes its
ONNX nodes; a layer holding others asks the emitter to emit its children.

A rule is ``rule(g, layer, x, path) -> str``: ``g`` is the `Emitter` (``g.param``,
``g.node``, ``g.constant``, ``g.ints``, ``g.emit`` for a child), ``x`` the input `Value`
(its ONNX name and a host example of it, so a rule can read static sizes), and it returns
the name of its output (or, where it already has it, the output `Value`: a Chain returns its
last child's, so the example is not computed again). Users register rules for their own
layers with ``@ms.export_rule(MyLayer)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from ..errors import ArgumentTypeError, ExportError
from ..layers.base import Context, forward_pair
from ..tree import is_layer
from .graph import GraphBuilder

Rule = Callable[["Emitter", Any, "Value", str], "str | Value"]
_RULES: dict[type, Rule] = {}


def export_rule(layer_type: type) -> Callable[[Rule], Rule]:
    """Decorator: register ``rule`` as how layers of ``layer_type`` export to ONNX."""
    if not isinstance(layer_type, type):
        raise ArgumentTypeError(
            f"layer_type is a {type(layer_type).__name__}; expected a layer class registered "
            "with @ms.layer")

    def register(rule: Rule) -> Rule:
        if not callable(rule):
            raise ArgumentTypeError(f"rule is a {type(rule).__name__}; expected a function")
        _RULES[layer_type] = rule
        return rule

    return register


def rule_for(layer_type: type) -> Rule | None:
    return _RULES.get(layer_type)


@attrs.frozen
class Value:
    """An ONNX value: its name, and what it holds for the export's example batch."""

    name: str
    example: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


class Emitter(GraphBuilder):
    """The graph under construction plus the walk: ``emit`` applies a layer's rule."""

    def emit(self, node: Any, x: Value, path: str) -> Value:
        """Write ``node``'s nodes reading ``x``; its output Value."""
        if not is_layer(node):
            raise ExportError(f"{path or 'model'}: a {type(node).__name__} is not a layer")
        rule = rule_for(type(node))
        if rule is None:
            raise ExportError(
                f"{path or 'model'}: layer type {type(node).__name__} has no ONNX export rule; "
                "register one with @ms.export_rule("
                f"{type(node).__name__}) (see docs/api.md, 'Export')")
        out = rule(self, node, x, path)
        if isinstance(out, Value):
            return out
        y, _ = forward_pair(node, x.example, Context(train=False, path=path))
        return Value(out, np.asarray(y))


def child_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
