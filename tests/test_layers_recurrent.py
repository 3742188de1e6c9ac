"""GRU, LSTM and LastStep: torch parity (output, dx, every Param's gradient, with and without
an initial state) on every device, gradient checks, initialisation, the state passed and
never stored, a sequence classifier through conversions, save/load and torch state dicts,
and the errors for bad input."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from conftest import sgd_step, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers
from modelsync.devices import device_of
from modelsync.layers.base import Context, accumulate, param_field
from modelsync.transfers import copy_to

# float32 against torch: both sum the same products in another order, over a few steps
TOL = {"rtol": 1e-5, "atol": 2e-6}
KINDS = ["GRU", "LSTM"]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def to_dev(array: np.ndarray, dev: ms.Device):
    return copy_to(array, dev, reason="test", what="data")


def make(kind: str, n_in: int = 5, hidden: int = 7, **kwargs):
    return getattr(layers, kind)(n_in, hidden, **kwargs)


def torch_twin(torch, model, kind: str):
    """torch.nn.GRU/LSTM(batch_first=True) holding ``model``'s values."""
    net = getattr(torch.nn, kind)(model.input_size, model.hidden_size, batch_first=True,
                                  bias=model.bias_ih_l0 is not None)
    if model.dtype == "float64":
        net = net.double()
    with torch.no_grad():
        for path, p in ms.named_params(model).items():
            getattr(net, path).copy_(torch.from_numpy(to_numpy(p.value)))
    return net


def states(kind: str, batch: int, hidden: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    c0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    return h0 if kind == "GRU" else (h0, c0)


def on_dev(state, dev):
    if state is None:
        return None
    return tuple(to_dev(s, dev) for s in state) if isinstance(state, tuple) else to_dev(state, dev)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


# -- torch parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_and_every_gradient_match_torch(torch, dev, kind, bias, with_state):
    batch, steps, n_in, hidden = 3, 6, 5, 7
    host = make(kind, n_in, hidden, bias=bias, seed=11)
    net = torch_twin(torch, host, kind)
    model = ms.to_device(host, dev)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, steps, n_in)).astype(np.float32)
    dy = rng.standard_normal((batch, steps, hidden)).astype(np.float32)
    state = states(kind, batch, hidden) if with_state else None

    y, pullback = model.forward_state(to_dev(x, dev), Context(train=True), on_dev(state, dev))
    assert device_of(y) == dev and tuple(y.shape) == (batch, steps, hidden)
    dx, dstate = pullback(to_dev(dy, dev))

    x_t = torch.from_numpy(x).requires_grad_()
    state_t = None
    if with_state:
        state_t = tuple(torch.from_numpy(s[None]).requires_grad_() for s in as_tuple(state))
    y_t, _ = net(x_t, None if state_t is None else (state_t[0] if kind == "GRU" else state_t))
    y_t.backward(torch.from_numpy(dy))

    np.testing.assert_allclose(to_numpy(y), y_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(to_numpy(dx), x_t.grad.numpy(), **TOL)
    grads = {path: to_numpy(p.grad) for path, p in ms.named_params(model).items()}
    assert sorted(grads) == sorted(name for name, _ in net.named_parameters())
    for path, grad in grads.items():
        np.testing.assert_allclose(grad, getattr(net, path).grad.numpy(), **TOL, err_msg=path)
    if with_state:
        for ours, theirs in zip(as_tuple(dstate), state_t, strict=True):
            np.testing.assert_allclose(to_numpy(ours), theirs.grad.numpy()[0], **TOL)
    else:
        assert dstate is None


@pytest.mark.parametrize("kind", KINDS)
def test_layer_call_with_a_state_matches_torch_and_the_last_step_is_h_n(torch, dev, kind):
    host = make(kind, seed=2)
    net = torch_twin(torch, host, kind)
    model = ms.to_device(host, dev)
    x = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    state = states(kind, 4, 7)
    y = model(to_dev(x, dev), on_dev(state, dev))
    torch_state = tuple(torch.from_numpy(s[None]) for s in as_tuple(state))
    with torch.no_grad():
        y_t, out = net(torch.from_numpy(x), torch_state[0] if kind == "GRU" else torch_state)
    h_n = out if kind == "GRU" else out[0]
    np.testing.assert_allclose(to_numpy(y), y_t.numpy(), **TOL)
    np.testing.assert_allclose(to_numpy(y)[:, -1], h_n.numpy()[0], **TOL)
    # the state is an argument, not memory: a zero start differs, and repeats exactly
    zero = to_numpy(model(to_dev(x, dev)))
    assert not np.allclose(zero, to_numpy(y))
    np.testing.assert_array_equal(to_numpy(model(to_dev(x, dev))), zero)
    zeros = tuple(np.zeros((4, 7), np.float32) for _ in as_tuple(state))
    np.testing.assert_array_equal(
        to_numpy(model(to_dev(x, dev), on_dev(zeros[0] if kind == "GRU" else zeros, dev))), zero)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_layers_match_torch_in_double_precision(torch, kind):
    model = make(kind, 3, 4, dtype="float64", seed=0)
    net = torch_twin(torch, model, kind)
    x = np.random.default_rng(2).standard_normal((2, 9, 3))
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-12, atol=1e-13)


# -- gradient checks ------------------------------------------------------------------------
@ms.layer
@attrs.define(eq=False)
class WithState:
    """A recurrent layer started from a trained initial state (a test of the state's
    gradient through ``forward_state``): Params ``h0`` (and ``c0`` for an LSTM)."""

    inner: object
    h0: ms.Param = param_field()
    c0: ms.Param | None = param_field(default=None, optional=True)

    def forward(self, x, ctx):
        state = self.h0.value if self.c0 is None else (self.h0.value, self.c0.value)
        y, pullback = self.inner.forward_state(x, ctx.child("inner"), state)

        def back(dy):
            dx, dstate = pullback(dy)
            if self.c0 is None:
                accumulate(self.h0, dstate)
            else:
                accumulate(self.h0, dstate[0])
                accumulate(self.c0, dstate[1])
            return dx

        return y, back


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_check_gradients(kind, bias):
    x = np.random.default_rng(4).standard_normal((3, 5, 4))
    ms.check_gradients(make(kind, 4, 6, bias=bias, seed=7), x)


@pytest.mark.parametrize("kind", KINDS)
def test_check_gradients_through_a_given_state(kind):
    model = make(kind, 4, 6, seed=8)
    rng = np.random.default_rng(5)
    wrapped = WithState(model, ms.Param(rng.standard_normal((3, 6))),
                        ms.Param(rng.standard_normal((3, 6))) if kind == "LSTM" else None)
    ms.check_gradients(wrapped, rng.standard_normal((3, 5, 4)), directions=3)


def test_check_gradients_catches_a_wrong_state_gradient():
    """The state check above has teeth: a pullback that drops part of dh0 fails."""

    @ms.layer
    @attrs.define(eq=False)
    class Halved(WithState):
        def forward(self, x, ctx):
            y, back = WithState.forward(self, x, ctx)

            def halved(dy):
                dx = back(dy)
                self.h0.grad = self.h0.grad * 0.5
                return dx

            return y, halved

    rng = np.random.default_rng(6)
    bad = Halved(layers.GRU(4, 6, seed=1), ms.Param(rng.standard_normal((3, 6))))
    with pytest.raises(ms.GradientCheckError, match="h0"):
        ms.check_gradients(bad, rng.standard_normal((3, 5, 4)))


def test_last_step_selects_and_routes_the_gradient(dev):
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    y, pullback = layers.LastStep().forward(to_dev(x, dev), Context())
    np.testing.assert_array_equal(to_numpy(y), x[:, -1])
    dx = to_numpy(pullback(to_dev(np.ones((2, 3), np.float32), dev)))
    assert dx.shape == x.shape and np.all(dx[:, -1] == 1) and np.all(dx[:, :-1] == 0)
    ms.check_gradients(layers.LastStep(), x.astype(np.float64))


# -- construction ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,gates", [("GRU", 3), ("LSTM", 4)])
def test_params_named_shaped_and_initialised_like_torch(kind, gates):
    model = make(kind, 10, 50, seed=0)
    shapes = {path: p.shape for path, p in ms.named_params(model).items()}
    assert shapes == {"weight_ih_l0": (gates * 50, 10), "weight_hh_l0": (gates * 50, 50),
                      "bias_ih_l0": (gates * 50,), "bias_hh_l0": (gates * 50,)}
    bound = 1 / math.sqrt(50)
    for p in ms.params(model):
        v = to_numpy(p.value)
        assert p.dtype == np.float32 and np.all(np.abs(v) <= bound)
        assert v.max() > 0.9 * bound and v.min() < -0.9 * bound  # U(-b, b), not narrower
    again = make(kind, 10, 50, seed=0)
    for a, b in zip(ms.params(model), ms.params(again), strict=True):
        np.testing.assert_array_equal(a.value, b.value)
    assert not np.array_equal(make(kind, 10, 50, seed=1).weight_hh_l0.value,
                              model.weight_hh_l0.value)
    no_bias = make(kind, 10, 50, bias=False)
    assert list(ms.named_params(no_bias)) == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_errors(kind):
    with pytest.raises(ms.ArgumentError, match=r"input_size=0 is outside \[1, ∞\)"):
        make(kind, 0, 3)
    with pytest.raises(ms.ArgumentTypeError, match="hidden_size=2.5"):
        make(kind, 3, 2.5)
    with pytest.raises(ms.ArgumentTypeError, match="bias='yes'.*expected a bool"):
        make(kind, 3, 2, bias="yes")
    with pytest.raises(ms.ArgumentError, match="dtype='int8'"):
        make(kind, 3, 2, dtype="int8")


# -- a sequence classifier through the library ----------------------------------------------
def classifier(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.GRU(5, 8, seed=seed), layers.LastStep(),
                        layers.Dense(8, 3, seed=seed + 1))


def sequences(dev, batch: int = 6):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((batch, 4, 5)).astype(np.float32)
    y = rng.integers(0, 3, batch)
    return to_dev(x, dev), to_dev(y, dev)


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_classifier_converts_trains_without_moving_params_and_round_trips(tmp_path, mode):
    host = classifier()
    x_host, _ = sequences(ms.device("host"))
    expected = host(x_host)
    gid = ms.graph_id(host)
    model = ms.to_device(host, "sim:1", mode=mode)
    x, labels = sequences(ms.device("sim:1"))
    np.testing.assert_allclose(to_numpy(model(x)), expected, **TOL)
    assert ms.graph_id(model) == gid
    sgd_step(model, x, labels)  # the first step makes the grads
    with ms.track_transfers() as t:
        for _ in range(2):
            sgd_step(model, x, labels)
    assert t.bytes_of("param") == 0
    trained = to_numpy(model(x))
    assert not np.allclose(trained, expected)
    ms.save(model, tmp_path / "clf.safetensors")
    loaded = ms.load(tmp_path / "clf.safetensors")
    assert isinstance(loaded.layers[0], layers.GRU) and isinstance(loaded.layers[1],
                                                                     layers.LastStep)
    np.testing.assert_allclose(loaded(x_host), trained, **TOL)
    assert ms.graph_id(loaded) == gid


@pytest.mark.parametrize("kind", KINDS)
def test_a_torch_state_dict_loads_by_name_and_predicts_the_same(torch, dev, kind):
    torch.manual_seed(0)
    net = getattr(torch.nn, kind)(5, 7, batch_first=True)
    model = ms.to_device(make(kind, seed=3), dev)
    assert ms.load_into(model, net.state_dict(), check="structure") is model
    x = np.random.default_rng(3).standard_normal((2, 6, 5)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(to_numpy(model(to_dev(x, dev))), expected, **TOL)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_name_path_argument_value_and_expectation(kind):
    model = make(kind, 5, 7)
    x = np.zeros((2, 3, 5), np.float32)
    with pytest.raises(ms.ArgumentError, match=r"^" + kind + r": input has shape \(2, 3, 4\), "
                       r"expected last axis input_size=5"):
        model(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ms.ArgumentError, match=r"shape \(3, 5\) \(2 axes\), expected "
                       r"\(N, T, input_size\) = \(N, T, 5\), batch first"):
        model(np.zeros((3, 5), np.float32))
    with pytest.raises(ms.ArgumentError, match=r"shape \(2, 0, 5\), expected at least one step"):
        model(np.zeros((2, 0, 5), np.float32))
    with pytest.raises(ms.ArgumentError, match="dtype int64, expected a floating dtype"):
        model(np.zeros((2, 3, 5), np.int64))
    good = states(kind, 2, 7)
    bad_shape = np.zeros((1, 2, 7), np.float32)
    state = bad_shape if kind == "GRU" else (good[0], bad_shape)
    name = "h0" if kind == "GRU" else "c0"
    with pytest.raises(ms.ArgumentError, match=rf"^{kind}: {name} has shape \(1, 2, 7\), "
                       r"expected \(N, hidden_size\) = \(2, 7\).*pass state\[0\]"):
        model(x, state)
    with pytest.raises(ms.ArgumentTypeError, match=r"h0 is a list; expected an array"):
        model(x, [[0.0] * 7] * 2 if kind == "GRU" else ([[0.0] * 7] * 2, good[1]))
    if kind == "LSTM":
        with pytest.raises(ms.ArgumentTypeError, match=r"state is a ndarray; expected a tuple "
                           r"\(h0, c0\)"):
            model(x, good[0])


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_on_another_device_and_errors_deep_in_a_chain(kind):
    sim = ms.device("sim:1")
    model = ms.to_device(layers.Chain(layers.Dense(4, 6), make(kind, 5, 7)), sim)
    with pytest.raises(ms.ArgumentError, match=r"^layers\.1: input has shape \(2, 3, 6\), "
                       r"expected last axis input_size=5"):
        model(to_dev(np.zeros((2, 3, 4), np.float32), sim))
    with pytest.raises(ms.DeviceMismatchError, match="on host but the layer's Params are on sim:1"):
        model(np.zeros((2, 3, 4), np.float32))
    rnn = model.layers[1]
    x = to_dev(np.zeros((2, 3, 5), np.float32), sim)
    h0 = np.zeros((2, 7), np.float32)
    with pytest.raises(ms.DeviceMismatchError, match=rf"^{kind}: h0 is on host but the layer's "
                       r"Params are on sim:1; move it with ms.to_device\(h0, 'sim:1'\)"):
        rnn(x, h0 if kind == "GRU" else (h0, h0))


def test_last_step_errors():
    with pytest.raises(ms.ArgumentError, match=r"LastStep: input has shape \(3,\), expected "
                       r"\(N, T, \.\.\.\) with T >= 1"):
        layers.LastStep()(np.zeros(3))
    with pytest.raises(ms.ArgumentTypeError, match="input is a list"):
        layers.LastStep()([[1.0]])


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), steps=st.integers(1, 4), n_in=st.integers(1, 4),
       hidden=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_any_small_shape_matches_torch(torch, kind, batch, steps, n_in, hidden, seed):
    model = make(kind, n_in, hidden, seed=seed)
    net = torch_twin(torch, model, kind)
    x = np.random.default_rng(seed).standard_normal((batch, steps, n_in)).astype(np.float32)
    y, pullback = model.forward(x, Context(train=True))
    dx = pullback(np.ones_like(y))
    x_t = torch.from_numpy(x).requires_grad_()
    y_t = net(x_t)[0]
    y_t.sum().backward()
    np.testing.assert_allclose(y, y_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), **TOL)
    np.testing.assert_allclose(to_numpy(model.weight_hh_l0.grad),
                               net.weight_hh_l0.grad.numpy(), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_pullback_twice_gives_the_same_and_accumulates(kind, dev):
    model = ms.to_device(make(kind, seed=1), dev)
    x = to_dev(np.random.default_rng(0).standard_normal((2, 5, 5)).astype(np.float32), dev)
    y, pullback = model.forward(x, Context(train=True))
    dy = to_dev(np.random.default_rng(1).standard_normal((2, 5, 7)).astype(np.float32), dev)
    first = to_numpy(pullback(dy))
    grads = {path: to_numpy(p.grad) for path, p in ms.named_params(model).items()}
    np.testing.assert_array_equal(to_numpy(pullback(dy)), first)
    for path, p in ms.named_params(model).items():
        np.testing.assert_allclose(to_numpy(p.grad), 2 * grads[path], rtol=1e-6, atol=1e-7)


def test_stacked_recurrent_layers_check_and_float64_input_feeds_float32():
    model = layers.Chain(layers.GRU(3, 4, seed=0), layers.LSTM(4, 5, seed=1), layers.LastStep())
    x = np.random.default_rng(2).standard_normal((2, 6, 3))
    ms.check_gradients(model, x)
    y, pullback = model.forward(x, Context(train=True))  # a float64 batch, float32 layers
    assert y.dtype == np.float32 and tuple(y.shape) == (2, 5)
    assert pullback(np.ones((2, 5), np.float32)).dtype == np.float64


def test_column_blocks_cover_every_column_each_small_enough_to_run_serially():
    from modelsync.layers.recurrent_kernels import MAX_BLOCKS, SERIAL_MATMUL, column_blocks

    for rows, inner, cols in [(16, 128, 384), (16, 384, 128), (3, 7, 21), (16, 512, 128),
                              (5, 100, 1000), (1024, 512, 2048)]:
        blocks = column_blocks(rows, inner, cols)
        covered = [j for b in blocks for j in range(cols)[b]]
        assert covered == list(range(cols))
        if len(blocks) > 1:
            assert len(blocks) <= MAX_BLOCKS
            assert all(rows * inner * (b.stop - b.start) <= SERIAL_MATMUL for b in blocks)
    assert len(column_blocks(16, 128, 384)) == 3  # the benchmark's GRU step: split
    assert len(column_blocks(1024, 512, 2048)) == 1  # big enough for threads: one call


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_matmul_cut_into_blocks_still_matches_torch(torch, kind):
    model = make(kind, 8, 128, seed=5)  # batch 16, hidden 128: each step's matmul is split
    net = torch_twin(torch, model, kind)
    x = np.random.default_rng(7).standard_normal((16, 3, 8)).astype(np.float32)
    y, pullback = model.forward(x, Context(train=True))
    dx = pullback(np.ones_like(y))
    x_t = torch.from_numpy(x).requires_grad_()
    y_t = net(x_t)[0]
    y_t.sum().backward()
    np.testing.assert_allclose(y, y_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-5, atol=1e-5)
    for path, p in ms.named_params(model).items():
        np.testing.assert_allclose(p.grad, getattr(net, path).grad.numpy(), rtol=1e-5,
                                   atol=1e-5, err_msg=path)


def test_a_torch_sequence_classifier_loads_with_a_name_map_and_predicts_the_same(torch):
    class TorchClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(5, 8, batch_first=True)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(1)
    net = TorchClassifier()
    model = classifier(seed=4)
    ms.load_into(model, net.state_dict(), check="structure",
                 names=lambda path: path.replace("layers.0.", "rnn.").replace("layers.2.", "fc."))
    x = np.random.default_rng(8).standard_normal((3, 6, 5)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, **TOL)
