"""Built-in layers: Dense/Affine, Chain and the combinators (SkipConnection, Parallel),
activations, Embedding, normalisation (LayerNorm, RMSNorm, BatchNorm), Dropout, convolutions
and pooling, shape layers, attention and positions, recurrent layers."""

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
from .batchnorm import BatchNorm
from .chain import Chain
from .combinators import Parallel, SkipConnection
from .conv import Conv1d, Conv2d
from .dense import Affine, Dense
from .dropout import Dropout
from .embedding import Embedding
from .norm import LayerNorm
from .pool import AvgPool2d, GlobalAvgPool, MaxPool2d
from .positional import PositionalEmbedding
from .recurrent import GRU, LSTM, LastStep
from .rmsnorm import RMSNorm
from .shape import Flatten, Reshape
from .unembed import Unembed

__all__ = [
    "Activation", "Affine", "Chain", "Context", "Dense", "Dropout", "Embedding", "GELU", "GRU",
    "LSTM", "LastStep", "LayerNorm", "MultiHeadAttention", "Parallel", "PositionalEmbedding",
    "RMSNorm", "ReLU", "Sigmoid", "SkipConnection", "Softmax", "Tanh", "Unembed", "gelu",
    "layer", "relu", "sigmoid", "softmax", "tanh",
    "AvgPool2d", "Conv1d", "Conv2d", "Flatten", "GlobalAvgPool", "MaxPool2d", "Reshape",
]
__all__ += ["BatchNorm"]
