"""Built-in layers: Dense/Affine, Chain, activations, Embedding, LayerNorm, Dropout."""

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
from .chain import Chain
from .dense import Affine, Dense

__all__ = [
    "GELU", "Activation", "Affine", "Chain", "Context", "Dense", "ReLU", "Sigmoid",
    "Softmax", "Tanh", "gelu", "layer", "relu", "sigmoid", "softmax", "tanh",
]
