"""Optimizers (SPEC "Optimizers"): every rule against PyTorch's documented update formulas,
written out below in plain NumPy float64, over 100-step trajectories on host and sim:1;
chain, the gradient transforms, state_dict round trips, state that follows a moved Param,
and errors that name the argument and its interval."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
from conftest import GPU_COUNT, GPU_WHY, to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import modelsync as ms
from modelsync import kernels, layers, optim
from modelsync.devices import device_of
from modelsync.errors import ArgumentError, ArgumentTypeError
from modelsync.kernels import prange
from modelsync.optim import kernel as optim_kernel
from modelsync.transfers import copy_to

SHAPES = [(3, 4), (5,)]
STEPS = 100
RTOL = 1e-12


# -- PyTorch's documented update rules, in NumPy float64 ---------------------------------------
# Each takes (theta, g, state, t) with t = 1, 2, ... and returns the new theta.
def ref_sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD docs (dampening 0)."""
    def update(theta, g, state, t):
        if weight_decay:
            g = g + weight_decay * theta
        if momentum:
            state["b"] = g.copy() if t == 1 else momentum * state["b"] + g
            g = g + momentum * state["b"] if nesterov else state["b"]
        return theta - lr * g
    return update


def ref_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """torch.optim.Adam docs (amsgrad off); decoupled=True is torch.optim.AdamW's docs."""
    b1, b2 = betas

    def update(theta, g, state, t):
        if decoupled:
            theta = theta - lr * weight_decay * theta
        m = state.get("m", np.zeros_like(theta))
        v = state.get("v", np.zeros_like(theta))
        state["m"] = m = b1 * m + (1 - b1) * g
        state["v"] = v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        return theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return update


def ref_rmsprop(lr=1e-2, alpha=0.99, eps=1e-8):
    """torch.optim.RMSprop docs (centered off, momentum 0)."""
    def update(theta, g, state, t):
        v = state.get("v", np.zeros_like(theta))
        state["v"] = v = alpha * v + (1 - alpha) * g ** 2
        return theta - lr * g / (np.sqrt(v) + eps)
    return update


def ref_adagrad(lr=1e-2, eps=1e-10):
    """torch.optim.Adagrad docs (lr_decay 0, initial accumulator 0)."""
    def update(theta, g, state, t):
        s = state.get("s", np.zeros_like(theta))
        state["s"] = s = s + g ** 2
        return theta - lr * g / (np.sqrt(s) + eps)
    return update


def ref_clip_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ (norm 2): one factor for all gradients."""
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    return [g * coef for g in grads]


RULES = {
    "SGD": (lambda ps: optim.SGD(ps, lr=0.05), ref_sgd(0.05)),
    "Momentum": (lambda ps: optim.Momentum(ps, lr=0.02, momentum=0.9), ref_sgd(0.02, 0.9)),
    "Nesterov": (lambda ps: optim.Nesterov(ps, lr=0.02, momentum=0.8),
                 ref_sgd(0.02, 0.8, nesterov=True)),
    "Adam": (lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-8),
             ref_adam(0.01, (0.8, 0.99), 1e-8)),
    "Adam-defaults": (lambda ps: optim.Adam(ps), ref_adam()),
    "AdamW": (lambda ps: optim.AdamW(ps, lr=0.01, betas=(0.85, 0.995), eps=1e-7,
                                     weight_decay=0.1),
              ref_adam(0.01, (0.85, 0.995), 1e-7, 0.1, decoupled=True)),
    "RMSProp": (lambda ps: optim.RMSProp(ps, lr=0.01, alpha=0.9, eps=1e-8),
                ref_rmsprop(0.01, 0.9, 1e-8)),
    "AdaGrad": (lambda ps: optim.AdaGrad(ps, lr=0.1, eps=1e-10), ref_adagrad(0.1, 1e-10)),
    "chain(WeightDecay, Momentum)": (
        lambda ps: optim.chain(optim.WeightDecay(ps, 1e-2), optim.Momentum(ps, 0.02, 0.9)),
        ref_sgd(0.02, 0.9, weight_decay=1e-2)),
    "chain(WeightDecay, Nesterov)": (
        lambda ps: optim.chain(optim.WeightDecay(ps, 1e-2), optim.Nesterov(ps, 0.02, 0.9)),
        ref_sgd(0.02, 0.9, nesterov=True, weight_decay=1e-2)),
}


# -- a deterministic problem whose gradients change every step ----------------------------------
def initial(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(1.0, 3.0, shape) for shape in shapes]


def gradient(t, i, theta):
    """The gradient of a quadratic bowl around 0.5 plus a term that varies with the step."""
    ramp = np.arange(theta.size, dtype=np.float64).reshape(theta.shape)
    return np.asarray((1.0 + 0.1 * i) * (theta - 0.5) + 0.3 * np.sin(0.7 * t + ramp + i))


def reference(update, thetas, steps):
    thetas = [x.copy() for x in thetas]
    states = [{} for _ in thetas]
    for t in range(1, steps + 1):
        for i, theta in enumerate(thetas):
            thetas[i] = update(theta, gradient(t, i, theta), states[i], t)
    return thetas


def make_params(thetas, dev):
    return [ms.Param(copy_to(x, dev, reason="test")) for x in thetas]


def set_grads(ps, t):
    for i, p in enumerate(ps):
        theta = to_numpy(p.value)
        g = gradient(t, i, theta).astype(theta.dtype)
        p.grad = copy_to(g, p.device, reason="test", what="grad")


def run(opt, ps, steps, start=1):
    for t in range(start, start + steps):
        set_grads(ps, t)
        opt.step()
    return [to_numpy(p.value) for p in ps]


# -- every rule against its reference -----------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_matches_torch_formula(dev, rule):
    make, update = RULES[rule]
    ps = make_params(initial(), dev)
    got = run(make(ps), ps, STEPS)
    want = reference(update, initial(), STEPS)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=0)
    assert all(p.device == dev for p in ps)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_numpy_fast_path_equals_array_api_path_exactly(rule, monkeypatch):
    make, _ = RULES[rule]
    fast_ps = make_params(initial(), ms.device("host"))
    fast = run(make(fast_ps), fast_ps, 30)
    monkeypatch.setattr(optim_kernel, "HOST_FAST_PATH", False)
    slow_ps = make_params(initial(), ms.device("host"))
    slow = run(make(slow_ps), slow_ps, 30)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", sorted(RULES) + ["ClipNorm", "ClipValue"])
def test_chunked_numpy_path_equals_whole_arrays_exactly(rule, monkeypatch):
    monkeypatch.setenv("MODELSYNC_KERNELS", "numpy")  # chunks are the NumPy path's

    def make(ps):
        if rule in ("ClipNorm", "ClipValue"):
            clip = optim.ClipNorm(ps, 0.5) if rule == "ClipNorm" else optim.ClipValue(ps, 0.2)
            return optim.chain(clip, optim.SGD(ps, 0.1))
        return RULES[rule][0](ps)

    def scenario():
        ps = make_params(initial(), ms.device("host"))
        opt = make(ps)
        run(opt, ps, 10)
        for i, p in enumerate(ps):  # a non-contiguous gradient takes the whole-array route
            g = gradient(11, i, to_numpy(p.value))
            p.grad = np.asfortranarray(g) if g.ndim == 2 else g
        opt.step()
        parts = opt.parts if isinstance(opt, optim.OptimizerChain) else (opt,)
        chunked = any(isinstance(kernel, optim_kernel.ChunkedKernel) for part in parts
                      for _, kernel in part._kernels.values())
        return run(opt, ps, 9, start=12), chunked

    whole, chunked = scenario()
    assert not chunked
    monkeypatch.setattr(optim_kernel, "CHUNK", 2)  # (3, 4) -> 6 chunks, (5,) -> 3 (last of 1)
    got, chunked = scenario()
    assert chunked
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a, b)


def test_float32_stays_float32(dev):
    ps = [ms.Param(copy_to(x.astype(np.float32), dev, reason="test")) for x in initial()]
    opt = optim.Adam(ps, lr=0.01)
    got = run(opt, ps, 20)
    want = reference(ref_adam(0.01), initial(), 20)
    for p, g, w in zip(ps, got, want, strict=True):
        assert p.value.dtype == ps[0].value.dtype and g.dtype == np.float32
        assert to_numpy(opt.state[p]["exp_avg"]).dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4)


@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
       rule=st.sampled_from(sorted(RULES)))
def test_any_shape(shape, rule):
    make, update = RULES[rule]
    thetas = [np.linspace(1.0, 2.0, math.prod(shape)).reshape(shape)]
    ps = make_params(thetas, ms.device("host"))
    got = run(make(ps), ps, 5)
    np.testing.assert_allclose(got[0], reference(update, thetas, 5)[0], rtol=RTOL)
    assert got[0].shape == shape


def test_numpy_step_allocates_nothing():
    big = [np.linspace(1.0, 2.0, 50_000), np.linspace(-1.0, 1.0, 200_000)]  # whole, chunked
    for rule in sorted(RULES) + ["ClipNorm", "ClipValue"]:
        ps = make_params(big, ms.device("host"))
        opt = (optim.ClipNorm(ps, 0.1) if rule == "ClipNorm" else
               optim.ClipValue(ps, 0.01) if rule == "ClipValue" else RULES[rule][0](ps))
        run(opt, ps, 2)  # state and scratch are made on the first step
        tracemalloc.start()
        try:
            opt.step()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16_000, f"{rule} allocated {peak} bytes in one step (params: 2 MB)"


# -- gradient transforms ------------------------------------------------------------------------
def grads_on(ps, arrays):
    for p, g in zip(ps, arrays, strict=True):
        p.grad = copy_to(g, p.device, reason="test", what="grad")


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_norm_is_global(dev, max_norm):
    grads = [np.arange(12.0).reshape(3, 4) / 5 - 1, np.array([2.0, -1.0, 0.5, 0.0, 3.0])]
    ps = make_params(initial(), dev)
    grads_on(ps, grads)
    optim.ClipNorm(ps, max_norm).step()
    want = ref_clip_norm(grads, max_norm)
    for p, w in zip(ps, want, strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), w, rtol=RTOL)
    # one factor for all: the ratio of clipped to original is the same everywhere
    ratios = [to_numpy(p.grad)[g != 0] / g[g != 0] for p, g in zip(ps, grads, strict=True)]
    assert np.ptp(np.concatenate(ratios)) < 1e-12
    assert (ratios[0][0] < 1) == (max_norm < 7.0)


def test_clip_norm_across_devices_counts_its_scalars():
    grads = [np.full((2, 2), 3.0), np.full(3, 4.0)]
    ps = [ms.Param(copy_to(np.zeros((2, 2)), ms.device("sim:1"), reason="test")),
          ms.Param(np.zeros(3))]
    grads_on(ps, grads)
    with ms.track_transfers() as ledger:
        optim.ClipNorm(ps, 1.0).step()
    for p, w in zip(ps, ref_clip_norm(grads, 1.0), strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), w, rtol=RTOL)
    assert ledger.count == 2 and ledger.bytes_of("grad") == 16  # one norm there, one factor back


def test_clip_value(dev):
    grads = [np.linspace(-2, 2, 12).reshape(3, 4), np.array([0.1, -0.3, 5.0, -0.25, 0.0])]
    ps = make_params(initial(), dev)
    grads_on(ps, grads)
    values = [to_numpy(p.value) for p in ps]
    optim.ClipValue(ps, 0.25).step()
    for p, g, v in zip(ps, grads, values, strict=True):
        np.testing.assert_array_equal(to_numpy(p.grad), np.clip(g, -0.25, 0.25))
        np.testing.assert_array_equal(to_numpy(p.value), v)  # the Param itself is untouched


def test_weight_decay_adds_decay_times_param(dev):
    grads = [np.ones((3, 4)), np.arange(5.0)]
    ps = make_params(initial(), dev)
    grads_on(ps, grads)
    optim.WeightDecay(ps, 0.1).step()
    for p, g, x in zip(ps, grads, initial(), strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), g + 0.1 * x, rtol=RTOL)
        np.testing.assert_array_equal(to_numpy(p.value), x)


def test_clip_then_adam_chain(dev):
    ps = make_params(initial(), dev)
    opt = optim.chain(optim.ClipNorm(ps, 1.0), optim.Adam(ps, lr=0.05))
    adam = ref_adam(0.05)
    thetas, states = initial(), [{}, {}]
    for t in range(1, 31):
        set_grads(ps, t)
        opt.step()
        clipped = ref_clip_norm([gradient(t, i, x) for i, x in enumerate(thetas)], 1.0)
        thetas = [adam(x, g, s, t) for x, g, s in zip(thetas, clipped, states, strict=True)]
    for p, w in zip(ps, thetas, strict=True):
        np.testing.assert_allclose(to_numpy(p.value), w, rtol=RTOL)


# -- binding, skipping, zero_grad ---------------------------------------------------------------
def test_params_without_grad_are_skipped(dev):
    ps = make_params(initial(), dev)
    opt = optim.Adam(ps, lr=0.1)
    ps[0].grad = copy_to(np.ones((3, 4)), dev, reason="test")
    opt.step()
    np.testing.assert_array_equal(to_numpy(ps[1].value), initial()[1])
    assert ps[1] not in opt.state and opt.state[ps[0]]["step"] == 1
    assert type(opt.state[ps[0]]["step"]) is int


def test_zero_grad_sets_none(dev):
    ps = make_params(initial(), dev)
    opt = optim.chain(optim.ClipValue(ps[:1], 1.0), optim.SGD(ps, lr=0.1))
    set_grads(ps, 1)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_binding_dedupes_by_identity_and_keeps_order():
    a, b = ms.Param(np.ones(2)), ms.Param(np.ones(2))
    opt = optim.SGD(iter([b, a, b, a]), lr=0.1)
    assert opt.params == (b, a) and opt.paths == ("0", "1")


def test_binding_uses_model_paths():
    model = layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0),
                         layers.Dense(4, 2, dtype="float64", seed=1))
    opt = optim.Adam(ms.params(model))
    assert opt.paths == ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")


@pytest.mark.parametrize("params,error,message", [
    ([], ArgumentError, "params is empty"),
    ([ms.Param(np.ones(2)), "w"], ArgumentTypeError, r"params\[1\] is a str \('w'\)"),
    ([np.ones(2)], ArgumentTypeError, r"params\[0\] is a ndarray"),
    (ms.Param(np.ones(2)), ArgumentTypeError, "single Param"),
    (3, ArgumentTypeError, "params is a int"),
    ({"w": ms.Param(np.ones(2))}, ArgumentTypeError, "params is a dict"),
])
def test_binding_errors(params, error, message):
    with pytest.raises(error, match=message):
        optim.SGD(params, lr=0.1)


def test_binding_a_model_says_use_params():
    with pytest.raises(TypeError, match=re.escape("ms.params(model)")):
        optim.Adam(layers.Dense(2, 2, seed=0))


# -- hyperparameters ----------------------------------------------------------------------------
BAD_HYPER = [
    (optim.SGD, {"lr": -0.1}, "lr=-0.1 is outside [0, ∞)"),
    (optim.Momentum, {"lr": 0.1, "momentum": 1.0}, "momentum=1.0 is outside [0, 1)"),
    (optim.Nesterov, {"lr": 0.1, "momentum": -0.5}, "momentum=-0.5 is outside [0, 1)"),
    (optim.Adam, {"betas": (1.5, 0.9)}, "beta1=1.5 is outside [0, 1)"),
    (optim.Adam, {"betas": (0.9, 1.0)}, "beta2=1.0 is outside [0, 1)"),
    (optim.Adam, {"eps": 0.0}, "eps=0.0 is outside (0, ∞)"),
    (optim.Adam, {"lr": math.inf}, "lr=inf is outside [0, ∞)"),
    (optim.AdamW, {"weight_decay": -1}, "weight_decay=-1 is outside [0, ∞)"),
    (optim.RMSProp, {"alpha": 1.01}, "alpha=1.01 is outside [0, 1]"),
    (optim.RMSProp, {"eps": math.nan}, "eps=nan is outside (0, ∞)"),
    (optim.AdaGrad, {"lr": -1e-3}, "lr=-0.001 is outside [0, ∞)"),
    (optim.WeightDecay, {"decay": -1e-4}, "decay=-0.0001 is outside [0, ∞)"),
    (optim.ClipNorm, {"max_norm": 0}, "max_norm=0 is outside (0, ∞)"),
    (optim.ClipValue, {"limit": -1.0}, "limit=-1.0 is outside (0, ∞)"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD_HYPER)
def test_bad_hyperparameters_name_the_interval(cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls([ms.Param(np.ones(2))], **kwargs)


def test_edge_values_are_accepted():
    ps = [ms.Param(np.ones(2))]
    optim.RMSProp(ps, alpha=1.0)
    optim.Adam(ps, lr=0.0, betas=(0.0, 0.0))
    optim.Momentum(ps, lr=0, momentum=0)


def test_hyperparameter_type_errors():
    with pytest.raises(TypeError, match="lr='0.1' is a str"):
        optim.SGD([ms.Param(np.ones(2))], lr="0.1")
    with pytest.raises(TypeError, match="betas=0.9 is a float"):
        optim.Adam([ms.Param(np.ones(2))], betas=0.9)


def test_schedule_assignment_is_checked():
    p = ms.Param(np.ones(2))
    opt = optim.SGD([p], lr=0.1)
    opt.lr = 0.5
    p.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(p.value, [0.5, 0.5])
    with pytest.raises(ValueError, match=re.escape("lr=-1 is outside [0, ∞)")):
        opt.lr = -1
    assert opt.lr == 0.5


def test_signature_defaults():
    p = [ms.Param(np.ones(2))]
    assert optim.Adam(p).hyper == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}
    assert optim.AdamW(p).hyper == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                    "weight_decay": 1e-2}
    assert optim.RMSProp(p).hyper == {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}
    assert optim.AdaGrad(p).hyper == {"lr": 1e-2, "eps": 1e-10}
    assert optim.Momentum(p, 0.1).momentum == 0.9 and optim.Nesterov(p, 0.1).momentum == 0.9
    with pytest.raises(TypeError):
        optim.SGD(p)  # lr has no default, as in SPEC


# -- state_dict ---------------------------------------------------------------------------------
STATEFUL = ["Momentum", "Nesterov", "Adam", "AdamW", "RMSProp", "AdaGrad",
            "chain(WeightDecay, Momentum)"]


@pytest.mark.parametrize("rule", STATEFUL)
def test_state_dict_round_trip_is_bit_exact(dev, rule):
    make, _ = RULES[rule]
    whole_ps = make_params(initial(), dev)
    whole = run(make(whole_ps), whole_ps, 25)

    first_ps = make_params(initial(), dev)
    first = make(first_ps)
    run(first, first_ps, 10)
    sd = first.state_dict()
    resumed_ps = make_params([to_numpy(p.value) for p in first_ps], dev)
    resumed = make(resumed_ps)
    resumed.load_state_dict(sd)
    got = run(resumed, resumed_ps, 15, start=11)
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_format():
    model = layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0))
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=0.01)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["type"] == "Adam" and sd["hyper"] == {"lr": 0.01, "betas": [0.9, 0.999],
                                                    "eps": 1e-8}
    assert set(sd["state"]) == {"layers.0.weight", "layers.0.bias"}
    entry = sd["state"]["layers.0.weight"]
    assert set(entry) == {"step", "exp_avg", "exp_avg_sq"} and entry["step"] == 1
    assert isinstance(entry["exp_avg"], np.ndarray) and entry["exp_avg"].shape == (4, 3)
    entry["exp_avg"][...] = 99  # a copy: editing it does not touch the optimizer
    assert not np.any(opt.state[ps[0]]["exp_avg"] == 99)
    assert optim.SGD(ps, 0.1).state_dict() == {"type": "SGD", "hyper": {"lr": 0.1}, "state": {}}


def test_state_dict_of_device_params_holds_host_arrays_counted_as_state():
    ps = make_params(initial(), ms.device("sim:1"))
    opt = optim.RMSProp(ps)
    run(opt, ps, 2)
    with ms.track_transfers() as ledger:
        sd = opt.state_dict()
    assert all(isinstance(e["square_avg"], np.ndarray) for e in sd["state"].values())
    assert ledger.count == 2 and {e.what for e in ledger.events} == {"state"}
    assert {e.kind for e in ledger.events} == {"d2h"}


def test_load_state_dict_puts_state_on_each_params_device():
    host_ps = make_params(initial(), ms.device("host"))
    opt = optim.Adam(host_ps)
    run(opt, host_ps, 3)
    sim = ms.device("sim:1")
    sim_ps = make_params(initial(), sim)
    sim_opt = optim.Adam(sim_ps)
    sim_opt.load_state_dict(opt.state_dict())
    for p in sim_ps:
        assert device_of(sim_opt.state[p]["exp_avg"]) == sim
        assert sim_opt.state[p]["step"] == 3


def test_load_restores_hyperparameters_like_torch():
    ps = [ms.Param(np.ones(2))]
    saved = optim.Adam(ps, lr=0.05, betas=(0.5, 0.6)).state_dict()
    opt = optim.Adam(ps)
    opt.load_state_dict(saved)
    assert opt.lr == 0.05 and opt.betas == (0.5, 0.6)


def _trained_adam():
    model = layers.Chain(layers.Dense(3, 2, dtype="float64", seed=0))
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=0.01)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    return ps, opt


def _corrupt(sd, how):
    sd = {"type": sd["type"], "hyper": dict(sd["hyper"]),
          "state": {k: dict(v) for k, v in sd["state"].items()}}
    weight = sd["state"]["layers.0.weight"]
    if how == "type":
        sd["type"] = "SGD"
    elif how == "unknown path":
        sd["state"]["layers.7.weight"] = sd["state"]["layers.0.bias"]
    elif how == "shape":
        weight["exp_avg"] = np.zeros((3, 2))
    elif how == "dtype":
        weight["exp_avg_sq"] = weight["exp_avg_sq"].astype(np.float32)
    elif how == "missing array":
        del weight["exp_avg"]
    elif how == "extra key":
        weight["momentum_buffer"] = weight["exp_avg"]
    elif how == "bad step":
        weight["step"] = -1
    elif how == "step not int":
        weight["step"] = 1.5
    elif how == "not an array":
        weight["exp_avg"] = [[0.0] * 3] * 2
    elif how == "bad hyper":
        sd["hyper"]["lr"] = -1.0
    elif how == "missing hyper":
        del sd["hyper"]["eps"]
    elif how == "missing state":
        del sd["state"]
    elif how == "not a dict":
        return [sd]
    return sd


CORRUPTIONS = {
    "type": "'SGD' but this optimizer is Adam", "unknown path": "'layers.7.weight'",
    "shape": "is (3, 2) float64 but the Param is (2, 3) float64",
    "dtype": "is (2, 3) float32 but the Param is (2, 3) float64",
    "missing array": "missing ['exp_avg']", "extra key": "unexpected ['momentum_buffer']",
    "bad step": "'step']=-1", "step not int": "'step']=1.5", "not an array": "is a list",
    "bad hyper": "state_dict['hyper']: lr=-1.0 is outside [0, ∞)",
    "missing hyper": "missing ['eps']", "missing state": "missing ['state']",
    "not a dict": "state_dict is a list",
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_bad_state_dict_changes_nothing(how):
    ps, opt = _trained_adam()
    ps_b, other = _trained_adam()
    other.step()  # a newer state, so a partial load would show
    before = opt.state_dict()
    with pytest.raises(ArgumentError, match=re.escape(CORRUPTIONS[how])):
        opt.load_state_dict(_corrupt(other.state_dict(), how))
    after = opt.state_dict()
    assert after["hyper"] == before["hyper"]
    for path, entry in before["state"].items():
        assert after["state"][path]["step"] == entry["step"]
        np.testing.assert_array_equal(after["state"][path]["exp_avg"], entry["exp_avg"])


def test_state_dict_from_plain_list_keys_by_index():
    ps = make_params(initial(), ms.device("host"))
    opt = optim.AdaGrad(ps)
    run(opt, ps, 1)
    assert set(opt.state_dict()["state"]) == {"0", "1"}
    model_opt = optim.AdaGrad(ms.params(layers.Dense(4, 3, dtype="float64", seed=0)))
    with pytest.raises(ArgumentError, match="not a Param bound to this AdaGrad"):
        model_opt.load_state_dict(opt.state_dict())


def test_stateless_rules_refuse_state_entries():
    p = ms.Param(np.ones(2))
    sd = {"type": "SGD", "hyper": {"lr": 0.1}, "state": {"0": {"step": 1}}}
    with pytest.raises(ArgumentError, match="keeps no per-Param state"):
        optim.SGD([p], 0.1).load_state_dict(sd)


def test_chain_state_dict_and_bad_part_changes_nothing():
    ps, _ = _trained_adam()
    opt = optim.chain(optim.Momentum(ps, 0.1), optim.Adam(ps))
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["type"] == "Chain" and [part["type"] for part in sd["parts"]] == ["Momentum",
                                                                                "Adam"]
    bad = {**sd, "parts": [sd["parts"][0], {**sd["parts"][1], "hyper": {
        **sd["parts"][1]["hyper"], "eps": 0.0}}]}
    fresh = optim.chain(optim.Momentum(ps, 0.1), optim.Adam(ps))
    with pytest.raises(ArgumentError, match=re.escape("['parts'][1]['hyper']: eps=0.0")):
        fresh.load_state_dict(bad)
    assert fresh.state == {}  # the valid first part was not loaded either
    fresh.load_state_dict(sd)
    assert fresh.parts[0].state[ps[0]]["step"] == 1
    with pytest.raises(ArgumentError, match="has 1 part"):
        fresh.load_state_dict({**sd, "parts": sd["parts"][:1]})


# -- chain --------------------------------------------------------------------------------------
@pytest.mark.parametrize("part,message", [
    (optim.Adam, "is the class Adam"), ([], "separate arguments"), (0.1, "is a float")])
def test_chain_rejects_non_optimizers(part, message):
    with pytest.raises(TypeError, match=message):
        optim.chain(optim.SGD([ms.Param(np.ones(2))], 0.1), part)


def test_chain_needs_a_part():
    with pytest.raises(ValueError, match="at least one"):
        optim.chain()


def test_chain_runs_parts_in_order():
    p = ms.Param(np.array([1.0]))
    # clip first, then SGD: the step uses the clipped gradient; the reverse order would not
    opt = optim.chain(optim.ClipValue([p], 0.1), optim.SGD([p], 1.0))
    p.grad = np.array([5.0])
    opt.step()
    np.testing.assert_array_equal(p.value, [0.9])
    assert opt.params == (p,)


# -- state follows its Param --------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["Adam", "Momentum", "RMSProp", "AdaGrad", "AdamW"])
def test_state_follows_a_moved_param(rule):
    make, _ = RULES[rule]
    whole_ps = make_params(initial(), ms.device("host"))
    whole = run(make(whole_ps), whole_ps, 6)

    sim = ms.device("sim:1")
    ps = make_params(initial(), ms.device("host"))
    opt = make(ps)
    run(opt, ps, 2)
    for p in ps:  # what to_device(mode="move") does
        p._rehome(copy_to(p.value, sim, reason="test"))
    with ms.track_transfers() as ledger:
        run(opt, ps, 1, start=3)
    moved = [e for e in ledger.events if e.what == "state"]
    assert len(moved) == len(ps) * len(opt.state_names)
    assert {e.kind for e in moved} == {"h2d"}
    assert {e.reason for e in moved} == {"optimizer state follows its Param"}
    assert all(device_of(a) == sim for entry in opt.state.values()
               for k, a in entry.items() if k != "step")
    with ms.track_transfers() as later:
        got = run(opt, ps, 3, start=4)
    assert later.bytes_of("state") == 0
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_follows_between_devices_and_back():
    ps = make_params(initial(), ms.device("sim:1"))
    opt = optim.Momentum(ps, 0.02, 0.9)
    run(opt, ps, 3)
    for p in ps:
        p._rehome(copy_to(p.value, ms.device("sim:2"), reason="test"))
    run(opt, ps, 2, start=4)
    for p in ps:
        p._rehome(copy_to(p.value, ms.device("host"), reason="test"))
    got = run(opt, ps, 5, start=6)
    want = reference(ref_sgd(0.02, 0.9), initial(), 10)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL)


def test_training_step_moves_no_bytes_after_setup():
    sim = ms.device("sim:1")
    ps = make_params(initial(), sim)
    grads = [copy_to(gradient(1, i, x), sim, reason="test") for i, x in enumerate(initial())]
    opt = optim.chain(optim.ClipNorm(ps, 1.0), optim.WeightDecay(ps, 1e-3), optim.AdamW(ps))
    with ms.track_transfers() as ledger, ms.transfer_guard("disallow"):
        for _ in range(3):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            opt.step()
            opt.zero_grad()
    assert ledger.count == 0


# -- CuPy kernels -------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(GPU_COUNT == 0, reason=f"no GPU: {GPU_WHY}")
@pytest.mark.parametrize("rule", sorted(RULES) + ["ClipNorm", "ClipValue"])
def test_cuda_kernels_follow_the_host_arithmetic(rule):
    def make(ps):
        if rule == "ClipNorm":
            return optim.chain(optim.ClipNorm(ps, 0.5), optim.SGD(ps, 0.1))
        if rule == "ClipValue":
            return optim.chain(optim.ClipValue(ps, 0.2), optim.SGD(ps, 0.1))
        return RULES[rule][0](ps)

    host_ps = make_params(initial(), ms.device("host"))
    cuda_ps = make_params(initial(), ms.device("cuda:0"))
    host = run(make(host_ps), host_ps, 50)
    cuda = run(make(cuda_ps), cuda_ps, 50)
    for h, c in zip(host, cuda, strict=True):
        np.testing.assert_allclose(c, h, rtol=1e-13)


# -- regressions found in review ----------------------------------------------------------------
def _two_layers():
    return layers.Chain(layers.Dense(4, 4, seed=0), layers.Dense(4, 4, seed=1))


def test_state_keys_follow_the_param_not_its_position_in_a_reordered_list():
    model = _two_layers()
    ps = ms.params(model)
    ps.reverse()
    opt = optim.Momentum(ps, lr=0.1)
    first = model.layers[0].weight
    for p in ps:
        p.grad = np.full(p.shape, 1.0 if p is first else 0.0, np.float32)
    opt.step()
    state = opt.state_dict()["state"]
    assert state["layers.0.weight"]["momentum_buffer"][0, 0] == 1.0
    assert state["layers.1.weight"]["momentum_buffer"][0, 0] == 0.0


def test_a_step_whose_state_cannot_follow_its_param_updates_nothing():
    a, b = layers.Dense(2, 2, seed=0), layers.Dense(2, 2, seed=1)
    opt = optim.Momentum(ms.params(a) + ms.params(b), lr=0.1)
    for p in opt.params:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    b = ms.to_device(b, "sim:1", mode="move")
    for p in opt.params:
        p.grad = ms.to_device(np.ones(p.shape, np.float32), p.device)
    before = to_numpy(a.weight.value)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        opt.step()
    np.testing.assert_array_equal(to_numpy(a.weight.value), before)
    opt.step()  # outside the guard the state follows and the step goes through
    assert not np.array_equal(to_numpy(a.weight.value), before)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=10**400),
                                  lambda ps: optim.Adam(ps, betas=(0.9, 10**400))])
def test_a_hyperparameter_past_float_range_is_outside_its_interval(make):
    with pytest.raises(ArgumentError, match="is outside"):
        make(ms.params(_two_layers()))


def test_clip_norm_spreads_a_nan_gradient_on_the_host_like_torch():
    p = ms.Param(np.ones(3, np.float32))
    q = ms.Param(np.ones(3, np.float32))
    p.grad = np.array([np.nan, 1.0, 1.0], np.float32)
    q.grad = np.ones(3, np.float32)
    optim.ClipNorm([p, q], max_norm=0.5).step()
    assert np.isnan(q.grad).all()


# -- a refused step changes nothing (issue 12) --------------------------------------------------
def _stale_original(flat: bool):
    """A host original wrapped on sim:1 whose wrapper trained its last layer only: the
    original is stale for layers.1.* and current for layers.0.*."""
    original = layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0),
                            layers.Dense(4, 2, dtype="float64", seed=1))
    if flat:
        original = ms.to_device(original, "host")
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    last = [p for path, p in ms.named_params(wrapper).items() if path.startswith("layers.1")]
    for p in last:
        p.grad = ms.to_device(np.full(p.shape, 0.5), "sim:1")
    optim.SGD(last, lr=0.1).step()
    return original, wrapper


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("rule", ["Adam", "Momentum", "chain(WeightDecay, Momentum)"])
def test_a_step_refused_by_the_guard_changes_nothing(flat, rule):
    make, update = RULES[rule]
    original, wrapper = _stale_original(flat)
    ps = ms.params(original)
    opt = make(ps)
    grads = [np.linspace(-1.0, 1.0, p.size).reshape(p.shape) for p in ps]
    for p, g in zip(ps, grads, strict=True):
        p.grad = g.copy()
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        opt.step()
    assert opt.state == {} and opt.state_dict() == make(ps).state_dict()
    for p, g in zip(ps, grads, strict=True):
        np.testing.assert_array_equal(p.grad, g)  # a transform did not run either
    # what the original should hold now: the wrapper's values (the pull it still owes)
    current = [to_numpy(p.value) for p in ms.params(wrapper)]
    for p, want in zip(ps, current, strict=True):
        np.testing.assert_array_equal(to_numpy(p.value), want)
    opt.step()  # allowed: the first step of the trajectory, with the first bias correction
    for p, x, g in zip(ps, current, grads, strict=True):
        np.testing.assert_allclose(p.value, update(x, g, {}, 1), rtol=RTOL, atol=0)


# -- names --------------------------------------------------------------------------------------
def test_the_old_chain_name_warns_and_gives_the_new_class():
    with pytest.warns(DeprecationWarning, match="use optim.OptimizerChain"):
        old = optim.Chain
    assert old is optim.OptimizerChain
    p = ms.Param(np.ones(2))
    made = optim.chain(optim.ClipValue([p], 1.0), optim.SGD([p], 0.1))
    assert isinstance(made, optim.OptimizerChain) and made.state_dict()["type"] == "Chain"
    with pytest.raises(AttributeError, match="no attribute 'Chian'"):
        optim.Chian  # noqa: B018 - a typo is still an AttributeError


def test_transforms_are_gradient_transforms_not_optimizers():
    ps = [ms.Param(np.ones(2))]
    for transform in (optim.WeightDecay(ps, 0.1), optim.ClipNorm(ps, 1.0),
                      optim.ClipValue(ps, 1.0)):
        assert isinstance(transform, optim.GradientTransform)
        assert not isinstance(transform, optim.Optimizer)
    assert isinstance(optim.Adam(ps), optim.Optimizer)


# -- a new rule is one class: the engine knows no rule by name -----------------------------------
class SignMomentum(optim.Optimizer):
    """A rule written only as its maths (array API and a numba loop): ``b = mu b + g``,
    ``p -= lr * sign(b)``."""

    lr = optim.restrict_range("[0, ∞)")
    mu = optim.restrict_range("[0, 1)")
    state_names = ("buffer",)

    def __init__(self, params, lr: float = 0.01, mu: float = 0.5) -> None:
        super().__init__(params, lr=lr, mu=mu)

    def scalars(self, step):
        return (self.lr, self.mu)

    def update_xp(self, data, grad, state, s, xp):
        lr, mu = s
        state[0] = mu * state[0] + grad
        data -= lr * xp.sign(state[0])

    @staticmethod
    def loop(p, g, b, lr, mu):
        for i in prange(p.shape[0]):
            b[i] = mu * b[i] + g[i]
            p[i] = p[i] - lr * np.sign(b[i])


def ref_sign_momentum(theta, g, state, t):
    state["b"] = 0.5 * state.get("b", np.zeros_like(theta)) + g
    return theta - 0.01 * np.sign(state["b"])


@pytest.mark.parametrize("kernels_env", ["auto", "numpy"])
def test_a_rule_written_as_maths_only_gets_the_whole_engine(dev, kernels_env, monkeypatch):
    monkeypatch.setenv("MODELSYNC_KERNELS", kernels_env)
    ps = make_params(initial(), dev)
    opt = SignMomentum(ps)
    got = run(opt, ps, 20)
    for g, w in zip(got, reference(ref_sign_momentum, initial(), 20), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-15)
    assert opt.hyper == {"lr": 0.01, "mu": 0.5} and opt.state[ps[0]]["step"] == 20
    compiled = dev.kind == "host" and kernels_env == "auto" and kernels.backend() == "numba"
    assert compiled == any(isinstance(k, optim_kernel.CompiledKernel)
                           for _, k in opt._kernels.values())
    flat = ms.params(ms.to_device(layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0)),
                                  dev))
    flat_opt = SignMomentum(flat)
    for p in flat:
        p.grad = copy_to(np.full(p.shape, 0.25), dev, reason="test")
    flat_opt.step()
    assert flat_opt.flat_groups == 1
    again = SignMomentum(flat)
    again.load_state_dict(flat_opt.state_dict())
    assert again.state_dict()["state"]["layers.0.weight"]["step"] == 1


def test_a_rule_passing_other_hyperparameters_than_it_declares_is_told_which():
    class Typo(optim.Optimizer):
        lr = optim.restrict_range("[0, ∞)")

        def __init__(self, params) -> None:
            super().__init__(params, learning_rate=0.1)

    with pytest.raises(ArgumentTypeError, match=r"\['learning_rate'\].*are \['lr'\]"):
        Typo([ms.Param(np.ones(2))])


def test_a_rule_without_an_in_place_host_form_keeps_flat_state_true(monkeypatch):
    monkeypatch.setenv("MODELSYNC_KERNELS", "numpy")  # update_host: the array-API default
    from modelsync.optim import flatgroup

    monkeypatch.setattr(flatgroup, "LARGE", 4)  # several segments over one state buffer
    model = ms.to_device(layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0),
                                      layers.Dense(4, 2, dtype="float64", seed=1)), "host")
    ps = ms.params(model)
    opt = SignMomentum(ps)
    thetas = [to_numpy(p.value) for p in ps]
    got = run(opt, ps, 6)
    assert opt.flat_groups == 1 and len(opt._plan.groups[0].segments) > 1
    for g, w in zip(got, reference(ref_sign_momentum, thetas, 6), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-15)
    for p, state in opt.state.items():  # the state shown is the state the steps used
        i = ps.index(p)
        b = np.zeros_like(thetas[i])
        theta = thetas[i]
        for t in range(1, 7):
            g = gradient(t, i, theta)
            b = 0.5 * b + g
            theta = theta - 0.01 * np.sign(b)
        np.testing.assert_allclose(state["buffer"], b, rtol=RTOL)
