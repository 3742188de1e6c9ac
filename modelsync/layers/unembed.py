"""Unembed: the output projection tied to an Embedding, ``y = x @ embedding.weight.T``."""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ArgumentTypeError
from ..params import Param
from ..xp import namespace
from .base import Context, accumulate, as_layer_dtype, check_features, check_input, layer
from .embedding import Embedding


def _holds_embedding(node: Any, field: Any, value: Any) -> None:
    if not isinstance(value, Embedding):
        raise ArgumentTypeError(
            f"Unembed.{field.name} holds a {type(value).__name__}; expected a "
            "layers.Embedding (whose weight the Unembed shares)")


@layer
@attrs.define(eq=False, init=False)
class Unembed:
    """Scores over an Embedding's vocabulary: ``(..., dim) -> (..., num)``, with
    ``y = x @ embedding.weight.T`` (weight tying, as in GPT-2 and "Using the Output Embedding
    to Improve Language Models").

    The Unembed holds the Embedding layer itself, not a copy of its weight: a model holding
    both has one Param, listed once by ``ms.params`` (first at the Embedding's path), and
    every conversion, sync and ``ms.save``/``ms.load`` keeps the layer shared (the tree map
    handles a layer seen twice once), so ``model.unembed.embedding.weight is
    model.embed.weight`` holds for the result too. Backward adds this layer's gradient into
    the same ``weight.grad`` as the Embedding's own lookup.
    """

    embedding: Embedding = attrs.field(validator=_holds_embedding)

    def __init__(self, embedding: Embedding) -> None:
        self.__attrs_init__(embedding)

    @property
    def weight(self) -> Param:
        """The tied Param: the embedding's ``weight`` itself (read-only here)."""
        return self.embedding.weight

    def forward(self, x: Any, ctx: Context) -> tuple[Any, Any]:
        table = self.embedding.weight
        weight = table.value
        check_input(x, table.device, ctx)
        dim, num = self.embedding.dim, self.embedding.num
        check_features(x, dim, ctx, "Unembed", "dim")
        in_dtype = x.dtype
        x = as_layer_dtype(x, weight.dtype, ctx, "Unembed")
        xp = namespace(x, weight)
        lead = tuple(x.shape[:-1])
        x2 = xp.reshape(x, (-1, dim))
        y = x2 @ xp.matrix_transpose(weight)

        def pullback(dy: Any) -> Any:
            dy2 = xp.reshape(dy, (-1, num))
            if dy2.dtype != weight.dtype:
                dy2 = xp.astype(dy2, weight.dtype)
            accumulate(table, xp.matrix_transpose(dy2) @ x2)
            dx = xp.reshape(dy2 @ weight, (*lead, dim))
            return dx if dx.dtype == in_dtype else xp.astype(dx, in_dtype)

        return xp.reshape(y, (*lead, num)), pullback
