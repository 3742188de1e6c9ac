"""``step(grad_scale=s)``: every gradient the step reads is multiplied by ``s`` in place first,
exactly as ``p.grad *= s`` then ``step()`` would do, bit for bit, for every rule, on the
compiled (fused) host path, the NumPy path and sim:1; DataParallel divides summed gradients
by the ranks this way. Bad values raise before anything changes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from test_optim import RULES
from test_optim_flat import flat_model, host_model, per_param_model, set_grads

import modelsync as ms
from modelsync import kernels, optim
from modelsync.kernels import _numba
from modelsync.transfers import copy_to

HAS_NUMBA = kernels.host_kernels() is not None
SCALE = 1 / 3  # (not a power of two: a scale applied twice, or not at all, shows)
STEPS = 4
BIG = [(300, 250), (7,), (70_001,), (3, 5)]  # parallel, chunk tails, a run of small ones


def accumulate_grads(opt, ps, t):
    """The gradients of step ``t`` as backprop leaves them: accumulated into a flat store's
    gradient buffer (its views are the Params' ``.grad``), which the step reads whole."""
    opt.zero_grad()
    donor = [ms.Param(np.array(to_numpy(p.value))) for p in ps]
    set_grads(donor, t)
    for p, d in zip(ps, donor, strict=True):
        p.accumulate_grad(copy_to(d.grad, p.device, reason="test", what="grad"))


def trajectory(model, build, scaled: bool, steps: int = STEPS, accumulate: bool = False):
    """Params and the gradients the step left, after ``steps`` steps: fused, or scaled by
    hand first."""
    ps = ms.params(model)
    opt = build(ps)
    left = []
    for t in range(1, steps + 1):
        if accumulate:
            accumulate_grads(opt, ps, t)
        else:
            set_grads(ps, t)
        if scaled:
            opt.step(grad_scale=SCALE)
        else:
            for p in ps:
                p.grad *= SCALE
            opt.step()
        left = [to_numpy(p.grad).copy() for p in ps]
    return [to_numpy(p.value) for p in ps], left


def assert_bitwise(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), np.abs(x - y).max()


@pytest.mark.parametrize("kernels_env", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", list(RULES))
def test_a_scaled_step_is_bitwise_a_scale_then_a_step(monkeypatch, rule, dtype, kernels_env):
    if kernels_env == "numba" and not HAS_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setenv(kernels.ENV, kernels_env)
    build = RULES[rule][0]
    for make in (lambda: flat_model("host", dtype), lambda: host_model(dtype),
                 lambda: flat_model("host", dtype, BIG)):
        for accumulate in (False, True):
            fused, fused_grads = trajectory(make(), build, True, accumulate=accumulate)
            plain, plain_grads = trajectory(make(), build, False, accumulate=accumulate)
            assert_bitwise(fused, plain)
            assert_bitwise(fused_grads, plain_grads)  # p.grad holds the scaled gradient


@pytest.mark.parametrize("rule", ["SGD", "Adam", "chain(WeightDecay, Momentum)"])
def test_a_scaled_step_on_the_simulated_device(rule):
    build = RULES[rule][0]
    for make in (lambda: flat_model("sim:1"), lambda: per_param_model(ms.device("sim:1"))):
        for accumulate in (False, True):
            fused, fused_grads = trajectory(make(), build, True, accumulate=accumulate)
            plain, plain_grads = trajectory(make(), build, False, accumulate=accumulate)
            assert_bitwise(fused, plain)
            assert_bitwise(fused_grads, plain_grads)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_the_compiled_flat_path_scales_in_its_own_pass(monkeypatch):
    """On a flat store the compiled kernel runs the scaled driver, not a pass of its own."""
    calls = []
    real = _numba.scaled_loop

    def counted(fn, size, arrays):
        calls.append((fn.__name__, size, arrays))
        return real(fn, size, arrays)

    monkeypatch.setattr(_numba, "scaled_loop", counted)
    model = flat_model("host", "float32", BIG)
    ps = ms.params(model)
    opt = optim.Adam(ps)
    accumulate_grads(opt, ps, 1)
    assert ps[0].flat_store.all_grads_set()  # (the store path: its gradient buffer whole)
    opt.step(grad_scale=0.5)
    assert calls and all(name == "loop" and arrays == 2 for name, _, arrays in calls)
    assert any(size == 70_001 for _, size, _ in calls)


def test_grad_scale_one_is_a_plain_step():
    a, b = flat_model("host"), flat_model("host")
    for model, scale in ((a, 1.0), (b, None)):
        ps = ms.params(model)
        opt = optim.Adam(ps)
        for t in range(1, 3):
            set_grads(ps, t)
            opt.step(grad_scale=scale)
    assert_bitwise([p.value for p in ms.params(a)], [p.value for p in ms.params(b)])


@pytest.mark.parametrize(("value", "error", "words"), [
    (True, ms.ArgumentTypeError, "grad_scale=True is a bool"),
    ("0.5", ms.ArgumentTypeError, "grad_scale='0.5' is a str"),
    (float("nan"), ms.ArgumentError, "grad_scale=nan is not finite"),
    (float("inf"), ms.ArgumentError, "grad_scale=inf is not finite"),
])
def test_a_bad_grad_scale_raises_and_changes_nothing(value, error, words):
    model = flat_model("host")
    ps = ms.params(model)
    opt = optim.Adam(ps)
    set_grads(ps, 1)
    before = [np.array(p.value) for p in ps]
    grads = [np.array(p.grad) for p in ps]
    with pytest.raises(error, match=words):
        opt.step(grad_scale=value)
    assert_bitwise([p.value for p in ps], before)
    assert_bitwise([p.grad for p in ps], grads)
    assert opt.state == {}


@pytest.mark.parametrize("build", [lambda ps: optim.SGD(ps, lr=0.1),
                                   lambda ps: optim.chain(optim.ClipValue(ps, 10.0),
                                                          optim.SGD(ps, lr=0.1))])
def test_a_read_only_gradient_is_refused_before_anything_changes(build):
    model = host_model()
    ps = ms.params(model)
    opt = build(ps)
    set_grads(ps, 1)
    frozen = np.array(ps[2].grad)
    frozen.flags.writeable = False
    ps[2].grad = frozen
    before = [np.array(p.value) for p in ps]
    grads = [np.array(p.grad) for p in ps]
    with pytest.raises(ms.ArgumentError, match=r"2's \.grad is a read-only array"):
        opt.step(grad_scale=0.5)
    assert_bitwise([p.value for p in ps], before)
    assert_bitwise([p.grad for p in ps], grads)
