"""ms.train: it learns, it moves NumPy batches to the model's device without moving any
parameter bytes, it is quiet when asked, and it refuses data it cannot iterate twice."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses
from modelsync.devices import device_of
from modelsync.transfers import copy_to


class SGD:
    """The smallest optimizer train() can drive: plain gradient descent on bound Params."""

    def __init__(self, params, lr: float) -> None:
        self.params, self.lr = list(params), lr
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        for p in self.params:
            if p.grad is not None:
                p.writable()[...] -= self.lr * p.grad

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def move_params(model, dev: ms.Device) -> None:
    """Re-home every Param on ``dev`` (what to_device's move mode does)."""
    for p in ms.params(model):
        p._rehome(copy_to(p.value, dev, reason="test"))


def regression_batches(n_batches: int = 4, batch: int = 16, seed: int = 0):
    """y = x @ w + b + small noise, as float32 NumPy batches."""
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((batch, 3))
        y = x @ w + b + 0.01 * rng.standard_normal((batch, 2))
        out.append((x.astype(np.float32), y.astype(np.float32)))
    return out


def total_loss(model, data) -> float:
    return sum(float(losses.mse(model(x), y)) for x, y in data) / len(data)


def test_train_reduces_loss_on_host():
    model = layers.Dense(3, 2, seed=0)
    data = regression_batches()
    before = total_loss(model, data)
    history = ms.train(model, data, losses.mse, SGD(ms.params(model), lr=0.1), epochs=30,
                       progress=False)
    assert len(history) == 30 * len(data) and all(isinstance(v, float) for v in history)
    assert total_loss(model, data) < before / 100
    assert history[-1] < history[0] / 100


def test_train_moves_numpy_batches_and_no_param_bytes(capsys):
    sim = ms.device("sim:1")
    model = layers.Chain(layers.Dense(3, 8, "tanh", seed=0), layers.Dropout(0.1),
                         layers.Dense(8, 2, seed=1))
    move_params(model, sim)
    data = regression_batches()
    opt = SGD(ms.params(model), lr=0.05)
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        history = ms.train(model, data, losses.mse, opt, epochs=20, progress=False,
                           rng=np.random.default_rng(0))
    assert history[-1] < history[0] / 10
    assert opt.steps == 20 * len(data)
    assert all(p.device == sim and device_of(p.value) == sim for p in ms.params(model))
    assert t.count > 0 and {e.what for e in t.events} == {"data"}
    assert {(e.src, e.dst) for e in t.events} == {("host", "sim:1")}
    assert t.bytes_of("param") == t.bytes_of("grad") == t.bytes_of("state") == 0
    batch_bytes = sum(x.nbytes + y.nbytes for x, y in data) * 20
    assert t.bytes_of("data") >= batch_bytes  # every batch crossed
    assert capsys.readouterr().err == ""


def test_train_on_the_dev_fixture(dev):
    model = layers.Dense(3, 2, seed=0)
    move_params(model, dev)
    data = regression_batches(n_batches=2)
    history = ms.train(model, data, losses.mse, SGD(ms.params(model), lr=0.1), epochs=25,
                       progress=False)
    assert history[-1] < history[0] / 50
    assert device_of(model.weight.value) == dev
    host_model = layers.Dense(3, 2, seed=0)
    ms.train(host_model, data, losses.mse, SGD(ms.params(host_model), lr=0.1), epochs=25,
             progress=False)
    np.testing.assert_allclose(to_numpy(model.weight.value), host_model.weight.value,
                               rtol=1e-4, atol=1e-5)


def test_train_classifier_with_integer_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    labels = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = layers.Chain(layers.Dense(2, 8, "relu", seed=0), layers.Dense(8, 2, seed=1))
    move_params(model, ms.device("sim:1"))
    data = [(x[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    ms.train(model, data, losses.cross_entropy, SGD(ms.params(model), lr=0.5), epochs=40,
             progress=False)
    out = to_numpy(model(copy_to(x, ms.device("sim:1"), reason="test", what="data")))
    assert (out.argmax(axis=1) == labels).mean() > 0.9


def test_progress_false_prints_nothing(capsys):
    model = layers.Dense(3, 2, seed=0)
    ms.train(model, regression_batches(), losses.mse, SGD(ms.params(model), lr=0.1),
             epochs=2, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_is_optional_not_an_error(capsys):
    model = layers.Dense(3, 2, seed=0)
    history = ms.train(model, regression_batches(), losses.mse,
                       SGD(ms.params(model), lr=0.1), progress=True)
    assert len(history) == 4
    assert capsys.readouterr().out == ""


def test_one_shot_iterator_with_two_epochs_is_refused():
    model = layers.Dense(3, 2, seed=0)
    opt = SGD(ms.params(model), lr=0.1)
    before = model.weight.value.copy()
    with pytest.raises(ms.ArgumentError, match="one-shot iterator"):
        ms.train(model, iter(regression_batches()), losses.mse, opt, epochs=2, progress=False)
    np.testing.assert_array_equal(model.weight.value, before)  # refused before any step
    # one epoch over a generator is fine
    history = ms.train(model, (b for b in regression_batches()), losses.mse, opt,
                       progress=False)
    assert len(history) == 4


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_bad_epochs(epochs):
    model = layers.Dense(3, 2, seed=0)
    with pytest.raises(ms.ArgumentError, match="epochs="):
        ms.train(model, regression_batches(), losses.mse, SGD(ms.params(model), lr=0.1),
                 epochs=epochs, progress=False)


def test_batches_for_another_device_than_the_model():
    """device= says where batches go; a mismatch with the model's Params is reported up front,
    naming the argument."""
    model = layers.Dense(3, 2, seed=0)
    with pytest.raises(ms.ArgumentError, match="device='sim:1', but the model's Params"):
        ms.train(model, regression_batches(), losses.mse, SGD(ms.params(model), lr=0.1),
                 device="sim:1", progress=False)


def test_model_without_params_needs_a_device():
    with pytest.raises(ms.ArgumentError, match="device="):
        ms.train(layers.Chain("relu"), regression_batches(), losses.mse, SGD([], lr=0.1),
                 progress=False)


def test_backprop_rejects_a_non_loss():
    model = layers.Dense(3, 2, seed=0)
    with pytest.raises(ms.ArgumentTypeError, match="loss_fn"):
        ms.backprop(model, lambda a, b: 0.0, np.ones((1, 3)), np.ones((1, 2)))


def test_a_batch_that_is_not_a_pair_is_named():
    model = layers.Dense(2, 2)

    class NoOptimizer:
        def zero_grad(self):
            pass

        def step(self):
            pass

    with pytest.raises(ms.ArgumentTypeError, match=r"data\[1\] is a ndarray; expected an \(x, y\)"):
        ms.train(model, [(np.ones((1, 2), "float32"), np.ones((1, 2), "float32")),
                         np.ones((1, 2))], losses.mse, NoOptimizer(), progress=False)


def test_train_refuses_an_optimizer_bound_to_another_model_and_bad_rngs():
    from modelsync import optim

    model = layers.Dense(2, 2, seed=0)
    before_copy = optim.SGD(ms.params(model), lr=0.1)
    copy = ms.to_device(model, "sim:1")
    data = [(np.ones((1, 2), "float32"), np.ones((1, 2), "float32"))]
    with pytest.raises(ms.ArgumentError, match="bound to none of this model's Params"):
        ms.train(copy, data, losses.mse, before_copy, progress=False)
    with pytest.raises(ms.ArgumentTypeError, match="optimizer"):
        ms.train(model, data, losses.mse, None, progress=False)
    with pytest.raises(ms.ArgumentTypeError, match="rng="):
        ms.backprop(model, losses.mse, *data[0], rng="seed")
    ms.train(model, data, losses.mse, before_copy, progress=False, rng=3)  # an int seed is fine
