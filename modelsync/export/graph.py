"""The ONNX graph being built: nodes, initializers (a Param stored once, however often it is
used: ties stay ties) and fresh value names. Built with ``onnx.helper``, never by hand."""

from __future__ import annotations

from typing import Any

import numpy as np


class GraphBuilder:
    """Collects what an export rule emits; ``node`` returns the output name(s)."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self._numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._by_param: dict[int, str] = {}
        self._names: set[str] = set()

    def fresh(self, hint: str) -> str:
        """A value name not used yet, readable from ``hint`` (a layer path)."""
        base = (hint or "v").replace("/", ".")
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def param(self, p: Any, path: str) -> str:
        """The initializer holding Param ``p``'s values (made once per Param, named by the
        first path it is exported under)."""
        known = self._by_param.get(id(p))
        if known is None:
            known = self.constant(host_values(p.value), path)
            self._by_param[id(p)] = known
        return known

    def constant(self, array: Any, hint: str) -> str:
        """An initializer holding ``array`` (a host array)."""
        name = self.fresh(hint)
        self.initializers.append(self._numpy_helper.from_array(np.asarray(array), name))
        return name

    def scalar(self, value: float, dtype: Any, hint: str) -> str:
        """A 0-d initializer holding ``value`` in ``dtype`` (a layer's floating dtype)."""
        return self.constant(np.asarray(value, dtype=dtype), hint)

    def ints(self, values: Any, hint: str) -> str:
        """An int64 1-D initializer (shapes, axes, indices)."""
        return self.constant(np.asarray(values, dtype=np.int64).reshape(-1), hint)

    def node(self, op: str, inputs: list[str], hint: str, *, outputs: int = 1,
             **attributes: Any) -> Any:
        """Add one ``op`` node; its output name, or a list of ``outputs`` names."""
        names = [self.fresh(f"{hint}.{op}" if outputs == 1 else f"{hint}.{op}.{i}")
                 for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, names, name=self.fresh(
            f"node.{hint}.{op}"), **attributes))
        return names[0] if outputs == 1 else names


def host_values(value: Any) -> np.ndarray:
    """A Param's values as a host NumPy array, through the counted door when on a device."""
    if isinstance(value, np.ndarray):
        return value
    from ..devices import HOST
    from ..transfers import copy_to

    return np.asarray(copy_to(value, HOST, reason="export_onnx", what="param"))
