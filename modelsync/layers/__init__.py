"""Built-in layers: Dense/Affine, Chain and the combinators (SkipConnection, Parallel),
activations, Embedding, normalisation, Dropout, convolutions and pooling, shape layers,
attention and positions, recurrent layers."""

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
from .attention import MultiHeadAttention
from .base import Context, layer
from .chain import Chain
from .combinators import Parallel, SkipConnection
from .dense import Affine, Dense
from .dropout import Dropout
from .embedding import Embedding
from .norm import LayerNorm
from .positional import PositionalEmbedding
from .recurrent import GRU, LSTM, LastStep
from .rmsnorm import RMSNorm
from .unembed import Unembed

__all__ = [
    "Activation", "Affine", "Chain", "Context", "Dense", "Dropout", "Embedding", "GELU", "GRU",
    "LSTM", "LastStep", "LayerNorm", "MultiHeadAttention", "Parallel", "PositionalEmbedding",
    "RMSNorm", "ReLU", "Sigmoid", "SkipConnection", "Softmax", "Tanh", "Unembed", "gelu",
    "layer", "relu", "sigmoid", "softmax", "tanh",
]
