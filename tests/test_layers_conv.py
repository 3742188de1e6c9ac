"""Convolution, pooling and shape layers (SPEC "Layers for CNNs, transformers and RNNs"):
gradients against finite differences, forward and gradients against torch.nn with the same
weights, every device against the host, a small CNN through copy/move/wrap, sync, save and
load, and the errors bad input gets.

float32 tolerances against torch: rtol=1e-4, atol=1e-5 (both sum the same products in a
different order; the largest differences seen are ~1e-5 on gradients summed over a batch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import sgd_step, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers
from modelsync.devices import device_of
from modelsync.layers import Context

RTOL, ATOL = 1e-4, 1e-5

CONV2D_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=(2, 1), padding=(1, 2)),
    dict(padding=1, dilation=2),
    dict(padding="same"),
    dict(padding="same", dilation=(2, 1)),
    dict(padding="same", kernel_size=(2, 4)),  # even kernel: torch pads the odd one after
    dict(padding="valid", stride=3),
    dict(groups=2, padding=1),
    dict(groups=4, stride=2, padding=1, bias=False),  # depthwise-like: 4 groups of 1
    dict(kernel_size=1),
    dict(kernel_size=(3, 1), stride=(1, 2), dilation=(1, 3), padding=(2, 0)),
]
CONV1D_CASES = [
    dict(),
    dict(stride=2, padding=2),
    dict(padding="same", dilation=3),
    dict(padding="same", kernel_size=4),
    dict(groups=2, dilation=2, bias=False),
]


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def make_conv2d(case, cin=4, cout=8, seed=0):
    case = dict(case)
    kernel = case.pop("kernel_size", 3)
    return layers.Conv2d(cin, cout, kernel, seed=seed, **case), kernel, case


def torch_twin(ours, theirs):
    """Copy our Params into the torch module (same names) and return it."""
    with torch.no_grad():
        for name, p in ms.named_params(ours).items():
            dict(theirs.named_parameters())[name].copy_(torch.from_numpy(to_numpy(p.value)))
    return theirs


def assert_matches_torch(ours, theirs, x):
    """Forward, dx and every Param's gradient of ``ours`` against torch's, for one random
    cotangent."""
    xt = torch.from_numpy(x).requires_grad_()
    yt = theirs(xt)
    for p in ms.params(ours):
        p.grad = None
    y, pullback = ours.forward(x, Context(train=True))
    assert tuple(y.shape) == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    dy = rand(tuple(y.shape), seed=7)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(pullback(dy), xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    params = dict(theirs.named_parameters())
    for name, p in ms.named_params(ours).items():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=name)


# -- torch parity ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_matches_torch(case):
    ours, kernel, rest = make_conv2d(case)
    theirs = torch_twin(ours, torch.nn.Conv2d(4, 8, kernel, **rest))
    assert_matches_torch(ours, theirs, rand((3, 4, 9, 11)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_conv1d_matches_torch(case):
    case = dict(case)
    kernel = case.pop("kernel_size", 3)
    ours = layers.Conv1d(4, 6, kernel, seed=1, **case)
    theirs = torch_twin(ours, torch.nn.Conv1d(4, 6, kernel, **case))
    assert_matches_torch(ours, theirs, rand((3, 4, 13)))


class TorchReshape(torch.nn.Module):
    """torch's per-sample reshape (it has no layer for it)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


POOL_CASES = [
    (lambda: layers.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2)),
    (lambda: layers.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1)),
    (lambda: layers.MaxPool2d((2, 3), stride=1), lambda: torch.nn.MaxPool2d((2, 3), 1)),
    (lambda: layers.AvgPool2d(2), lambda: torch.nn.AvgPool2d(2)),
    (lambda: layers.AvgPool2d(3, 2, 1), lambda: torch.nn.AvgPool2d(3, 2, 1)),
    (lambda: layers.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0)),
     lambda: torch.nn.AvgPool2d((3, 2), (1, 2), (1, 0))),
    (lambda: layers.GlobalAvgPool(),
     lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())),
    (lambda: layers.Flatten(), lambda: torch.nn.Flatten()),
    (lambda: layers.Flatten(2), lambda: torch.nn.Flatten(2)),
    (lambda: layers.Flatten(-2), lambda: torch.nn.Flatten(-2)),
    (lambda: layers.Reshape((-1, 11)), lambda: TorchReshape((-1, 11))),
]


@pytest.mark.parametrize("index", range(len(POOL_CASES)))
def test_parameter_free_layers_match_torch(index):
    ours, theirs = POOL_CASES[index]
    assert_matches_torch(ours(), theirs(), rand((3, 4, 9, 11)))


def test_global_avg_pool_averages_every_axis_after_channels():
    x = rand((2, 3, 4, 5, 6))
    np.testing.assert_allclose(layers.GlobalAvgPool()(x), x.mean(axis=(2, 3, 4)), rtol=1e-6)
    ms.check_gradients(layers.GlobalAvgPool(), x.astype(np.float64))


def test_max_pool_gradient_goes_to_the_first_maximum_as_torch():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)  # every window a tie
    assert_matches_torch(layers.MaxPool2d(2), torch.nn.MaxPool2d(2), x)
    assert_matches_torch(layers.MaxPool2d(3, 1, 1), torch.nn.MaxPool2d(3, 1, 1), x)


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_gradients(case):
    ours, _, _ = make_conv2d(case)
    ms.check_gradients(ours, rand((2, 4, 7, 8), dtype=np.float64))


@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_conv1d_gradients(case):
    case = dict(case)
    kernel = case.pop("kernel_size", 3)
    ms.check_gradients(layers.Conv1d(4, 2, kernel, seed=3, **case),
                       rand((2, 4, 11), dtype=np.float64))


@pytest.mark.parametrize("index", range(len(POOL_CASES)))
def test_parameter_free_layer_gradients(index):
    ours, _ = POOL_CASES[index]
    ms.check_gradients(ours(), rand((2, 4, 9, 11), dtype=np.float64))


def test_gradient_check_catches_a_wrong_conv_pullback(monkeypatch):
    """The check above would fail if the pullback were wrong: break dw and see it caught."""
    from modelsync.layers import conv as conv_module

    real = conv_module.conv

    def broken(*args):
        y, back = real(*args)

        def wrong(dy):
            dx, dw, db = back(dy)
            return dx, dw * 1.01, db

        return y, wrong

    monkeypatch.setattr(conv_module, "conv", broken)
    with pytest.raises(ms.GradientCheckError, match="weight"):
        ms.check_gradients(layers.Conv2d(2, 3, 3, seed=0), rand((2, 2, 5, 5), dtype=np.float64))


# -- initialisation and configuration ----------------------------------------------------------
@pytest.mark.parametrize(("make", "shape", "fan_in"), [
    (lambda s: layers.Conv2d(6, 8, 3, seed=s), (8, 6, 3, 3), 54),
    (lambda s: layers.Conv2d(6, 9, (2, 5), groups=3, seed=s), (9, 2, 2, 5), 20),
    (lambda s: layers.Conv1d(4, 10, 5, groups=2, seed=s), (10, 2, 5), 10),
])
def test_init_is_torch_default_and_seeded(make, shape, fan_in):
    a, b, c = make(0), make(0), make(1)
    assert tuple(a.weight.shape) == shape and tuple(a.bias.shape) == (shape[0],)
    assert a.weight.value.dtype == np.float32
    np.testing.assert_array_equal(a.weight.value, b.weight.value)
    assert not np.array_equal(a.weight.value, c.weight.value)
    bound = 1 / math.sqrt(fan_in)
    for p in (a.weight, a.bias):
        assert np.abs(p.value).max() <= bound
    # torch's own default init draws from the same interval (compared by spread, not values)
    big = make(2)
    assert np.abs(big.weight.value).max() > 0.8 * bound


def test_sizes_become_tuples_and_stride_defaults_to_kernel():
    conv = layers.Conv2d(2, 3, 3, stride=[2, 1], padding=1, dilation=1)
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == (
        (3, 3), (2, 1), (1, 1), (1, 1))
    assert layers.Conv2d(2, 3, 3, padding="same").padding == "same"
    pool = layers.MaxPool2d(3)
    assert (pool.kernel_size, pool.stride, pool.padding) == ((3, 3), (3, 3), (0, 0))
    assert layers.AvgPool2d(2, 1).stride == (1, 1)
    assert layers.Conv2d(2, 3, 3, bias=False).bias is None
    assert layers.Conv1d(2, 3, 4).kernel_size == (4,)


def test_float64_conv_and_float64_batch_into_float32_conv():
    conv = layers.Conv2d(2, 3, 3, dtype="float64", seed=0)
    assert conv.weight.value.dtype == np.float64
    conv32 = layers.Conv2d(2, 3, 3, seed=0)
    x = rand((2, 2, 5, 5), dtype=np.float64)
    y, pullback = conv32.forward(x, Context(train=True))
    assert y.dtype == np.float32
    dx = pullback(np.ones(tuple(y.shape), dtype=np.float32))
    assert dx.dtype == np.float64 and conv32.weight.grad.dtype == np.float32


# -- devices -----------------------------------------------------------------------------------
DEVICE_LAYERS = [
    lambda: layers.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, seed=0),
    lambda: layers.Conv2d(4, 6, (2, 3), padding="same", dilation=2, seed=0),
    lambda: layers.Conv1d(4, 6, 3, padding=1, seed=0),
    lambda: layers.MaxPool2d(3, 2, 1),
    lambda: layers.MaxPool2d(2),
    lambda: layers.AvgPool2d(2, padding=1),
    lambda: layers.AvgPool2d((3, 2)),
    lambda: layers.GlobalAvgPool(),
    lambda: layers.Flatten(),
    lambda: layers.Reshape((2, -1)),
]


@pytest.mark.parametrize("index", range(len(DEVICE_LAYERS)))
def test_every_device_matches_host(dev, index):
    host = DEVICE_LAYERS[index]()
    x = rand((2, 4, 9) if isinstance(host, layers.Conv1d) else (2, 4, 9, 11))
    y, pullback = host.forward(x, Context(train=True))
    dy = rand(tuple(y.shape), seed=3)
    dx = pullback(dy)
    model = ms.to_device(host, dev) if ms.params(host) else host
    xd, dyd = ms.to_device(x, dev), ms.to_device(dy, dev)
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        yd, pullback_d = model.forward(xd, Context(train=True))
        dxd = pullback_d(dyd)
    assert t.count == 0  # everything ran on the device
    assert device_of(yd) == dev and device_of(dxd) == dev
    np.testing.assert_allclose(to_numpy(yd), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dxd), dx, rtol=1e-5, atol=1e-6)
    for p, q in zip(ms.params(host), ms.params(model), strict=True):
        assert device_of(q.grad) == dev
        np.testing.assert_allclose(to_numpy(q.grad), p.grad, rtol=1e-5, atol=1e-5)


def small_cnn(seed: int = 0):
    return layers.Chain(
        layers.Conv2d(1, 4, 3, padding=1, seed=seed), "relu", layers.MaxPool2d(2),
        layers.Conv2d(4, 8, (3, 3), padding="same", seed=seed + 1), "relu",
        layers.GlobalAvgPool(), layers.Dense(8, 3, seed=seed + 2))


def cnn_batch(spec, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    return ms.to_device(x, spec), ms.to_device(y, spec)


def values(model):
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_small_cnn_converts_trains_syncs_saves_and_loads(mode, tmp_path):
    host = small_cnn()
    before = values(host)
    reference = small_cnn()  # the same values, trained on the host for comparison
    model = ms.to_device(host, "sim:1", mode=mode)
    x, y = cnn_batch("sim:1")
    xh, yh = cnn_batch("host")
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        sgd_step(model, x, y)
    assert t.bytes_of("param") == t.bytes_of("grad") == 0
    sgd_step(reference, xh, yh)
    trained = values(model)
    for path, value in values(reference).items():
        np.testing.assert_allclose(trained[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
        assert not np.array_equal(value, before[path]) or path.endswith("bias")

    # sync back into a fresh host model, save, load and check configuration and values
    target = small_cnn(seed=5)
    ms.sync(target, model, check="structure")
    for path, value in values(target).items():
        np.testing.assert_array_equal(value, trained[path])
    file = tmp_path / "cnn.safetensors"
    ms.save(model, file)
    loaded = ms.load(file)
    conv = loaded.layers[3]
    assert isinstance(conv, layers.Conv2d) and conv.kernel_size == (3, 3)
    assert conv.padding == "same" and conv.stride == (1, 1) and type(conv.dilation) is tuple
    pool = loaded.layers[2]
    assert isinstance(pool, layers.MaxPool2d) and pool.kernel_size == pool.stride == (2, 2)
    for path, value in values(loaded).items():
        np.testing.assert_array_equal(value, trained[path])
    np.testing.assert_allclose(to_numpy(loaded(xh)), to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    assert ms.graph_id(loaded) == ms.graph_id(model)


def test_load_rebuilds_every_layer_configuration(tmp_path):
    model = layers.Chain(
        layers.Conv1d(2, 4, 3, stride=2, padding=(1,), dilation=2, groups=2, bias=False),
        layers.Reshape((4, 1, -1)), layers.AvgPool2d((1, 2), stride=1, padding=(0, 1)),
        layers.Flatten(start_dim=-2), layers.Flatten())
    file = tmp_path / "m.safetensors"
    ms.save(model, file)
    loaded = ms.load(file, "sim:1")
    first = loaded.layers[0]
    assert (first.kernel_size, first.stride, first.padding, first.dilation, first.groups) == (
        (3,), (2,), (1,), (2,), 2)
    assert first.bias is None
    assert loaded.layers[1].shape == (4, 1, -1)
    assert loaded.layers[2].kernel_size == (1, 2) and loaded.layers[2].padding == (0, 1)
    assert loaded.layers[3].start_dim == -2
    x = rand((3, 2, 10))
    np.testing.assert_allclose(to_numpy(loaded(ms.to_device(x, "sim:1"))), model(x),
                               rtol=1e-6, atol=1e-7)


# -- bad input ---------------------------------------------------------------------------------
def test_wrong_channel_count_names_path_argument_value_and_expected():
    model = layers.Chain(layers.Conv2d(3, 4, 3), "relu", layers.Conv2d(5, 2, 3))
    with pytest.raises(ms.ArgumentError) as info:
        model(rand((2, 3, 8, 8)))
    message = str(info.value)
    assert "layers.2" in message and "in_channels=5" in message and "4 channels" in message
    assert "(2, 4, 6, 6)" in message


@pytest.mark.parametrize(("make", "shape", "words"), [
    (lambda: layers.Conv2d(2, 2, 5), (1, 2, 4, 9), "spans 5"),
    (lambda: layers.Conv2d(2, 2, 3, dilation=3, padding=1), (1, 2, 4, 9), "spans 7"),
    (lambda: layers.Conv1d(2, 2, 4), (1, 2, 3), "only 3"),
    (lambda: layers.MaxPool2d(3), (1, 2, 2, 8), "spans 3"),
    (lambda: layers.AvgPool2d(4, padding=1), (1, 2, 8, 1), "only 3"),
])
def test_kernel_larger_than_padded_input(make, shape, words):
    with pytest.raises(ms.ArgumentError, match=words):
        make()(rand(shape))


@pytest.mark.parametrize(("make", "shape"), [
    (lambda: layers.Conv2d(2, 2, 3), (2, 8, 8)),
    (lambda: layers.Conv2d(2, 2, 3), (1, 1, 2, 8, 8)),
    (lambda: layers.Conv1d(2, 2, 3), (1, 2, 8, 8)),
    (lambda: layers.MaxPool2d(2), (2, 8, 8)),
    (lambda: layers.AvgPool2d(2), (2, 8)),
    (lambda: layers.GlobalAvgPool(), (2, 8)),
])
def test_wrong_ndim_names_the_shape_and_layout(make, shape):
    with pytest.raises(ms.ArgumentError, match=r"expected \d axes|at least 3 axes"):
        make()(rand(shape))


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    (dict(stride=0), ms.ArgumentError, "stride=0"),
    (dict(stride=(1, 2, 3)), ms.ArgumentError, "3 entries"),
    (dict(stride=1.5), ms.ArgumentTypeError, "stride=1.5"),
    (dict(padding=-1), ms.ArgumentError, "padding=-1"),
    (dict(padding="full"), ms.ArgumentError, "'same', 'valid'"),
    (dict(padding="same", stride=2), ms.ArgumentError, "stride 1"),
    (dict(dilation=0), ms.ArgumentError, "dilation=0"),
    (dict(groups=4), ms.ArgumentError, "groups=4 does not divide in_channels=6"),
    (dict(groups=3, out=4), ms.ArgumentError, "groups=3 does not divide out_channels=4"),
    (dict(groups=0), ms.ArgumentError, "groups=0"),
    (dict(kernel=0), ms.ArgumentError, "kernel_size=0"),
    (dict(kernel=(2, True)), ms.ArgumentTypeError, "kernel_size"),
    (dict(out=0), ms.ArgumentError, "out_channels=0"),
    (dict(dtype="int32"), ms.ArgumentError, "dtype"),
])
def test_bad_conv_arguments(kwargs, error, words):
    kwargs = dict(kwargs)
    out, kernel = kwargs.pop("out", 6), kwargs.pop("kernel", 3)
    with pytest.raises(error, match=words):
        layers.Conv2d(6, out, kernel, **kwargs)


def test_assignment_runs_the_same_checks():
    conv = layers.Conv2d(4, 4, 3)
    with pytest.raises(ms.ArgumentError, match="stride"):
        conv.stride = 0
    conv.stride = 2
    assert conv.stride == (2, 2)
    with pytest.raises(ms.ArgumentError, match="stride 1"):
        conv.padding = "same"
    with pytest.raises(ms.ArgumentError, match="does not divide"):
        conv.groups = 3


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: layers.MaxPool2d(2, padding=2), ms.ArgumentError, "half of kernel_size"),
    (lambda: layers.AvgPool2d(3, padding=(0, 2)), ms.ArgumentError, "half of kernel_size"),
    (lambda: layers.MaxPool2d(0), ms.ArgumentError, "kernel_size=0"),
    (lambda: layers.AvgPool2d(2, stride=-1), ms.ArgumentError, "stride=-1"),
    (lambda: layers.Flatten("1"), ms.ArgumentTypeError, "start_dim"),
    (lambda: layers.Reshape((-1, -1)), ms.ArgumentError, "more than one -1"),
    (lambda: layers.Reshape((0, 2)), ms.ArgumentError, "holds 0"),
    (lambda: layers.Reshape("ab"), ms.ArgumentTypeError, "shape"),
])
def test_bad_pool_and_shape_arguments(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_bad_inputs_to_parameter_free_layers():
    with pytest.raises(ms.ArgumentError, match=r"Reshape.*\(2, 3, 4\).*shape=\(5, -1\)"):
        layers.Reshape((5, -1))(rand((2, 3, 4)))
    with pytest.raises(ms.ArgumentError, match="shape=\\(3, 3\\)"):
        layers.Reshape((3, 3))(rand((2, 3, 4)))
    with pytest.raises(ms.ArgumentError, match="start_dim=3"):
        layers.Flatten(3)(rand((2, 3, 4)))
    with pytest.raises(ms.ArgumentError, match="int64.*floating"):
        layers.MaxPool2d(2)(np.zeros((1, 1, 4, 4), dtype=np.int64))
    with pytest.raises(ms.ArgumentError, match="floating"):
        layers.Conv2d(1, 1, 1)(np.zeros((1, 1, 4, 4), dtype=np.int32))
    with pytest.raises(ms.ArgumentTypeError, match="list"):
        layers.MaxPool2d(2)([[1.0]])


def test_wrong_device_names_both_devices_and_path():
    model = layers.Chain(ms.to_device(layers.Conv2d(1, 2, 3), "sim:1"))
    with pytest.raises(ms.DeviceMismatchError, match=r"layers.0.*host.*sim:1"):
        model(rand((1, 1, 5, 5)))


def test_errors_change_nothing():
    conv = layers.Conv2d(2, 2, 3, seed=0)
    before = conv.weight.value.copy()
    with pytest.raises(ms.ArgumentError):
        ms.backprop(conv, ms.losses.mse, rand((1, 3, 5, 5)), rand((1, 2, 3, 3)))
    assert conv.weight.grad is None
    np.testing.assert_array_equal(conv.weight.value, before)


def test_assigning_stride_to_a_same_padded_conv_is_refused():
    conv = layers.Conv2d(2, 2, 3, padding="same")
    with pytest.raises(ms.ArgumentError, match=r"stride=\(2, 2\)"):
        conv.stride = 2
    assert conv.stride == (1, 1)


def _edit_architecture(path, edit):
    """Rewrite the architecture JSON stored in a saved file's metadata."""
    import json
    import struct

    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    meta = header["__metadata__"]
    arch = json.loads(meta["modelsync.architecture"])
    edit(arch)
    meta["modelsync.architecture"] = json.dumps(arch)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + length:])


@pytest.mark.parametrize(("field", "value", "words"), [
    ("stride", {"__tuple__": [2, 2]}, "stride 1"),
    ("kernel_size", {"__tuple__": [3, 0]}, "kernel_size"),
    ("groups", 3, "does not divide"),
    ("padding", "full", "padding"),
])
def test_load_refuses_a_stored_configuration_the_class_refuses(tmp_path, field, value, words):
    file = tmp_path / "conv.safetensors"
    ms.save(layers.Chain(layers.Conv2d(2, 4, 3, padding="same")), file)
    assert isinstance(ms.load(file).layers[0], layers.Conv2d)  # the file as saved loads

    def edit(arch):
        arch["children"]["layers"]["list"][0]["config"][field] = value

    _edit_architecture(file, edit)
    with pytest.raises(ms.LoadError, match=words):
        ms.load(file)


def test_pullback_accumulates_weight_and_bias_gradients():
    conv = layers.Conv2d(2, 3, 3, padding=1, seed=0)
    x = rand((2, 2, 5, 5))
    y, pullback = conv.forward(x, Context(train=True))
    dy = rand(tuple(y.shape), seed=1)
    pullback(dy)
    once = conv.weight.grad.copy(), conv.bias.grad.copy()
    pullback(dy)
    np.testing.assert_allclose(conv.weight.grad, 2 * once[0], rtol=1e-6)
    np.testing.assert_allclose(conv.bias.grad, 2 * once[1], rtol=1e-6)
    np.testing.assert_allclose(once[1], dy.sum(axis=(0, 2, 3)), rtol=1e-5)


@settings(max_examples=30)
@given(data=st.data())
def test_random_conv2d_configurations_match_torch(data):
    """Any valid combination of sizes, strides, paddings, dilations and groups."""
    groups = data.draw(st.sampled_from([1, 2, 3]))
    cin = groups * data.draw(st.integers(1, 3))
    cout = groups * data.draw(st.integers(1, 3))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in range(2))
    dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(2))
    same = data.draw(st.booleans())
    stride = (1, 1) if same else tuple(data.draw(st.integers(1, 3)) for _ in range(2))
    padding = "same" if same else tuple(data.draw(st.integers(0, 2)) for _ in range(2))
    pads = (0, 0) if same else padding
    low = [max(1, d * (k - 1) + 1 - 2 * p) for k, d, p in zip(kernel, dilation, pads,
                                                               strict=True)]
    size = tuple(data.draw(st.integers(lo, lo + 5)) for lo in low)
    ours = layers.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, seed=data.draw(st.integers(0, 2**16)))
    theirs = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch on even kernels with "same"
        assert_matches_torch(ours, torch_twin(ours, theirs), rand((2, cin, *size)))


@pytest.mark.parametrize("index", range(len(POOL_CASES)))
def test_an_empty_batch_goes_through_as_in_torch(index):
    ours, theirs = POOL_CASES[index]
    x = np.zeros((0, 4, 9, 11), dtype=np.float32)
    y, pullback = ours().forward(x, Context(train=True))
    # the per-sample shape torch gives one sample (torch cannot infer a -1 of an empty batch)
    assert tuple(y.shape) == (0, *theirs()(torch.zeros((1, 4, 9, 11))).shape[1:])
    assert tuple(pullback(y).shape) == x.shape


def test_an_empty_batch_through_a_conv():
    conv = layers.Conv2d(4, 6, 3, padding=1, groups=2)
    y, pullback = conv.forward(np.zeros((0, 4, 5, 5), dtype=np.float32), Context(train=True))
    assert tuple(y.shape) == (0, 6, 5, 5)
    assert tuple(pullback(y).shape) == (0, 4, 5, 5)
    np.testing.assert_array_equal(conv.weight.grad, 0)


def test_a_torch_cnn_loads_by_name_and_back():
    """torch's weights map by name: a torch nn.Sequential CNN loads into the same Chain with
    ms.interop.torch_sequential_names, computes the same, and its state_dict goes back."""
    nn = torch.nn
    theirs = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(4, 6, 3, padding=1),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    ours = layers.Chain(layers.Conv2d(1, 4, 3, padding=1), "relu", layers.MaxPool2d(2),
                        layers.Conv2d(4, 6, 3, padding=1), "relu", layers.GlobalAvgPool(),
                        layers.Flatten(), layers.Dense(6, 3))
    names = ms.interop.torch_sequential_names(ours)
    assert names["layers.3.weight"] == "3.weight" and names["layers.7.bias"] == "7.bias"
    ms.load_into(ours, theirs.state_dict(), check="structure", names=names)
    x = rand((2, 1, 8, 8))
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    back = ms.state_dict(ours, names=names)
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    assert ms.interop.torch_sequential_names(layers.Conv1d(2, 3, 3)) == {
        "weight": "weight", "bias": "bias"}


@pytest.mark.parametrize("index", range(len(DEVICE_LAYERS)))
def test_the_array_api_path_on_numpy_matches_the_native_one(monkeypatch, index):
    """NumPy before 2.1 lacks some array-API names, so the layers go through
    array_api_compat's namespace there: the same numbers as NumPy's own functions."""
    from modelsync.layers import windows

    layer = DEVICE_LAYERS[index]()
    x = rand((2, 4, 9) if isinstance(layer, layers.Conv1d) else (2, 4, 9, 11))
    y, pullback = layer.forward(x, Context(train=True))
    dx = pullback(np.ones(tuple(y.shape), dtype=np.float32))
    monkeypatch.setattr(windows, "_NUMPY_IS_ARRAY_API", False)
    assert windows.array_module(x) is not np
    y2, pullback2 = layer.forward(x, Context(train=True))
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pullback2(np.ones(tuple(y.shape), dtype=np.float32)), dx,
                               rtol=1e-6, atol=1e-7)
