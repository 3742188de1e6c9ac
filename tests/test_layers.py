"""Layers: forward values against plain NumPy formulas on every device, initialisation,
constructor and input errors, tied weights, Param checks and user-defined layers."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers, losses
from modelsync.devices import device_of
from modelsync.layers.base import Context
from modelsync.transfers import copy_to

forward_check = settings(max_examples=10, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
sizes = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**16)
float_dtypes = st.sampled_from(["float32", "float64"])
TOL = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-12}}


def move_params(model, dev: ms.Device) -> None:
    """Re-home every Param on ``dev`` (what to_device's move mode does)."""
    for p in ms.params(model):
        p._rehome(copy_to(p.value, dev, reason="test"))


def to_dev(array: np.ndarray, dev: ms.Device):
    return copy_to(array, dev, reason="test", what="data")


def host_values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def run_on(model, x: np.ndarray, dev: ms.Device, **kwargs) -> np.ndarray:
    """Move ``model`` to ``dev``, run it on ``x`` there, and bring the output back."""
    move_params(model, dev)
    y = model(to_dev(x, dev), **kwargs)
    assert device_of(y) == dev
    return y


# -- NumPy references -----------------------------------------------------------------------
def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_gelu(z):  # PyTorch's gelu(approximate="tanh")
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


NP_ACTIVATIONS = {None: lambda z: z, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
                  "sigmoid": np_sigmoid, "gelu": np_gelu, "softmax": np_softmax}


# -- forward values -------------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(NP_ACTIVATIONS))
@forward_check
@given(batch=sizes, n_in=sizes, n_out=sizes, dtype=float_dtypes, seed=seeds)
def test_dense_forward(dev, activation, batch, n_in, n_out, dtype, seed):
    model = layers.Dense(n_in, n_out, activation, dtype=dtype, seed=seed)
    w = host_values(model)
    x = np.random.default_rng(seed).standard_normal((batch, n_in)).astype(dtype)
    expected = NP_ACTIVATIONS[activation](x.astype(np.float64) @ w["weight"].T.astype(np.float64)
                                          + w["bias"])
    y = run_on(model, x, dev)
    assert y.dtype == model.weight.dtype and tuple(y.shape) == (batch, n_out)
    np.testing.assert_allclose(to_numpy(y), expected, **TOL[dtype])


@pytest.mark.parametrize("name", [n for n in NP_ACTIVATIONS if n])
@forward_check
@given(shape=st.lists(sizes, min_size=1, max_size=3), dtype=float_dtypes, seed=seeds)
def test_activation_forward(dev, name, shape, dtype, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(dtype)
    y = layers.Activation(name)(to_dev(x, dev))
    np.testing.assert_allclose(to_numpy(y), NP_ACTIVATIONS[name](x.astype(np.float64)),
                               **TOL[dtype])


def test_activations_stay_finite_at_extremes():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow
        np.testing.assert_allclose(layers.sigmoid(x), [0, np_sigmoid(-50.0), 0.5,
                                                       np_sigmoid(50.0), 1])
    assert np.all(np.isfinite(layers.softmax(x)))


def test_activation_layers_by_name_function_and_constructor():
    for name, make in [("relu", layers.ReLU), ("tanh", layers.Tanh), ("sigmoid", layers.Sigmoid),
                       ("gelu", layers.GELU), ("softmax", layers.Softmax)]:
        assert make().name == name
        assert layers.Activation(getattr(layers, name)).name == name
        assert layers.Chain(name)[0].name == name


@forward_check
@given(widths=st.lists(sizes, min_size=2, max_size=4), batch=sizes, dtype=float_dtypes,
       seed=seeds)
def test_chain_forward_is_composition(dev, widths, batch, dtype, seed):
    stack = [layers.Dense(a, b, "tanh", dtype=dtype, seed=seed + i)
             for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False))]
    model = layers.Chain(*stack)
    x = np.random.default_rng(seed).standard_normal((batch, widths[0])).astype(dtype)
    expected = x.astype(np.float64)
    for d in stack:
        expected = np.tanh(expected @ to_numpy(d.weight.value).T + to_numpy(d.bias.value))
    assert len(model) == len(stack) and model[0] is stack[0]
    np.testing.assert_allclose(to_numpy(run_on(model, x, dev)), expected, **TOL[dtype])


@forward_check
@given(num=sizes, dim=sizes, shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
       dtype=float_dtypes, index_dtype=st.sampled_from(["int32", "int64"]), seed=seeds)
def test_embedding_forward(dev, num, dim, shape, dtype, index_dtype, seed):
    model = layers.Embedding(num, dim, dtype=dtype, seed=seed)
    table = host_values(model)["weight"]
    idx = np.random.default_rng(seed).integers(0, num, shape).astype(index_dtype)
    y = run_on(model, idx, dev)
    assert tuple(y.shape) == (*shape, dim) and y.dtype == model.weight.dtype
    np.testing.assert_array_equal(to_numpy(y), table[idx])


def test_embedding_init_is_standard_normal_and_seeded():
    a = layers.Embedding(200, 50, seed=3)
    w = a.weight.value
    assert w.shape == (200, 50) and w.dtype == np.float32
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1.0) < 0.02
    np.testing.assert_array_equal(w, layers.Embedding(200, 50, seed=3).weight.value)
    assert not np.array_equal(w, layers.Embedding(200, 50, seed=4).weight.value)
    assert list(ms.named_params(a)) == ["weight"]


@forward_check
@given(lead=st.lists(sizes, min_size=0, max_size=2), dim=sizes, dtype=float_dtypes,
       eps=st.sampled_from([1e-5, 1e-3]), seed=seeds)
def test_layer_norm_forward(dev, lead, dim, dtype, eps, seed):
    rng = np.random.default_rng(seed)
    model = layers.LayerNorm(dim, eps=eps, dtype=dtype)
    np.testing.assert_array_equal(model.weight.value, np.ones(dim))
    np.testing.assert_array_equal(model.bias.value, np.zeros(dim))
    model.weight.assign(rng.standard_normal(dim).astype(dtype))
    model.bias.assign(rng.standard_normal(dim).astype(dtype))
    w = host_values(model)
    x = (rng.standard_normal((*lead, dim)) * 3 + 2).astype(dtype)
    x64 = x.astype(np.float64)
    # torch.nn.LayerNorm: biased variance over the last axis
    expected = ((x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
                * w["weight"] + w["bias"])
    y = run_on(model, x, dev)
    assert y.dtype == model.weight.dtype and tuple(y.shape) == x.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-4 if dtype == "float32" else 1e-10,
                               atol=1e-5 if dtype == "float32" else 1e-10)


# -- dropout ---------------------------------------------------------------------------------
def test_dropout_is_identity_in_eval_mode(dev):
    x = to_dev(np.arange(1.0, 13.0).reshape(3, 4), dev)
    drop = layers.Dropout(0.5)
    assert drop(x) is x  # model(x) evaluates: nothing dropped, nothing copied
    model = layers.Chain(layers.Dropout(0.9))
    assert model(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_train_mode_drops_and_rescales(p):
    x = np.random.default_rng(0).uniform(1.0, 2.0, (200, 100)).astype(np.float32)
    y = layers.Dropout(p)(x, train=True, rng=np.random.default_rng(1))
    assert y.dtype == x.dtype
    kept = y != 0
    # inverted dropout: survivors are scaled by 1/(1-p), so the expectation is unchanged
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(1 - p), rtol=1e-6)
    assert abs((1 - kept.mean()) - p) < 0.01


def test_dropout_zero_is_identity_even_when_training():
    x = np.ones((3, 3))
    assert layers.Dropout(0.0)(x, train=True) is x


def test_dropout_same_seed_same_mask_on_every_device(dev):
    x = np.random.default_rng(0).standard_normal((6, 7))
    host = layers.Dropout(0.4)(x, train=True, rng=np.random.default_rng(5))
    there = layers.Dropout(0.4)(to_dev(x, dev), train=True, rng=np.random.default_rng(5))
    assert device_of(there) == dev
    np.testing.assert_array_equal(to_numpy(there), host)
    other = layers.Dropout(0.4)(x, train=True, rng=np.random.default_rng(6))
    assert not np.array_equal(other, host)


def test_dropout_mask_is_drawn_on_the_device():
    sim = ms.device("sim:1")
    x = to_dev(np.ones((4, 5), dtype=np.float32), sim)
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        y = layers.Dropout(0.5)(x, train=True, rng=np.random.default_rng(0))
    assert t.count == 0  # (the mask used to be drawn on the host and sent every step)
    assert device_of(y) == sim and 0 < np.count_nonzero(to_numpy(y)) < 20
    with ms.track_transfers() as t:
        layers.Dropout(0.5)(x)  # eval mode: no mask, nothing moves
    assert t.count == 0


def test_dropout_in_backprop_trains_and_call_evaluates():
    model = layers.Chain(layers.Dense(4, 4, dtype="float64", seed=0), layers.Dropout(0.5))
    x = np.ones((2, 4))
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.array_equal(model(x, train=True, rng=np.random.default_rng(0)), model(x))
    ms.backprop(model, losses.mse, x, np.zeros((2, 4)), rng=np.random.default_rng(0))
    dropped = np.all(model.layers[0].weight.grad == 0, axis=1)  # rows whose output was dropped
    assert dropped.any()


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rejects_p_outside_interval(p):
    with pytest.raises(ms.ArgumentError, match=r"p=.* is outside \[0, 1\)"):
        layers.Dropout(p)


def test_dropout_rejects_non_number():
    with pytest.raises(ms.ArgumentTypeError, match="p="):
        layers.Dropout("0.5")


# -- Dense init and configuration --------------------------------------------------------------
@given(n_in=sizes, n_out=sizes, seed=seeds)
def test_dense_init_shapes_bounds_and_seed(n_in, n_out, seed):
    d = layers.Dense(n_in, n_out, seed=seed)
    assert d.weight.shape == (n_out, n_in) and d.bias.shape == (n_out,)
    assert d.weight.dtype == np.float32 and d.bias.dtype == np.float32
    bound = 1 / math.sqrt(n_in)  # torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
    assert np.all(np.abs(d.weight.value) <= bound) and np.all(np.abs(d.bias.value) <= bound)
    again = layers.Dense(n_in, n_out, seed=seed)
    np.testing.assert_array_equal(d.weight.value, again.weight.value)
    np.testing.assert_array_equal(d.bias.value, again.bias.value)
    assert d.weight is not again.weight


def test_dense_init_fills_the_interval():
    w = layers.Dense(100, 100, seed=0).weight.value
    assert w.min() < -0.09 and w.max() > 0.09  # bound is 0.1
    assert not np.array_equal(w, layers.Dense(100, 100, seed=1).weight.value)


def test_dense_without_bias():
    d = layers.Dense(3, 2, bias=False, seed=0)
    assert d.bias is None
    assert list(ms.named_params(d)) == ["weight"] and ms.params(d) == [d.weight]
    x = np.ones((4, 3), dtype=np.float32)
    np.testing.assert_allclose(d(x), x @ d.weight.value.T, rtol=1e-6)


def test_dense_float64_and_affine_alias():
    d = layers.Affine(3, 2, dtype="float64", seed=0)
    assert layers.Affine is layers.Dense and isinstance(d, layers.Dense)
    assert d.weight.dtype == np.float64 and d.bias.dtype == np.float64
    assert d(np.ones((1, 3))).dtype == np.float64
    assert layers.Dense(3, 2, dtype=np.float64).dtype == "float64"


def test_float64_batch_feeds_float32_model(dev):
    """A float64 NumPy batch is cast to the layer's dtype, so grads keep the Params' dtype."""
    model = layers.Chain(layers.Dense(3, 4, "relu", seed=0), layers.LayerNorm(4))
    move_params(model, dev)
    x = to_dev(np.random.default_rng(0).standard_normal((5, 3)), dev)
    y, pullback = model.forward(x, Context(train=True))
    assert y.dtype == model[0].weight.dtype
    dx = pullback(y)
    assert dx.dtype == x.dtype
    assert all(p.grad.dtype == p.dtype for p in ms.params(model))


@pytest.mark.parametrize("kwargs, error, argument", [
    ({"in_features": 0, "out_features": 2}, ms.ArgumentError, "in_features=0"),
    ({"in_features": 2, "out_features": -1}, ms.ArgumentError, "out_features=-1"),
    ({"in_features": 2.5, "out_features": 2}, ms.ArgumentTypeError, "in_features=2.5"),
    ({"in_features": True, "out_features": 2}, ms.ArgumentTypeError, "in_features=True"),
    ({"in_features": 2, "out_features": 2, "dtype": "int8"}, ms.ArgumentError, "dtype='int8'"),
    ({"in_features": 2, "out_features": 2, "activation": "nope"}, ms.ArgumentError,
     "activation='nope'"),
])
def test_dense_bad_arguments(kwargs, error, argument):
    with pytest.raises(error) as info:
        layers.Dense(**kwargs)
    assert argument in str(info.value)
    assert isinstance(info.value, ValueError if error is ms.ArgumentError else TypeError)


@pytest.mark.parametrize("make, argument", [
    (lambda: layers.Embedding(0, 3), "num=0"),
    (lambda: layers.Embedding(3, 0), "dim=0"),
    (lambda: layers.Embedding(3, 2, dtype="int32"), "dtype='int32'"),
    (lambda: layers.LayerNorm(0), "dim=0"),
    (lambda: layers.LayerNorm(3, eps=0.0), "eps=0.0 is outside (0, ∞)"),
    (lambda: layers.LayerNorm(3, eps=-1.0), "eps=-1.0 is outside (0, ∞)"),
    (lambda: layers.Activation("nope"), "name='nope'"),
])
def test_other_bad_constructor_arguments(make, argument):
    with pytest.raises(ms.ArgumentError) as info:
        make()
    assert argument in str(info.value)


def test_chain_rejects_non_layers():
    with pytest.raises(ms.ArgumentTypeError, match="Chain argument 1"):
        layers.Chain(layers.Dense(2, 2), 42)


# -- wrong inputs ------------------------------------------------------------------------------
def test_wrong_width_names_path_shape_and_expected():
    model = layers.Chain(layers.Dense(3, 4), layers.LayerNorm(5))
    with pytest.raises(ms.ArgumentError, match=r"layers\.0: input has shape \(2, 5\), expected "
                       r"last axis in_features=3"):
        model(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ms.ArgumentError, match=r"layers\.1: input has shape \(2, 4\), expected "
                       r"last axis dim=5"):
        model(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ms.ArgumentError, match=r"Dense: input has shape \(\)"):
        layers.Dense(3, 4)(np.ones((), dtype=np.float32))


def test_non_floating_input_names_dtype():
    with pytest.raises(ms.ArgumentError, match=r"Dense: input has dtype int64, expected a "
                       r"floating dtype"):
        layers.Dense(2, 2)(np.ones((1, 2), dtype=np.int64))
    with pytest.raises(ms.ArgumentError, match=r"layers\.0: input has dtype bool"):
        layers.Chain(layers.Dropout(0.5))(np.ones(2, dtype=bool))


def test_non_array_input():
    with pytest.raises(ms.ArgumentTypeError, match="input is a list"):
        layers.Dense(2, 2)([[1.0, 2.0]])


def test_embedding_bad_indices_name_path_value_and_range(dev):
    model = layers.Chain(layers.Embedding(5, 2), layers.Dense(2, 2))
    move_params(model, dev)
    with pytest.raises(ms.ArgumentError, match=r"layers\.0: indices have dtype float32, expected "
                       r"an integer dtype"):
        model(to_dev(np.zeros(3, dtype=np.float32), dev))
    with pytest.raises(ms.ArgumentError, match=r"layers\.0: index 5 is outside \[0, 5\)"):
        model(to_dev(np.array([0, 5, 1]), dev))
    with pytest.raises(ms.ArgumentError, match=r"layers\.0: index -1 is outside \[0, 5\)"):
        model(to_dev(np.array([[0], [-1]]), dev))


def test_wrong_device_names_both_devices_and_path():
    sim = ms.device("sim:1")
    model = layers.Chain(layers.Dense(3, 4), layers.Dense(4, 2))
    move_params(model, sim)
    with pytest.raises(ms.DeviceMismatchError) as info:
        model(np.ones((2, 3), dtype=np.float32))
    message = str(info.value)
    assert "layers.0" in message and "host" in message and "sim:1" in message
    with pytest.raises(ms.DeviceMismatchError, match=r"layers\.0.*sim:2.*sim:1"):
        model(to_dev(np.ones((2, 3), dtype=np.float32), ms.device("sim:2")))


def test_wrong_device_path_points_at_the_first_layer_with_params():
    sim = ms.device("sim:1")
    model = layers.Chain("relu", layers.Chain(layers.LayerNorm(3), layers.Dense(3, 2)))
    move_params(model, sim)
    with pytest.raises(ms.DeviceMismatchError, match=r"layers\.1\.layers\.0: input is on host "
                       r"but the layer's Params are on sim:1"):
        model(np.ones((2, 3), dtype=np.float32))


@pytest.mark.parametrize("make", [lambda: layers.Embedding(4, 2), lambda: layers.LayerNorm(2)])
def test_wrong_device_for_new_layers(make):
    model = make()
    move_params(model, ms.device("sim:2"))
    x = np.zeros((1, 2), dtype=np.int64 if isinstance(model, layers.Embedding) else np.float32)
    with pytest.raises(ms.DeviceMismatchError, match="host.*sim:2"):
        model(x)


# -- tied weights ------------------------------------------------------------------------------
def test_tied_weights_listed_once_and_grads_accumulate():
    a = layers.Dense(3, 3, "tanh", dtype="float64", seed=0)
    b = layers.Dense(3, 3, dtype="float64", seed=1)
    b.weight = a.weight
    model = layers.Chain(a, b)
    assert ms.params(model) == [a.weight, a.bias, b.bias]
    assert list(ms.named_params(model)) == ["layers.0.weight", "layers.0.bias", "layers.1.bias"]
    assert ms.named_params(model)["layers.0.weight"] is a.weight

    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.random.default_rng(1).standard_normal((4, 3))
    ms.backprop(model, losses.mse, x, y)
    tied = a.weight.grad.copy()
    # the same gradient, computed with the two uses as separate Params
    b.weight = ms.Param(a.weight.value.copy())
    for p in ms.params(model):
        p.grad = None
    ms.backprop(model, losses.mse, x, y)
    np.testing.assert_allclose(tied, a.weight.grad + b.weight.grad, rtol=1e-12)
    assert not np.allclose(tied, a.weight.grad)


# -- Param checks --------------------------------------------------------------------------------
def test_grad_setter_rejects_wrong_shape_dtype_and_device():
    p = ms.Param(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ms.ArgumentError, match=r"shape \(3, 2\), expected .*\(2, 3\)"):
        p.grad = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ms.ArgumentError, match="dtype float64, expected .*float32"):
        p.grad = np.zeros((2, 3))
    with pytest.raises(ms.DeviceMismatchError, match="sim:1.*host"):
        p.grad = to_dev(np.zeros((2, 3), dtype=np.float32), ms.device("sim:1"))
    with pytest.raises(ms.ArgumentTypeError, match=r"expected an array of shape \(2, 3\)"):
        p.grad = [[0.0] * 3] * 2
    p.grad = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(p.grad, 1.0)
    p.grad = None
    assert p.grad is None


def test_assign_rejects_wrong_shape_and_dtype_and_copies_across_devices():
    p = ms.Param(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ms.ArgumentError, match=r"shape \(3,\), expected .*\(2, 3\)"):
        p.assign(np.zeros(3, dtype=np.float32))
    with pytest.raises(ms.ArgumentError, match="dtype float64, expected .*float32"):
        p.assign(np.zeros((2, 3)))
    source = to_dev(np.full((2, 3), 7.0, dtype=np.float32), ms.device("sim:1"))
    with ms.track_transfers() as t:
        p.assign(source)
    assert t.count == 1 and t.bytes == 24
    np.testing.assert_array_equal(p.value, 7.0)


def test_param_is_compared_by_identity():
    a, b = ms.Param(np.zeros(2)), ms.Param(np.zeros(2))
    assert a != b and a == a and len({a, b}) == 2


# -- user-defined layers ------------------------------------------------------------------------
@ms.layer(name="test_layers.Scale")
@attrs.define(eq=False)
class Scale:
    """A user layer: y = x * scale, with one Param."""

    scale: ms.Param
    label: str = "scale"

    def forward(self, x, ctx):
        s = self.scale.value

        def pullback(dy):
            self.scale.accumulate_grad(dy * x if dy.ndim == 1 else
                                       ms.layers.base.namespace(dy).sum(dy * x, axis=0))
            return dy * s

        return x * s, pullback


def make_user_model():
    return layers.Chain(layers.Dense(2, 3, dtype="float64", seed=0),
                        Scale(ms.Param(np.array([1.0, 2.0, 3.0]))))


def test_user_layer_works_inside_chain():
    model = make_user_model()
    x = np.ones((4, 2))
    np.testing.assert_allclose(model(x), model[0](x) * [1.0, 2.0, 3.0])
    paths = list(ms.named_params(model))
    assert paths == ["layers.0.weight", "layers.0.bias", "layers.1.scale"]
    assert ms.params(model)[-1] is model[1].scale
    ms.backprop(model, losses.mse, x, np.zeros((4, 3)))
    assert model[1].scale.grad.shape == (3,)
    assert np.all(model[0].weight.grad != 0)


def test_graph_id_is_per_object_not_per_architecture():
    model = make_user_model()
    assert ms.graph_id(model) == ms.graph_id(model)
    assert ms.graph_id(model) != ms.graph_id(make_user_model())
    assert len(ms.graph_id(model)) >= 16


@pytest.mark.parametrize("dtype", [None, object(), "int8", np.int32])
def test_a_non_float_dtype_is_an_argument_error(dtype):
    for make in (lambda: layers.Dense(3, 2, dtype=dtype),
                 lambda: layers.Embedding(3, 2, dtype=dtype),
                 lambda: layers.LayerNorm(3, dtype=dtype)):
        with pytest.raises(ms.ArgumentError, match="dtype="):
            make()


@pytest.mark.parametrize("seed,error", [("x", ms.ArgumentTypeError), (1.5, ms.ArgumentTypeError),
                                        (True, ms.ArgumentTypeError), (-1, ms.ArgumentError)])
def test_a_bad_seed_names_the_argument(seed, error):
    with pytest.raises(error, match="seed="):
        layers.Dense(3, 2, seed=seed)


def test_a_user_function_named_like_an_activation_is_not_swapped_for_ours():
    def relu(x):  # a leaky variant that merely shares the name
        return np.where(x > 0, x, 0.1 * x)

    with pytest.raises(ms.ArgumentTypeError):
        layers.Chain(layers.Dense(1, 1, seed=0), relu)
    with pytest.raises(ms.ArgumentError):
        layers.Dense(2, 2, activation=relu)
    assert layers.Dense(2, 2, activation=layers.relu).activation == "relu"


@ms.layer
class LayersTestForgetful:
    w: ms.Param

    def forward(self, x, ctx):
        return x  # forgot the pullback


def test_a_forward_that_returns_no_pullback_is_named():
    model = LayersTestForgetful(ms.Param(np.ones(2, "float32")))
    with pytest.raises(ms.ArgumentTypeError, match=r"must return \(y, pullback\)"):
        model(np.ones(2, "float32"))
    with pytest.raises(ms.ArgumentTypeError, match=r"must return \(y, pullback\)"):
        ms.backprop(model, losses.mse, np.ones(2, "float32"), np.ones(2, "float32"))


@ms.layer
class LayersTestDictHolder:
    ps: dict


def test_params_in_a_dict_field_are_refused_not_left_out():
    model = LayersTestDictHolder({"a": ms.Param(np.ones(2, "float32"))})
    with pytest.raises(ms.ArgumentTypeError, match="ps: a dict of Params"):
        ms.params(model)


def test_an_activation_layer_is_accepted_where_a_name_is_and_a_negative_seed_refused():
    assert layers.Dense(4, 2, layers.ReLU()).activation == "relu"
    with pytest.raises(ms.ArgumentError, match="rng=-1"):
        layers.Dense(2, 2)(np.ones((1, 2), "float32"), rng=-1)
