"""The demo's three models (``modelsync demo --model mlp|cnn|lm``): what each trains on, how
it is built, and how it is scored.

Each `Workload` is data plus a builder; the workflow that runs it in each conversion mode
(convert, train, EMA copy, save, reload, sync) is `modelsync.demo`'s and the same for all
three, so the ownership guarantees are shown on an MLP, a CNN with BatchNorm and a
decoder-only transformer with tied embeddings alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from . import layers, losses
from .datasets import DIGITS_CITATION, load_digits
from .errors import ArgumentError

HIDDEN = 128  # the MLP's hidden width


@attrs.frozen
class Workload:
    """One demo model: ``data()`` gives host arrays ``(x_train, y_train, x_test, y_test)``,
    ``build(seed)`` the host model; ``epochs``, ``lr`` and ``batch_size`` its training."""

    name: str
    file_stem: str  # the saved files' names: <file_stem>-<mode>.safetensors
    description: str
    citation: str
    data: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    build: Callable[[int], Any]
    epochs: int
    lr: float
    batch_size: int
    loss: Any = losses.cross_entropy
    #: Whether the model has BatchNorm (the demo then also shows ``ms.update_bn`` on the EMA).
    batchnorm: bool = False
    #: Whether it is a language model (scored per token; the demo prints a sample).
    language: bool = False


# -- mlp --------------------------------------------------------------------------------------
def build_mlp(seed: int) -> Any:
    """The digits MLP: Dense(64, 128, relu) -> Dense(128, 10)."""
    return layers.Chain(layers.Dense(64, HIDDEN, "relu", seed=seed),
                        layers.Dense(HIDDEN, 10, seed=seed + 1))


# -- cnn --------------------------------------------------------------------------------------
def digits_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as (n, 1, 8, 8) images, channels first."""
    x_train, y_train, x_test, y_test = load_digits(flatten=False)
    return x_train[:, None], y_train, x_test[:, None], y_test


def build_cnn(seed: int) -> Any:
    """Conv(1→16, 3×3) BN relu, Conv(16→32, 3×3) BN relu, MaxPool 2, Flatten, Dense(512, 10)."""
    return layers.Chain(
        layers.Conv2d(1, 16, 3, padding=1, seed=seed), layers.BatchNorm(16), "relu",
        layers.Conv2d(16, 32, 3, padding=1, seed=seed + 1), layers.BatchNorm(32), "relu",
        layers.MaxPool2d(2), layers.Flatten(),
        layers.Dense(32 * 4 * 4, 10, seed=seed + 2))


# -- lm ---------------------------------------------------------------------------------------
#: The characters the language model reads and writes: newline and printable ASCII; any other
#: character of the text is read as "?".
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
CONTEXT = 64  # tokens per training sequence (and the positional table's length)
WIDTH = 64
HEADS = 4
BLOCKS = 2
LM_TRAIN_SEQUENCES = 2048
LM_VALID_SEQUENCES = 256
PYDOC_CITATION = "the text of Python's own pydoc_data.topics (the standard library's help)"


def encode(text: str) -> np.ndarray:
    """``text`` as int64 token ids into `VOCAB`."""
    lookup = np.full(128, VOCAB.index("?"), dtype=np.int64)
    for i, ch in enumerate(VOCAB):
        lookup[ord(ch)] = i
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)
    return lookup[np.minimum(codes, 127)]


def decode(tokens: Any) -> str:
    return "".join(VOCAB[int(t)] for t in tokens)


def corpus() -> str:
    """Every help topic of ``pydoc_data.topics`` in a fixed order (~465 KB, no download)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def text_sequences(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-character pairs: inputs (n, CONTEXT) and targets shifted by one, from windows of
    the first 90% of the text (training) and the last 10% (validation), windows drawn once
    with a fixed seed."""
    tokens = encode(corpus())
    split = int(len(tokens) * 0.9)
    rng = np.random.default_rng(seed)

    def windows(part: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(part) - CONTEXT - 1, size=count)
        rows = part[starts[:, None] + np.arange(CONTEXT + 1)]
        return rows[:, :-1].copy(), rows[:, 1:].copy()

    x_train, y_train = windows(tokens[:split], LM_TRAIN_SEQUENCES)
    x_valid, y_valid = windows(tokens[split:], LM_VALID_SEQUENCES)
    return x_train, y_train, x_valid, y_valid


def build_lm(seed: int) -> Any:
    """A character-level decoder-only transformer: token and learned positional embeddings,
    `BLOCKS` pre-norm blocks (causal self-attention, GELU MLP, each a residual
    SkipConnection), a final LayerNorm, and the output projection tied to the token
    embedding (`layers.Unembed`)."""
    embed = layers.Embedding(len(VOCAB), WIDTH, seed=seed)
    blocks = []
    for b in range(BLOCKS):
        s = seed + 10 * (b + 1)
        blocks += [
            layers.SkipConnection(layers.Chain(
                layers.LayerNorm(WIDTH),
                layers.MultiHeadAttention(WIDTH, HEADS, causal=True, seed=s))),
            layers.SkipConnection(layers.Chain(
                layers.LayerNorm(WIDTH), layers.Dense(WIDTH, 4 * WIDTH, "gelu", seed=s + 1),
                layers.Dense(4 * WIDTH, WIDTH, seed=s + 2))),
        ]
    return layers.Chain(embed, layers.PositionalEmbedding(CONTEXT, WIDTH, seed=seed + 1),
                        *blocks, layers.LayerNorm(WIDTH), layers.Unembed(embed))


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload(
        "mlp", "digits-mlp", f"Dense(64, {HIDDEN}, relu) -> Dense({HIDDEN}, 10)", DIGITS_CITATION,
        load_digits, build_mlp, epochs=12, lr=3e-3, batch_size=32),
    "cnn": Workload(
        "cnn", "digits-cnn", "Conv2d(1, 16, 3) BatchNorm relu -> Conv2d(16, 32, 3) BatchNorm "
        "relu -> MaxPool2d(2) -> Flatten -> Dense(512, 10)", DIGITS_CITATION,
        digits_images, build_cnn, epochs=8, lr=3e-3, batch_size=32, batchnorm=True),
    "lm": Workload(
        "lm", "pydoc-lm", f"character transformer: Embedding({len(VOCAB)}, {WIDTH}) + positions, "
        f"{BLOCKS} pre-norm blocks ({HEADS}-head causal attention, GELU MLP), LayerNorm, "
        "Unembed tied to the Embedding", PYDOC_CITATION,
        text_sequences, build_lm, epochs=1, lr=3e-3, batch_size=16, language=True),
}


def workload(name: str) -> Workload:
    """The workload called ``name``; ArgumentError listing the choices otherwise."""
    try:
        return WORKLOADS[name]
    except (KeyError, TypeError):
        raise ArgumentError(
            f"model={name!r} is not a demo model; expected one of {', '.join(WORKLOADS)}"
        ) from None
