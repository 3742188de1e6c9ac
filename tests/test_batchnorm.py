"""layers.BatchNorm against torch.nn.BatchNorm1d/2d: outputs, gradients and running
statistics after several training steps, both momenta; ms.check_gradients in both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import to_numpy

import modelsync as ms
from modelsync import layers

# float32 tolerances: outputs and gradients of unit scale, statistics over <= 240 values
ATOL_Y, ATOL_DX, ATOL_STATS = 1e-5, 1e-4, 1e-5

SHAPES = [((8, 3), torch.nn.BatchNorm1d), ((6, 3, 5), torch.nn.BatchNorm1d),
          ((4, 3, 5, 4), torch.nn.BatchNorm2d)]


def twins(torch_class, momentum, rng, affine=True, tracking=True):
    ours = layers.BatchNorm(3, momentum=momentum, affine=affine, track_running_stats=tracking)
    theirs = torch_class(3, momentum=momentum, affine=affine, track_running_stats=tracking)
    if affine:
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(rng.normal(size=3), dtype=torch.float32))
            theirs.bias.copy_(torch.tensor(rng.normal(size=3), dtype=torch.float32))
        ours.weight.assign(theirs.weight.detach().numpy())
        ours.bias.assign(theirs.bias.detach().numpy())
    return ours, theirs


@pytest.mark.parametrize("shape, torch_class", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_training_matches_torch_outputs_gradients_and_running_stats(
        shape, torch_class, momentum, dev, rng):
    ours, theirs = twins(torch_class, momentum, rng)
    ours = ms.to_device(ours, dev)
    for _ in range(4):
        x = (rng.normal(size=shape) * 2 + 1).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dy))
        for p in ms.params(ours):
            p.grad = None
        y, pullback = ours.forward(ms.to_device(x, dev), layers.Context(train=True))
        dx = pullback(ms.to_device(dy, dev))
        np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), atol=ATOL_Y)
        np.testing.assert_allclose(to_numpy(dx), xt.grad.numpy(), atol=ATOL_DX)
        np.testing.assert_allclose(to_numpy(ours.weight.grad), theirs.weight.grad.numpy(),
                                   atol=ATOL_DX * 10)
        np.testing.assert_allclose(to_numpy(ours.bias.grad), theirs.bias.grad.numpy(),
                                   atol=ATOL_DX * 10)
        theirs.weight.grad = theirs.bias.grad = None
    np.testing.assert_allclose(to_numpy(ours.running_mean.value), theirs.running_mean.numpy(),
                               atol=ATOL_STATS)
    np.testing.assert_allclose(to_numpy(ours.running_var.value), theirs.running_var.numpy(),
                               atol=ATOL_STATS)
    assert int(to_numpy(ours.num_batches_tracked.value)) == int(theirs.num_batches_tracked) == 4


@pytest.mark.parametrize("shape, torch_class", SHAPES)
def test_evaluation_uses_the_running_stats_as_torch_does(shape, torch_class, dev, rng):
    ours, theirs = twins(torch_class, 0.3, rng)
    for _ in range(3):
        x = (rng.normal(size=shape) * 3 - 1).astype(np.float32)
        theirs(torch.tensor(x))
        ours(x, train=True)
    theirs.eval()
    ours = ms.to_device(ours, dev)
    before = {k: to_numpy(b.value) for k, b in ms.named_buffers(ours).items()}
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(dy))
    y, pullback = ours.forward(ms.to_device(x, dev), layers.Context(train=False))
    np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), atol=ATOL_Y)
    np.testing.assert_allclose(to_numpy(pullback(ms.to_device(dy, dev))), xt.grad.numpy(),
                               atol=ATOL_DX)
    for k, b in ms.named_buffers(ours).items():  # evaluation reads them, changes nothing
        assert np.array_equal(to_numpy(b.value), before[k])


@pytest.mark.parametrize("affine, tracking", [(False, True), (True, False), (False, False)])
def test_without_affine_or_running_stats_matches_torch(affine, tracking, rng):
    ours, theirs = twins(torch.nn.BatchNorm2d, 0.1, rng, affine=affine, tracking=tracking)
    assert (ours.weight is None) == (not affine)
    assert (ms.named_buffers(ours) == {}) == (not tracking)
    for train in (True, False):
        theirs.train(train)
        x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
        np.testing.assert_allclose(ours(x, train=train), theirs(torch.tensor(x)).detach().numpy(),
                                   atol=ATOL_Y)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 2, 4)])
def test_check_gradients_passes_and_leaves_the_layer_unchanged(train, shape, rng):
    bn = layers.BatchNorm(3, momentum=0.2)
    bn(rng.normal(size=shape).astype(np.float32), train=True)  # some statistics
    before = {k: np.array(b.value) for k, b in ms.named_buffers(bn).items()}
    ms.check_gradients(bn, rng.normal(size=shape).astype(np.float32), train=train)
    for k, b in ms.named_buffers(bn).items():
        assert np.array_equal(b.value, before[k]) and b.dtype == before[k].dtype
    assert bn.weight.grad is None


def test_torch_state_dict_loads_into_batchnorm_and_back(rng):
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3)
    for _ in range(2):
        theirs(torch.tensor(rng.normal(size=(4, 3, 2, 2)), dtype=torch.float32))
    ours = layers.BatchNorm(3)
    ms.load_into(ours, theirs.state_dict(), check="structure")
    assert int(ours.num_batches_tracked.value) == 2
    np.testing.assert_array_equal(ours.running_var.value, theirs.running_var.numpy())
    sd = ms.state_dict(ours)
    assert list(sd) == list(theirs.state_dict())
    back = torch.nn.BatchNorm2d(3)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert int(back.num_batches_tracked) == 2
    assert torch.equal(back.running_mean, theirs.running_mean)


@pytest.mark.parametrize("bad, words", [
    (dict(num_features=0), "num_features=0"),
    (dict(momentum=1.5), "momentum=1.5"),
    (dict(eps=0.0), "eps=0.0"),
    (dict(affine="yes"), "affine='yes'"),
    (dict(dtype="int32"), "dtype='int32'"),
])
def test_bad_arguments_are_named(bad, words):
    args = {"num_features": 3, **bad}
    with pytest.raises((ms.ArgumentError, ms.ArgumentTypeError), match=words):
        layers.BatchNorm(args.pop("num_features"), **args)


def test_bad_inputs_name_the_path_and_change_nothing(rng):
    model = layers.Chain(layers.BatchNorm(3))
    with pytest.raises(ms.ArgumentError, match="layers.0.*shape \\(4, 5\\).*C=num_features=3"):
        model(np.zeros((4, 5), np.float32))
    with pytest.raises(ms.ArgumentError, match="more than 1 value per channel"):
        model(np.zeros((1, 3), np.float32), train=True)
    assert int(model.layers[0].num_batches_tracked.value) == 0
