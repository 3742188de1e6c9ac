"""ms.export_onnx: ONNX Runtime agrees with modelsync on every built-in layer, ties are
stored once, bad input writes nothing."""

from __future__ import annotations

import os

import attrs
import numpy as np
import pytest

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.cli import main

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

#: float32 ONNX Runtime vs modelsync: same arithmetic up to operation order and fused kernels.
RTOL, ATOL = 1e-4, 1e-5


def _floats(*shape):
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


def _tokens(*shape, high=20):
    return np.random.default_rng(7).integers(0, high, size=shape)


#: name -> (model builder, input batch of 7, labels builder for a few training steps or None)
CASES = {
    "dense_each_activation": (lambda: layers.Chain(
        layers.Dense(8, 16, "relu", seed=0), layers.Dense(16, 16, "gelu", seed=1),
        layers.Dense(16, 16, "tanh", seed=2), layers.Dense(16, 16, "sigmoid", seed=3),
        layers.Dense(16, 5, seed=4), "softmax"), lambda: _floats(7, 8)),
    "activation_layers": (lambda: layers.Chain(
        layers.Dense(8, 6, seed=0), layers.ReLU(), layers.GELU(), layers.Tanh(),
        layers.Sigmoid(), layers.Softmax()), lambda: _floats(7, 8)),
    "layernorm_dropout": (lambda: layers.Chain(
        layers.Dense(8, 12, seed=0), layers.LayerNorm(12), layers.Dropout(0.3),
        layers.Dense(12, 3, bias=False, seed=1)), lambda: _floats(7, 8)),
    "skip_and_parallel": (lambda: layers.Chain(
        layers.SkipConnection(layers.Chain(layers.Dense(6, 6, "relu", seed=0),
                                           layers.Dense(6, 6, seed=1))),
        layers.SkipConnection(layers.Dense(6, 6, seed=2), "mul"),
        layers.SkipConnection(layers.Dense(6, 2, seed=3), "concat"),
        layers.Parallel("add", layers.Dense(8, 4, seed=4), layers.Dense(8, 4, seed=5),
                        layers.Dense(8, 4, seed=6)),
        layers.Parallel("mul", layers.Dense(4, 3, seed=7), layers.Dense(4, 3, "tanh", seed=8)),
        layers.Parallel("concat", layers.Dense(3, 2, seed=9), layers.LayerNorm(3))),
        lambda: _floats(7, 6)),
    "rmsnorm_attention": (lambda: layers.Chain(
        layers.Dense(8, 16, seed=0), layers.RMSNorm(16),
        layers.MultiHeadAttention(16, 4, seed=1),
        layers.MultiHeadAttention(16, 2, bias=False, causal=True, seed=2)),
        lambda: _floats(7, 5, 8)),
    "language_model": (lambda: _tiny_lm(), lambda: _tokens(7, 6)),
    "gru_lstm": (lambda: layers.Chain(
        layers.GRU(4, 6, seed=0), layers.LSTM(6, 5, seed=1), layers.GRU(5, 3, bias=False, seed=2),
        layers.LSTM(3, 4, bias=False, seed=3), layers.LastStep(), layers.Dense(4, 2, seed=4)),
        lambda: _floats(7, 5, 4)),
    "conv_pool_flatten": (lambda: layers.Chain(
        layers.Conv2d(2, 4, 3, padding=1, seed=0), "relu", layers.MaxPool2d(2),
        layers.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=1, seed=1),
        layers.AvgPool2d(2, stride=1, padding=1), layers.Flatten(),
        layers.Dense(6 * 2 * 4, 3, seed=2)), lambda: _floats(7, 2, 9, 8)),
    "conv_groups_dilation_same": (lambda: layers.Chain(
        layers.Conv2d(4, 8, 3, padding="same", dilation=2, groups=2, seed=0),
        layers.Conv2d(8, 8, 2, padding="same", groups=8, bias=False, seed=1),
        layers.MaxPool2d(3, stride=2, padding=1),
        layers.Parallel("concat_channels", layers.Conv2d(8, 2, 1, seed=2), layers.AvgPool2d(1)),
        layers.GlobalAvgPool()), lambda: _floats(7, 4, 8, 8)),
    "conv1d_reshape": (lambda: layers.Chain(
        layers.Reshape((2, 12)), layers.Conv1d(2, 3, 5, stride=2, padding=2, seed=0),
        layers.Flatten(start_dim=-2), layers.Reshape((3, -1)), layers.GlobalAvgPool()),
        lambda: _floats(7, 24)),
    "batchnorm_trained": (lambda: layers.Chain(
        layers.Conv2d(1, 4, 3, padding=1, seed=0), layers.BatchNorm(4), "relu",
        layers.Flatten(), layers.BatchNorm(4 * 16, affine=False), layers.Dense(64, 3, seed=1),
        layers.Reshape((3, 1)), layers.BatchNorm(3, momentum=None)),
        lambda: _floats(7, 1, 4, 4)),
    "batchnorm_without_running_stats": (lambda: layers.Chain(
        layers.Dense(5, 4, seed=0), layers.BatchNorm(4, track_running_stats=False)),
        lambda: _floats(7, 5)),
    "embedding": (lambda: layers.Chain(layers.Embedding(20, 6, seed=0),
                                       layers.Dense(6, 4, seed=1)), lambda: _tokens(7, 5)),
}


def _tiny_lm():
    embed = layers.Embedding(20, 8, seed=0)
    return layers.Chain(embed, layers.PositionalEmbedding(6, 8, seed=1),
                        layers.SkipConnection(layers.Chain(
                            layers.LayerNorm(8), layers.MultiHeadAttention(8, 2, causal=True,
                                                                           seed=2))),
                        layers.LayerNorm(8), layers.Unembed(embed))


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _train_a_little(model, x):
    out = model(x)
    target = np.zeros(out.shape, np.float32)
    opt = optim.Adam(ms.params(model), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        ms.backprop(model, losses.mse, x, target)
        opt.step()


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_runtime_agrees_after_training_and_a_round_trip(case, tmp_path):
    build, batch = CASES[case]
    model, x = build(), batch()
    _train_a_little(model, x)
    path = tmp_path / "model.onnx"
    ms.export_onnx(model, path, example=x[:1])
    for rows in (x[:1], x):
        np.testing.assert_allclose(_run(path, rows), model(rows), rtol=RTOL, atol=ATOL)
    ms.save(model, tmp_path / "model.safetensors")
    reloaded = ms.load(tmp_path / "model.safetensors")
    ms.export_onnx(reloaded, tmp_path / "again.onnx", example=x[:3])
    np.testing.assert_allclose(_run(tmp_path / "again.onnx", x), model(x), rtol=RTOL, atol=ATOL)


def test_a_device_model_exports_its_current_values(dev, tmp_path):
    model = ms.to_device(layers.Chain(layers.Dense(4, 3, "relu", seed=0)), dev)
    x = _floats(7, 4)
    ms.export_onnx(model, tmp_path / "m.onnx", example=ms.to_device(x[:1], dev))
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), ms.to_host(model)(x),
                               rtol=RTOL, atol=ATOL)


def test_metadata_names_the_graph_and_version(tmp_path):
    model = layers.Dense(4, 2, seed=0)
    ms.export_onnx(model, tmp_path / "m.onnx", example=_floats(1, 4))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props == {"modelsync.graph_id": ms.graph_id(model), "modelsync.version":
                     ms.__version__}


def test_batch_axis_is_dynamic(tmp_path):
    ms.export_onnx(layers.Dense(4, 2, seed=0), tmp_path / "m.onnx", example=_floats(3, 4))
    (inp,) = onnx.load(str(tmp_path / "m.onnx")).graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4


def test_a_tied_param_is_stored_once(tmp_path):
    shared = layers.Dense(6, 6, seed=0)
    model = layers.Chain(shared, "tanh", shared)
    ms.export_onnx(model, tmp_path / "m.onnx", example=_floats(1, 6))
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert len(graph.initializer) - _scalars(graph) == 2  # one weight, one bias
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", _floats(7, 6)), model(_floats(7, 6)),
                               rtol=RTOL, atol=ATOL)


def test_unembed_shares_the_embedding_initializer(tmp_path):
    model = _tiny_lm()
    ms.export_onnx(model, tmp_path / "m.onnx", example=_tokens(1, 6))
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    tables = [t for t in graph.initializer if tuple(t.dims) == (20, 8)]
    assert len(tables) == 1


def _scalars(graph):
    return sum(1 for t in graph.initializer if len(t.dims) == 0)


@ms.layer
@attrs.define(eq=False)
class _Doubler:
    def forward(self, x, ctx):
        return x * 2.0, lambda dy: dy * 2.0


@ms.layer
@attrs.define(eq=False)
class _Halver:
    def forward(self, x, ctx):
        return x * 0.5, lambda dy: dy * 0.5


@ms.export_rule(_Halver)
def _halver_rule(g, layer, x, path):
    return g.node("Mul", [x.name, g.constant(np.asarray(0.5, np.float32), path + ".half")],
                  path)


def test_a_user_layer_without_a_rule_names_its_path_and_writes_nothing(tmp_path):
    model = layers.Chain(layers.Dense(3, 3, seed=0), _Doubler())
    target = tmp_path / "m.onnx"
    with pytest.raises(ms.ExportError, match=r"layers\.1: layer type _Doubler has no ONNX"):
        ms.export_onnx(model, target, example=_floats(1, 3))
    assert not target.exists() and os.listdir(tmp_path) == []


def test_a_user_layer_with_a_rule_exports(tmp_path):
    model = layers.Chain(layers.Dense(3, 3, seed=0), _Halver())
    ms.export_onnx(model, tmp_path / "m.onnx", example=_floats(1, 3))
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", _floats(7, 3)), model(_floats(7, 3)),
                               rtol=RTOL, atol=ATOL)


def test_bad_examples_and_paths_write_nothing(tmp_path):
    model = layers.Dense(4, 2, seed=0)
    target = tmp_path / "m.onnx"
    with pytest.raises(ms.ArgumentError, match="in_features=4"):
        ms.export_onnx(model, target, example=_floats(1, 5))
    with pytest.raises(ms.ArgumentError, match="dtype"):
        ms.export_onnx(model, target, example=np.ones((1, 4), np.int64))
    with pytest.raises(TypeError, match="example is a list"):
        ms.export_onnx(model, target, example=[[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ms.ArgumentError, match="batch"):
        ms.export_onnx(model, target, example=np.asarray(1.0, np.float32))
    with pytest.raises(ms.SaveError, match="does not exist"):
        ms.export_onnx(model, tmp_path / "missing" / "m.onnx", example=_floats(1, 4))
    with pytest.raises(ms.SaveError, match="is a directory.*model.onnx"):
        ms.export_onnx(model, tmp_path, example=_floats(1, 4))
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ms.SaveError, match="is a FIFO"):
        ms.export_onnx(model, fifo, example=_floats(1, 4))
    os.unlink(fifo)
    device_model = ms.to_device(model, "sim:1")
    with pytest.raises(ms.DeviceMismatchError, match="sim:2"):
        ms.export_onnx(device_model, target, example=ms.to_device(_floats(1, 4), "sim:2"))
    assert os.listdir(tmp_path) == []


def test_a_moved_model_cannot_be_exported(tmp_path):
    model = layers.Dense(4, 2, seed=0)
    ms.to_device(model, "sim:1", mode="move")
    with pytest.raises(ms.MovedError):
        ms.export_onnx(model, tmp_path / "m.onnx", example=_floats(1, 4))
    assert os.listdir(tmp_path) == []


def test_the_command_line_exports_a_saved_model(tmp_path, capsys):
    model = layers.Chain(layers.Dense(64, 10, "relu", seed=0))
    ms.save(model, tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx"),
                 "--input-shape", "1,64"]) == 0
    x = _floats(7, 64)
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), model(x), rtol=RTOL, atol=ATOL)
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "b.onnx"),
                 "--input-shape", "1,x"]) == 2
    assert "not a shape" in capsys.readouterr().err
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("name", ["mlp", "cnn", "lm"])
def test_the_demo_models_export_after_training_and_a_round_trip(name, tmp_path):
    from modelsync import workloads

    work = workloads.WORKLOADS[name]
    x, y, x_test, _ = work.data()
    model = work.build(0)
    opt = optim.Adam(ms.params(model), lr=work.lr)
    for i in range(3):
        opt.zero_grad()
        ms.backprop(model, work.loss, x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
        opt.step()
    ms.save(model, tmp_path / "m.safetensors")
    reloaded = ms.load(tmp_path / "m.safetensors")
    ms.export_onnx(reloaded, tmp_path / "m.onnx", example=x_test[:1])
    for rows in (x_test[:1], x_test[:7]):
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", rows), model(rows), rtol=RTOL,
                                   atol=ATOL)
