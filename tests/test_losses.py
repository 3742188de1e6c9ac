"""Losses: values and gradients against NumPy versions of PyTorch's documented definitions
(MSELoss, CrossEntropyLoss, BCELoss, all with reduction="mean"), stability at extremes,
and the errors for bad shapes, dtypes and devices."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import losses
from modelsync.devices import device_of
from modelsync.transfers import copy_to

check = settings(max_examples=15, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
batches = st.integers(min_value=1, max_value=8)
widths = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**16)
float_dtypes = st.sampled_from(["float32", "float64"])
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-14}}


def to_dev(array: np.ndarray, dev: ms.Device):
    return copy_to(np.asarray(array), dev, reason="test", what="data")


def evaluate(loss, pred, target, dev):
    value, grad = loss.value_and_grad(to_dev(pred, dev), to_dev(target, dev))
    assert device_of(value) == dev and device_of(grad) == dev
    assert value.shape == () and value.dtype == grad.dtype
    assert tuple(grad.shape) == tuple(np.shape(pred))
    return float(value), to_numpy(grad)


# -- NumPy references (PyTorch's definitions) ------------------------------------------------
def ref_mse(pred, target):
    diff = pred - target
    return np.mean(diff**2), 2 * diff / diff.size


def ref_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    batch = len(labels)
    one_hot = np.eye(logits.shape[1])[labels]
    return -log_softmax[np.arange(batch), labels].mean(), (np.exp(log_softmax) - one_hot) / batch


def ref_bce(probs, target):
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(probs), -100.0)
        log_q = np.maximum(np.log(1 - probs), -100.0)
    value = -np.mean(target * log_p + (1 - target) * log_q)
    return value, (probs - target) / np.maximum(probs * (1 - probs), 1e-12) / probs.size


# -- values and gradients ----------------------------------------------------------------------
@check
@given(shape=st.lists(widths, min_size=1, max_size=3), dtype=float_dtypes, seed=seeds)
def test_mse(dev, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    pred, target = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    value, grad = evaluate(losses.mse, pred, target, dev)
    ref_value, ref_grad = ref_mse(pred.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(value, ref_value, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_grad, **TOL[dtype])


@check
@given(batch=batches, classes=widths, dtype=float_dtypes,
       label_dtype=st.sampled_from(["int32", "int64"]), seed=seeds)
def test_cross_entropy(dev, batch, classes, dtype, label_dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch, classes)) * 3).astype(dtype)
    labels = rng.integers(0, classes, batch).astype(label_dtype)
    value, grad = evaluate(losses.cross_entropy, logits, labels, dev)
    ref_value, ref_grad = ref_cross_entropy(logits.astype(np.float64), labels)
    np.testing.assert_allclose(value, ref_value, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_grad, **TOL[dtype])


@check
@given(shape=st.lists(widths, min_size=1, max_size=2), dtype=float_dtypes,
       soft=st.booleans(), seed=seeds)
def test_binary_cross_entropy(dev, shape, dtype, soft, seed):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.01, 0.99, shape).astype(dtype)
    target = (rng.uniform(0, 1, shape) if soft else rng.integers(0, 2, shape)).astype(dtype)
    value, grad = evaluate(losses.binary_cross_entropy, probs, target, dev)
    ref_value, ref_grad = ref_bce(probs.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(value, ref_value, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5 if dtype == "float32" else 1e-12)


def test_known_values():
    assert float(losses.mse(np.array([1.0, 3.0]), np.array([0.0, 0.0]))) == 5.0
    # two equal logits: loss log(2) whatever the label
    np.testing.assert_allclose(float(losses.cross_entropy(np.zeros((3, 2)), np.array([0, 1, 1]))),
                               np.log(2), rtol=1e-15)
    np.testing.assert_allclose(
        float(losses.binary_cross_entropy(np.array([0.5, 0.25]), np.array([1.0, 0.0]))),
        -(np.log(0.5) + np.log(0.75)) / 2, rtol=1e-15)


def test_call_is_the_value_of_value_and_grad():
    pred, target = np.array([[0.2, 0.5]]), np.array([[1.0, 0.0]])
    for loss in (losses.mse, losses.binary_cross_entropy):
        value = loss(pred, target)
        assert isinstance(value, np.ndarray) and value.shape == ()
        assert float(value) == float(loss.value_and_grad(pred, target)[0])


# -- stability ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_stable_for_huge_logits(dev, dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 0, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        value, grad = evaluate(losses.cross_entropy, logits, labels, dev)
    expected = (0.0 + (1e4 + np.log(2)) + np.log(3)) / 3
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[1], np.array([-1, 0.5, 0.5]) / 3, atol=1e-7)


def test_binary_cross_entropy_finite_at_zero_and_one(dev):
    probs = np.array([0.0, 1.0, 0.0, 1.0])
    target = np.array([0.0, 1.0, 1.0, 0.0])
    value, grad = evaluate(losses.binary_cross_entropy, probs, target, dev)
    # torch clamps each log term at -100: the two wrong certain answers cost 100 each
    np.testing.assert_allclose(value, 200.0 / 4)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.array([0.0, 0.0, -1e12, 1e12]) / 4)
    right, _ = evaluate(losses.binary_cross_entropy, probs[:2], target[:2], dev)
    assert right == 0.0


def test_binary_cross_entropy_gradient_floor_matches_torch():
    """torch divides by max(p(1-p), 1e-12): tiny probabilities keep their true gradient."""
    probs = np.array([1e-8], dtype=np.float32)
    _, grad = losses.binary_cross_entropy.value_and_grad(probs, np.ones(1, dtype=np.float32))
    np.testing.assert_allclose(grad, -1 / (1e-8 * (1 - 1e-8)), rtol=1e-5)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_target_on_another_device(name):
    loss = getattr(losses, name)
    pred = np.full((2, 3), 0.5)
    target = np.array([0, 1]) if name == "cross_entropy" else np.zeros((2, 3))
    sim1, sim2 = ms.device("sim:1"), ms.device("sim:2")
    with pytest.raises(ms.DeviceMismatchError, match=f"{name}: prediction is on sim:1 but "
                       "target is on host"):
        loss(to_dev(pred, sim1), target)
    with pytest.raises(ms.DeviceMismatchError, match="sim:2.*sim:1"):
        loss(to_dev(pred, sim2), to_dev(target, sim1))


@pytest.mark.parametrize("loss, pred, target, message", [
    (losses.mse, np.zeros((2, 3)), np.zeros((3, 2)),
     r"mse: target has shape \(3, 2\), expected the prediction's shape \(2, 3\)"),
    (losses.binary_cross_entropy, np.zeros((2, 3)), np.zeros(3),
     r"binary_cross_entropy: target has shape \(3,\)"),
    (losses.cross_entropy, np.zeros(3), np.array([0, 1, 2]),
     r"cross_entropy: expected logits \(batch, classes\).*got \(3,\) and \(3,\)"),
    (losses.cross_entropy, np.zeros((3, 2)), np.array([0, 1]), r"got \(3, 2\) and \(2,\)"),
    (losses.cross_entropy, np.zeros((2, 2)), np.array([[0], [1]]), r"got \(2, 2\) and \(2, 1\)"),
    (losses.cross_entropy, np.zeros((2, 2)), np.array([0.0, 1.0]), "labels have dtype float64, "
     "expected integers"),
    (losses.cross_entropy, np.zeros((2, 3)), np.array([0, 3]), r"label 3 is outside \[0, 3\)"),
    (losses.cross_entropy, np.zeros((2, 3)), np.array([-1, 0]), r"label -1 is outside \[0, 3\)"),
    (losses.binary_cross_entropy, np.array([0.5, 1.5]), np.zeros(2), r"probabilities in \[0, 1\]"),
    (losses.binary_cross_entropy, np.array([-0.1]), np.zeros(1), r"probabilities in \[0, 1\]"),
])
def test_bad_inputs_raise_argument_error(loss, pred, target, message):
    with pytest.raises(ms.ArgumentError, match=message) as info:
        loss(pred, target)
    assert isinstance(info.value, ValueError)


def test_bad_inputs_on_device_too():
    sim = ms.device("sim:1")
    with pytest.raises(ms.ArgumentError, match=r"label 4 is outside \[0, 3\)"):
        losses.cross_entropy(to_dev(np.zeros((2, 3)), sim), to_dev(np.array([0, 4]), sim))
    with pytest.raises(ms.ArgumentError, match="mse: target has shape"):
        losses.mse(to_dev(np.zeros((2, 3)), sim), to_dev(np.zeros((2, 2)), sim))


def test_mse_of_an_empty_batch_is_nan_like_torch():
    empty = np.zeros((0, 2), np.float32)
    loss, grad = losses.mse.value_and_grad(empty, empty)
    assert np.isnan(float(loss)) and grad.shape == (0, 2)


def test_cross_entropy_of_an_empty_batch_is_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = losses.cross_entropy.value_and_grad(
            np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert np.isnan(float(loss)) and grad.shape == (0, 3)
