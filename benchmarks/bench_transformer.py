"""A pre-norm transformer block's forward and backward in modelsync against the same block in
PyTorch on the CPU, float32, the same threads (torch.set_num_threads(2); NumPy's BLAS uses
the machine's 2 cores).

The block, batch 16, sequence 64, width 128, 4 heads: ``x + MHA(LN(x))``, then
``x + MLP(LN(x))`` with the MLP ``128 -> 512 (gelu, tanh form) -> 128``, each residual a
``layers.SkipConnection``. modelsync runs
``ms.backprop`` with an MSE loss; torch runs ``mse_loss(block(x), target).backward()``; both
start from the same weights and clear their gradients every call (torch: set to None). The
attention layer alone (forward and backward) is reported for information. Timed in turns;
a row is the median of the per-turn ratios.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    NO_TORCH,
    Row,
    Settings,
    compared,
    goal_of,
    in_turns,
    main,
    na_row,
    optional_torch,
)

import modelsync as ms  # noqa: E402
from modelsync import layers, losses  # noqa: E402
from modelsync.layers.base import Context  # noqa: E402

torch = optional_torch()

FULL_SIZE = (16, 64, 128, 4, 512)  # batch, sequence, width, heads, MLP hidden
TINY_SIZE = (2, 5, 8, 2, 16)


def ms_block(width: int, heads: int, hidden: int) -> Any:
    return layers.Chain(
        layers.SkipConnection(layers.Chain(layers.LayerNorm(width),
                                           layers.MultiHeadAttention(width, heads, seed=1))),
        layers.SkipConnection(layers.Chain(layers.LayerNorm(width),
                                           layers.Dense(width, hidden, "gelu", seed=2),
                                           layers.Dense(hidden, width, seed=3))))


class TorchBlock(torch.nn.Module if torch is not None else object):
    """The same block in torch, its Parameters loaded from a modelsync block."""

    def __init__(self, block: Any) -> None:
        super().__init__()
        attn_part, mlp_part = block.layers[0].layer, block.layers[1].layer
        width = attn_part.layers[1].dim
        self.ln1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, attn_part.layers[1].num_heads,
                                                batch_first=True)
        self.ln2 = torch.nn.LayerNorm(width)
        hidden = mlp_part.layers[1].out_features
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, hidden),
                                       torch.nn.GELU(approximate="tanh"),
                                       torch.nn.Linear(hidden, width))
        names = {"ln1": attn_part.layers[0], "attn": attn_part.layers[1],
                 "ln2": mlp_part.layers[0], "mlp.0": mlp_part.layers[1],
                 "mlp.2": mlp_part.layers[2]}
        state = {f"{prefix}.{k}": torch.from_numpy(v) for prefix, part in names.items()
                 for k, v in ms.state_dict(part).items()}
        self.load_state_dict(state, strict=True)

    def forward(self, x: Any) -> Any:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


def block_rows(settings: Settings) -> Iterator[Row]:
    n, t, width, heads, hidden = TINY_SIZE if settings.tiny else FULL_SIZE
    what = (f"pre-norm transformer block forward+backward (batch {n}, sequence {t}, width "
            f"{width}, {heads} heads, MLP {hidden}), modelsync host vs torch CPU")
    if torch is None:
        yield na_row(what, goal_of(1.5), NO_TORCH)
        yield na_row("MultiHeadAttention forward+backward alone vs torch", goal_of(None),
                     NO_TORCH)
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, t, width)).astype(np.float32)
    target = rng.standard_normal((n, t, width)).astype(np.float32)
    block = ms_block(width, heads, hidden)
    module = TorchBlock(block)
    params = ms.params(block)
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)

    def ours() -> float:
        for p in params:
            p.grad = None
        return ms.backprop(block, losses.mse, x, target)

    def theirs() -> float:
        module.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(module(xt), tt)
        loss.backward()
        return float(loss.detach())

    agree = abs(ours() - theirs())
    grad_gap = max(float(np.abs(np.asarray(p.grad) - q.grad.numpy()).max())
                   for p, q in zip(params, _torch_order(module), strict=True))
    timings = in_turns({"torch": theirs, "modelsync": ours}, settings)
    yield compared(what, timings, "modelsync", "torch", 1.5,
                   f"losses differ by {agree:.1e}, gradients by at most {grad_gap:.1e}")
    yield attention_row(settings, x)


def _torch_order(module: Any) -> list[Any]:
    """torch's Parameters in the modelsync block's ms.params order."""
    return [module.ln1.weight, module.ln1.bias, module.attn.in_proj_weight,
            module.attn.in_proj_bias, module.attn.out_proj.weight, module.attn.out_proj.bias,
            module.ln2.weight, module.ln2.bias, module.mlp[0].weight, module.mlp[0].bias,
            module.mlp[2].weight, module.mlp[2].bias]


def attention_row(settings: Settings, x: np.ndarray) -> Row:
    width = x.shape[-1]
    heads = 2 if settings.tiny else 4
    attn = layers.MultiHeadAttention(width, heads, seed=0)
    module = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in ms.state_dict(attn).items()})
    dy = np.ones_like(x)
    params = ms.params(attn)
    xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)

    def ours() -> None:
        for p in params:
            p.grad = None
        attn.forward(x, Context(train=True))[1](dy)

    def theirs() -> None:
        module.zero_grad(set_to_none=True)
        xt.grad = None
        module(xt, xt, xt, need_weights=False)[0].backward(dyt)

    timings = in_turns({"torch": theirs, "modelsync": ours}, settings)
    return compared("MultiHeadAttention forward+backward alone vs torch", timings, "modelsync",
                    "torch", None)


def rows(settings: Settings) -> Iterator[Row]:
    yield from block_rows(settings)


if __name__ == "__main__":
    main(rows, __doc__)
