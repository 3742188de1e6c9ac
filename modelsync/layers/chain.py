"""Chain: layers applied one after another."""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ArgumentTypeError
from ..tree import TrackedList
from .base import Context, forward_pair, layer


def _as_layers(items: Any) -> TrackedList:
    """``items`` as a TrackedList of layers (activation names and functions become
    Activation layers); ArgumentTypeError naming the first item that is not a layer."""
    from .activations import as_layer

    if not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(
            f"Chain.layers is a {type(items).__name__}; expected a list of layers")
    return TrackedList(as_layer(item, f"Chain argument {i}") for i, item in enumerate(items))


@layer
@attrs.define(eq=False, init=False)
class Chain:
    """``Chain(a, b, c)(x) == c(b(a(x)))``; the layers are held in ``.layers``."""

    # The converter is the constructor's check, run again by attrs on assignment and by
    # ms.load on a stored list: whatever the field holds is a TrackedList of layers.
    layers: list[Any] = attrs.field(converter=_as_layers)

    def __init__(self, *layers: Any) -> None:
        self.__attrs_init__(layers)

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        pullbacks = []
        for i, child in enumerate(self.layers):
            x, pullback = forward_pair(child, x, ctx.child(f"layers.{i}"))
            pullbacks.append(pullback)

        def pullback(dy: Any) -> Any:
            for back in reversed(pullbacks):
                dy = back(dy)
            return dy

        return x, pullback

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Any:
        return self.layers[index]
