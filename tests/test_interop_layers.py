"""PyTorch weights by name for the CNN, transformer and RNN layers: a torch nn.Sequential
holding Conv2d, MaxPool2d, Flatten, Linear, MultiheadAttention, GRU and LSTM loads into the
equivalent modelsync Chain through ms.interop.torch_sequential_names and predicts the same."""

from __future__ import annotations

import numpy as np
import pytest

import modelsync as ms
from modelsync import layers

torch = pytest.importorskip("torch", reason="torch (the reference) is not installed")

#: float32 on both sides: the same arithmetic up to operation order
RTOL, ATOL = 1e-4, 1e-5


def _state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def test_a_torch_cnn_sequential_loads_by_name_and_predicts_the_same():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding="same", groups=2), torch.nn.Flatten(),
        torch.nn.Linear(6 * 4 * 4, 10))
    ours = layers.Chain(layers.Conv2d(1, 4, 3, padding=1), "relu", layers.MaxPool2d(2),
                        layers.Conv2d(4, 6, 3, padding="same", groups=2), layers.Flatten(),
                        layers.Dense(6 * 4 * 4, 10))
    names = ms.interop.torch_sequential_names(ours)
    ms.load_into(ours, _state(net), check="structure", names=names)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ours(x), net(torch.from_numpy(x)).detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    back = ms.state_dict(ours, names=names)
    assert set(back) == set(net.state_dict())


def test_a_torch_sequence_stack_loads_by_name_and_predicts_the_same():
    """nn.Sequential cannot run MultiheadAttention or the RNNs (they return tuples), but it
    holds them, and its state_dict names them; each module is applied by hand on the torch
    side."""
    torch.manual_seed(0)
    dim, steps = 8, 6
    net = torch.nn.Sequential(
        torch.nn.Linear(3, dim), torch.nn.MultiheadAttention(dim, 2, batch_first=True),
        torch.nn.GRU(dim, 5, batch_first=True), torch.nn.LSTM(5, 4, batch_first=True),
        torch.nn.Linear(4, 2))
    ours = layers.Chain(layers.Dense(3, dim), layers.MultiHeadAttention(dim, 2),
                        layers.GRU(dim, 5), layers.LSTM(5, 4), layers.Dense(4, 2))
    names = ms.interop.torch_sequential_names(ours)
    assert names["layers.1.in_proj_weight"] == "1.in_proj_weight"
    assert names["layers.1.out_proj.weight"] == "1.out_proj.weight"
    assert names["layers.2.weight_hh_l0"] == "2.weight_hh_l0"
    ms.load_into(ours, _state(net), check="structure", names=names)
    x = np.random.default_rng(1).standard_normal((4, steps, 3)).astype(np.float32)
    with torch.no_grad():
        h = net[0](torch.from_numpy(x))
        h = net[1](h, h, h, need_weights=False)[0]
        h = net[2](h)[0]
        h = net[3](h)[0]
        expected = net[4](h).numpy()
    np.testing.assert_allclose(ours(x), expected, rtol=RTOL, atol=ATOL)
    assert set(ms.state_dict(ours, names=names)) == set(net.state_dict())
