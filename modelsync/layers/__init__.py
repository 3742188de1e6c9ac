"""Built-in layers: Dense/Affine, Chain, SkipConnection, Parallel, activations, Embedding,
LayerNorm, BatchNorm, Dropout."""

from .activations import (
    GELU,
    Activation,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    gelu,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from .base import Context, layer
from .batchnorm import BatchNorm
from .chain import Chain
from .combinators import Parallel, SkipConnection
from .dense import Affine, Dense
from .dropout import Dropout
from .embedding import Embedding
from .norm import LayerNorm

__all__ = [
    "GELU", "Activation", "Affine", "Chain", "Context", "Dense", "Dropout", "Embedding",
    "LayerNorm", "ReLU", "Sigmoid",
    "Parallel", "SkipConnection",
    "Softmax", "Tanh", "gelu", "layer", "relu", "sigmoid", "softmax", "tanh",
]
__all__ += ["BatchNorm"]
