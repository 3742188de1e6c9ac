"""Every layer's and every loss's backward against central finite differences, in float64,
on the host and on each device (analytic there, finite differences on a host copy)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers, losses
from modelsync.devices import device_of
from modelsync.layers.base import Context
from modelsync.rebuild import rebuild
from modelsync.transfers import copy_to

FD_EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-7
ACTIVATIONS = [None, "relu", "tanh", "sigmoid", "gelu", "softmax"]

gradcheck = settings(max_examples=8, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
sizes = st.integers(min_value=1, max_value=5)
batches = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**16)


def move_params(model, dev: ms.Device) -> None:
    """Re-home every Param on ``dev`` (what to_device's move mode does)."""
    for p in ms.params(model):
        p._rehome(copy_to(p.value, dev, reason="test"))


def to_dev(array: np.ndarray, dev: ms.Device):
    return copy_to(array, dev, reason="test", what="data")


def numeric_grad(f, array: np.ndarray) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``array``, perturbed in place."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        old = array[index]
        array[index] = old + FD_EPS
        up = f()
        array[index] = old - FD_EPS
        down = f()
        array[index] = old
        grad[index] = (up - down) / (2 * FD_EPS)
    return grad


def assert_grad(actual, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def check_layer(model, x: np.ndarray, dev: ms.Device, *, seed: int = 0,
                input_grad: bool = True) -> None:
    """Finite differences of ``sum(model(x) * r)`` on the host model, then the analytic
    pullback on ``dev``: Param grads and the input gradient must agree."""

    def ctx() -> Context:  # train mode, and the same dropout mask every time
        return Context(train=True, rng=np.random.default_rng(seed))

    out, _ = model.forward(x, ctx())
    r = np.random.default_rng(seed + 1).standard_normal(out.shape)

    def objective() -> float:
        return float(np.sum(model.forward(x, ctx())[0] * r))

    named = ms.named_params(model)
    expected = {path: numeric_grad(objective, p.writable()) for path, p in named.items()}
    expected_x = numeric_grad(objective, x) if input_grad else None

    move_params(model, dev)
    y, pullback = model.forward(to_dev(x, dev), ctx())
    assert device_of(y) == dev
    np.testing.assert_allclose(to_numpy(y), out, rtol=1e-12, atol=1e-12)
    dx = pullback(to_dev(r, dev))
    for path, p in named.items():
        assert p.grad is not None, path
        assert device_of(p.grad) == dev and p.grad.dtype == p.dtype, path
        assert_grad(p.grad, expected[path], path)
    if input_grad:
        assert device_of(dx) == dev
        assert_grad(dx, expected_x, "input")


def data(rng_seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(rng_seed).standard_normal(shape)


# -- layers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@gradcheck
@given(batch=batches, n_in=sizes, n_out=sizes, seed=seeds)
def test_dense(dev, activation, bias, batch, n_in, n_out, seed):
    model = layers.Dense(n_in, n_out, activation, bias=bias, dtype="float64", seed=seed)
    check_layer(model, data(seed, batch, n_in), dev)


@gradcheck
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), seed=seeds)
def test_dense_any_leading_axes(dev, lead, seed):
    model = layers.Dense(3, 2, "tanh", dtype="float64", seed=seed)
    check_layer(model, data(seed, *lead, 3), dev)


@pytest.mark.parametrize("name", ACTIVATIONS[1:])
@gradcheck
@given(batch=batches, width=sizes, seed=seeds)
def test_activation(dev, name, batch, width, seed):
    check_layer(layers.Activation(name), data(seed, batch, width) * 2, dev)


@gradcheck
@given(batch=batches, widths=st.lists(sizes, min_size=2, max_size=4), seed=seeds)
def test_chain(dev, batch, widths, seed):
    stack = [layers.Dense(a, b, "tanh", dtype="float64", seed=seed + i)
             for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False))]
    model = layers.Chain(*stack, "sigmoid")
    check_layer(model, data(seed, batch, widths[0]), dev)


@gradcheck
@given(batch=batches, width=sizes, seed=seeds)
def test_tied_weights_accumulate(dev, batch, width, seed):
    first = layers.Dense(width, width, "tanh", dtype="float64", seed=seed)
    second = layers.Dense(width, width, dtype="float64", seed=seed + 1)
    second.weight = first.weight  # one Param used twice: its grad sums both uses
    check_layer(layers.Chain(first, second), data(seed, batch, width), dev)


@gradcheck
@given(num=st.integers(1, 6), dim=sizes,
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       index_dtype=st.sampled_from(["int32", "int64"]), seed=seeds)
def test_embedding(dev, num, dim, shape, index_dtype, seed):
    model = layers.Embedding(num, dim, dtype="float64", seed=seed)
    idx = np.random.default_rng(seed).integers(0, num, shape).astype(index_dtype)
    check_layer(model, idx, dev, input_grad=False)


@gradcheck
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), dim=sizes, seed=seeds)
def test_layer_norm(dev, lead, dim, seed):
    model = layers.LayerNorm(dim, dtype="float64")
    rng = np.random.default_rng(seed)  # non-trivial affine Params, so their grads matter
    model.weight.assign(rng.standard_normal(dim))
    model.bias.assign(rng.standard_normal(dim))
    check_layer(model, data(seed, *lead, dim) * 3 + 1, dev)


@gradcheck
@given(batch=batches, width=sizes, p=st.sampled_from([0.0, 0.2, 0.5, 0.9]), seed=seeds)
def test_dropout_train_mode(dev, batch, width, p, seed):
    check_layer(layers.Dropout(p), data(seed, batch, width), dev, seed=seed)


@gradcheck
@given(batch=batches, seed=seeds)
def test_mixed_model(dev, batch, seed):
    model = layers.Chain(layers.Embedding(7, 4, dtype="float64", seed=seed),
                         layers.LayerNorm(4, dtype="float64"), layers.Dropout(0.3),
                         layers.Dense(4, 3, "gelu", dtype="float64", seed=seed))
    idx = np.random.default_rng(seed).integers(0, 7, (batch, 2))
    check_layer(model, idx, dev, seed=seed, input_grad=False)


# -- losses ---------------------------------------------------------------------------------
def loss_case(name: str, seed: int, batch: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "mse":
        return rng.standard_normal((batch, width)), rng.standard_normal((batch, width))
    if name == "cross_entropy":
        return rng.standard_normal((batch, width)) * 3, rng.integers(0, width, batch)
    probs = rng.uniform(0.05, 0.95, (batch, width))
    return probs, rng.integers(0, 2, (batch, width)).astype(np.float64)


LOSSES = ["mse", "cross_entropy", "binary_cross_entropy"]


@pytest.mark.parametrize("name", LOSSES)
@gradcheck
@given(batch=batches, width=sizes, seed=seeds)
def test_loss_gradient(dev, name, batch, width, seed):
    loss = getattr(losses, name)
    pred, target = loss_case(name, seed, batch, width)
    expected = numeric_grad(lambda: float(loss(pred, target)), pred)
    value, grad = loss.value_and_grad(to_dev(pred, dev), to_dev(target, dev))
    assert device_of(value) == dev and device_of(grad) == dev
    assert grad.shape == pred.shape and grad.dtype == value.dtype
    np.testing.assert_allclose(float(value), float(loss(pred, target)), rtol=1e-12)
    assert_grad(grad, expected, name)


def model_for(name: str, width: int, seed: int):
    head = {"mse": None, "cross_entropy": None, "binary_cross_entropy": "sigmoid"}[name]
    return layers.Chain(layers.Dense(3, 4, "tanh", dtype="float64", seed=seed),
                        layers.LayerNorm(4, dtype="float64"), layers.Dropout(0.25),
                        layers.Dense(4, width, head, dtype="float64", seed=seed + 1))


@pytest.mark.parametrize("name", LOSSES)
@gradcheck
@given(batch=batches, width=st.integers(2, 4), seed=seeds)
def test_backprop_through_model_and_loss(dev, name, batch, width, seed):
    """ms.backprop's Param grads equal finite differences of the loss, on every device."""
    loss = getattr(losses, name)
    model = model_for(name, width, seed)
    x = data(seed, batch, 3)
    _, target = loss_case(name, seed, batch, width)

    def objective() -> float:
        out, _ = model.forward(x, Context(train=True, rng=np.random.default_rng(seed)))
        return float(loss(out, target))

    named = ms.named_params(model)
    expected = {path: numeric_grad(objective, p.writable()) for path, p in named.items()}
    move_params(model, dev)
    value = ms.backprop(model, loss, to_dev(x, dev), to_dev(target, dev),
                        rng=np.random.default_rng(seed))
    assert isinstance(value, float)
    np.testing.assert_allclose(value, objective_on_host(model, loss, x, target, seed),
                               rtol=1e-12)
    for path, p in named.items():
        assert device_of(p.grad) == dev, path
        assert_grad(p.grad, expected[path], path)


def objective_on_host(model, loss, x, target, seed) -> float:
    host = {id(p): to_numpy(p.value) for p in ms.params(model)}
    copy = rebuild(model, lambda p: ms.Param(host[id(p)]))
    out, _ = copy.forward(x, Context(train=True, rng=np.random.default_rng(seed)))
    return float(loss(out, target))


def test_backprop_accumulates_across_calls():
    """Two backprops without zeroing add up, as in PyTorch."""
    model = layers.Dense(3, 2, dtype="float64", seed=0)
    x, y = data(0, 4, 3), data(1, 4, 2)
    ms.backprop(model, losses.mse, x, y)
    once = model.weight.grad.copy()
    ms.backprop(model, losses.mse, x, y)
    np.testing.assert_allclose(model.weight.grad, 2 * once, rtol=1e-12)
