"""Chain: layers applied one after another."""

from __future__ import annotations

from typing import Any

import attrs

from ..tree import TrackedList
from .base import Context, layer


@layer
@attrs.define(eq=False, init=False)
class Chain:
    """``Chain(a, b, c)(x) == c(b(a(x)))``; the layers are held in ``.layers``."""

    layers: list[Any]

    def __init__(self, *layers: Any) -> None:
        from .activations import as_layer

        self.__attrs_init__(TrackedList(
            as_layer(item, f"Chain argument {i}") for i, item in enumerate(layers)))

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        pullbacks = []
        for i, child in enumerate(self.layers):
            x, pullback = child.forward(x, ctx.child(f"layers.{i}"))
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
