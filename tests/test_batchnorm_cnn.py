"""BatchNorm in a CNN (issue 18 with the convolution layers): a torch nn.Sequential of
Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear loads by name, trains to the same
running statistics, predicts the same in evaluation mode, and survives the conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim


def pair():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    ours = layers.Chain(layers.Conv2d(1, 4, 3, padding=1), layers.BatchNorm(4), layers.ReLU(),
                        layers.MaxPool2d(2), layers.Flatten(), layers.Dense(4 * 4 * 4, 3))
    names = ms.interop.torch_sequential_names(ours)
    ms.load_into(ours, theirs.state_dict(), check="structure", names=names)
    return ours, theirs, names


def test_a_torch_cnn_with_batchnorm_trains_and_predicts_the_same(dev):
    ours, theirs, names = pair()
    assert names["layers.1.running_var"] == "1.running_var"
    ours = ms.to_device(ours, dev)
    rng = np.random.default_rng(0)
    opt = optim.SGD(ms.params(ours), lr=0.05)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05)
    for _ in range(3):
        x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 3, 8)
        opt.zero_grad()
        ms.backprop(ours, losses.cross_entropy, ms.to_device(x, dev), ms.to_device(y, dev))
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                          torch.from_numpy(y)).backward()
        topt.step()
    bn = ours.layers[1]
    np.testing.assert_allclose(to_numpy(bn.running_mean.value),
                               theirs[1].running_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(to_numpy(bn.running_var.value),
                               theirs[1].running_var.numpy(), atol=1e-5)
    assert int(to_numpy(bn.num_batches_tracked.value)) == 3
    theirs.eval()
    x = rng.normal(size=(5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(to_numpy(ours(ms.to_device(x, dev))),
                               theirs(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
    back = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in
                          ms.state_dict(ours, names=names).items()})
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(),
                               to_numpy(ours(ms.to_device(x, dev))), atol=1e-4)


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_a_cnn_with_batchnorm_converts_saves_and_loads(mode, tmp_path):
    ours, _, _ = pair()
    rng = np.random.default_rng(1)
    ours(rng.normal(size=(4, 1, 8, 8)).astype(np.float32), train=True)
    host = {k: np.array(b.value) for k, b in ms.named_buffers(ours).items()}
    converted = ms.to_device(ours, "sim:1", mode=mode)
    ms.save(converted, tmp_path / "cnn.safetensors")
    loaded = ms.load(tmp_path / "cnn.safetensors")
    assert ms.graph_id(loaded) == ms.graph_id(converted)
    for k, v in ms.named_buffers(loaded).items():
        assert np.array_equal(v.value, host[k])
    x = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), to_numpy(converted(ms.to_device(x, "sim:1"))),
                               atol=1e-5)
    if mode == "wrap":
        ms.detach(converted)
