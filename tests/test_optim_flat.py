"""Flat optimizer state (optim/flatgroup.py) and the compiled host kernels (modelsync.kernels):
a model converted by ms.to_device (its Params views of one buffer) is updated by one kernel
per run, and must follow exactly the trajectory of the same model built Param by Param, for
every rule, on host and sim:1; through a move, a state_dict round trip, a missing gradient,
a wrap; the numba loops must equal the NumPy path bit for bit, and load only when used."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import attrs
import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_optim import RULES, gradient, reference

import modelsync as ms
from modelsync import kernels, optim
from modelsync.devices import device_of
from modelsync.optim import flatgroup
from modelsync.optim import kernel as optim_kernel
from modelsync.transfers import copy_to

SHAPES = [(3, 4), (5,), (2, 3, 2), (), (7,), (4, 4)]
STEPS = 12
HAS_NUMBA = kernels.host_kernels() is not None


@ms.layer(name="OptimFlatBag")
@attrs.define(eq=False)
class Bag:
    """A model that is just a list of Params."""

    ps: list


def thetas(dtype="float64", shapes=SHAPES):
    rng = np.random.default_rng(7)
    return [rng.uniform(1.0, 3.0, shape).astype(dtype) for shape in shapes]


def host_model(dtype="float64", shapes=SHAPES):
    """Built Param by Param on the host: not flat."""
    return Bag([ms.Param(x) for x in thetas(dtype, shapes)])


def per_param_model(dev, dtype="float64", shapes=SHAPES):
    """On ``dev`` but not flat: each Param copied on its own."""
    return Bag([ms.Param(copy_to(x, dev, reason="test")) for x in thetas(dtype, shapes)])


def flat_model(dev, dtype="float64", shapes=SHAPES):
    return ms.to_device(host_model(dtype, shapes), dev)


def set_grads(ps, t, skip=()):
    for i, p in enumerate(ps):
        if i in skip:
            p.grad = None
            continue
        theta = to_numpy(p.value)
        g = gradient(t, i, theta.astype(np.float64)).astype(theta.dtype)
        p.grad = copy_to(g, p.device, reason="test", what="grad")


def train(opt, ps, steps, start=1, skip=None):
    for t in range(start, start + steps):
        set_grads(ps, t, skip=(skip or {}).get(t, ()))
        opt.step()
    return [to_numpy(p.value) for p in ps]


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.fixture(params=["default", "small"])
def segments(request, monkeypatch):
    """The default segmenting, and one where most Params are "large" (several segments)."""
    if request.param == "small":
        monkeypatch.setattr(flatgroup, "LARGE", 5)
    return request.param


# -- flat equals per-Param ----------------------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_flat_trajectory_equals_per_param(dev, rule, segments):
    make, update = RULES[rule]
    flat_ps = ms.params(flat_model(dev))
    flat_opt = make(flat_ps)
    flat = train(flat_opt, flat_ps, STEPS)
    single_ps = ms.params(per_param_model(dev))
    single_opt = make(single_ps)
    single = train(single_opt, single_ps, STEPS)
    assert_same(flat, single)
    for got, want in zip(flat, reference(update, thetas(), STEPS), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    parts = flat_opt.parts if isinstance(flat_opt, optim.OptimizerChain) else (flat_opt,)
    assert parts[-1].flat_groups == 1  # the rule (not a transform) went flat
    singles = single_opt.parts if isinstance(single_opt, optim.OptimizerChain) else (single_opt,)
    assert singles[-1].flat_groups == 0


@pytest.mark.parametrize("rule", ["Adam", "AdamW", "Nesterov", "RMSProp"])
def test_flat_float32_equals_per_param(dev, rule):
    make, _ = RULES[rule]
    flat_ps = ms.params(flat_model(dev, "float32"))
    single_ps = ms.params(per_param_model(dev, "float32"))
    assert_same(train(make(flat_ps), flat_ps, STEPS), train(make(single_ps), single_ps, STEPS))


@settings(max_examples=40)
@given(shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5),
                       min_size=2, max_size=6),
       rule=st.sampled_from(sorted(RULES)), large=st.integers(1, 12),
       skips=st.dictionaries(st.integers(1, 6), st.sets(st.integers(0, 5), max_size=2),
                             max_size=2))
def test_any_layout_and_missing_gradients_match_per_param(shapes, rule, large, skips):
    make, _ = RULES[rule]
    old = flatgroup.LARGE
    flatgroup.LARGE = large
    try:
        flat_ps = ms.params(flat_model("host", shapes=shapes))
        got = train(make(flat_ps), flat_ps, 6, skip=skips)
    finally:
        flatgroup.LARGE = old
    single_ps = ms.params(per_param_model("host", shapes=shapes))
    assert_same(got, train(make(single_ps), single_ps, 6, skip=skips))


def test_large_params_take_their_own_gradient_without_a_gather():
    shapes = [(3,), (70, 64), (5,), (6,), (4500,), (2,)]
    ps = ms.params(flat_model("host", "float32", shapes))
    opt = optim.Adam(ps, lr=0.01)
    got = train(opt, ps, 3)
    (group,) = opt._plan.groups
    assert [(s.lo, s.hi) for s in group.segments] == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6)]
    assert [s.grad_buffer is not None for s in group.segments] == [False] * 2 + [True] + \
        [False] * 2
    single_ps = ms.params(per_param_model("host", "float32", shapes))
    assert_same(got, train(optim.Adam(single_ps, lr=0.01), single_ps, 3))


def test_state_is_per_param_views_of_the_flat_state():
    ps = ms.params(flat_model("host"))
    opt = optim.Adam(ps, lr=0.01)
    train(opt, ps, 2)
    (group,) = opt._plan.groups
    whole = group.state()[0]
    for p in ps:
        entry = opt.state[p]
        assert entry["step"] == 2 and entry["exp_avg"].shape == p.shape
        assert np.shares_memory(entry["exp_avg"], whole)


def test_subset_and_reordered_binding_still_goes_flat():
    model = flat_model("host")
    ps = ms.params(model)
    subset = [ps[4], ps[2], ps[3]]  # store positions 2..4, given out of order
    opt = optim.Momentum(subset, lr=0.02, momentum=0.9)
    got = train(opt, subset, 6)
    assert opt.flat_groups == 1 and opt._plan.groups[0].members == [ps[2], ps[3], ps[4]]
    single_ps = ms.params(per_param_model("host"))
    want = train(optim.Momentum([single_ps[4], single_ps[2], single_ps[3]], 0.02, 0.9),
                 [single_ps[4], single_ps[2], single_ps[3]], 6)
    assert_same(got, want)
    untouched = thetas()
    for i in (0, 1, 5):
        np.testing.assert_array_equal(ps[i].value, untouched[i])


# -- compiled kernels -----------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_numba_equals_numpy_bit_for_bit(rule, dtype, monkeypatch):
    make, _ = RULES[rule]
    shapes = SHAPES + [(300, 300)]  # one Param large enough for the parallel loop
    compiled_ps = ms.params(flat_model("host", dtype, shapes))
    compiled_opt = make(compiled_ps)
    compiled = train(compiled_opt, compiled_ps, 6)
    chained = isinstance(compiled_opt, optim.OptimizerChain)
    part = compiled_opt.parts[-1] if chained else compiled_opt
    assert all(isinstance(s.kernel, optim_kernel.CompiledKernel)
               for s in part._plan.groups[0].segments)
    monkeypatch.setenv(kernels.ENV, "numpy")
    numpy_ps = ms.params(flat_model("host", dtype, shapes))
    numpy_opt = make(numpy_ps)
    part = numpy_opt.parts[-1] if isinstance(numpy_opt, optim.OptimizerChain) else numpy_opt
    got = train(numpy_opt, numpy_ps, 6)
    assert not any(isinstance(s.kernel, optim_kernel.CompiledKernel)
                   for s in part._plan.groups[0].segments)
    assert_same(compiled, got)


def test_kernels_env_var_forces_numpy_and_bad_values_warn(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.host_kernels() is None and kernels.backend() == "numpy"
    monkeypatch.setenv(kernels.ENV, "fortran")
    with pytest.warns(RuntimeWarning, match="MODELSYNC_KERNELS='fortran'"):
        assert kernels.choice() == "auto"


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_a_kernel_that_fails_to_compile_falls_back_to_numpy(monkeypatch):
    module = kernels.host_kernels()
    monkeypatch.setattr(kernels, "_loaded", dict(kernels._loaded))  # disable() edits a copy
    monkeypatch.setattr(optim_kernel, "_READY", set())

    def broken(*args, **kwargs):
        raise RuntimeError("no LLVM today")

    monkeypatch.setattr(module, "compile_for", broken)
    ps = ms.params(flat_model("host"))
    with pytest.warns(RuntimeWarning, match="no LLVM today"):
        got = train(optim.Adam(ps, lr=0.01), ps, 4)
    assert kernels.host_kernels() is None
    single_ps = ms.params(per_param_model("host"))
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert_same(got, train(optim.Adam(single_ps, lr=0.01), single_ps, 4))


def test_import_compiles_nothing_and_loads_no_numba():
    code = ("import sys, modelsync; assert 'numba' not in sys.modules, 'numba imported'; "
            "assert 'modelsync.kernels._numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_flat_step_allocates_nothing():
    ps = ms.params(flat_model("host", "float32", [(64, 32), (32,), (32, 10), (10,)]))
    opt = optim.Adam(ps)
    train(opt, ps, 2)
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000, f"a flat Adam step allocated {peak} bytes"


# -- moves, state_dict, missing gradients, wrap ---------------------------------------------------
@pytest.mark.parametrize("rule", ["Adam", "Momentum", "AdaGrad"])
def test_a_moved_flat_model_keeps_its_trajectory(rule):
    make, _ = RULES[rule]
    single_ps = ms.params(per_param_model("host"))
    want = train(make(single_ps), single_ps, 9)

    model = flat_model("host")
    ps = ms.params(model)
    opt = make(ps)
    train(opt, ps, 3)
    model = ms.to_device(model, "sim:1", mode="move")
    with ms.track_transfers() as ledger:
        train(opt, ps, 1, start=4)
    moved = [e for e in ledger.events if e.what == "state"]
    assert len(moved) == len(opt.state_names)  # one transfer per state buffer, not per Param
    assert {e.kind for e in moved} == {"h2d"}
    assert sum(e.bytes for e in moved) == sum(p.nbytes for p in ps) * len(opt.state_names)
    assert opt.flat_groups == 1
    assert all(device_of(a) == ms.device("sim:1") for entry in opt.state.values()
               for k, a in entry.items() if k != "step")
    train(opt, ps, 2, start=5)
    model = ms.to_device(model, "host", mode="move")
    got = train(opt, ps, 3, start=7)
    assert opt.flat_groups == 1
    assert_same(got, want)


def test_a_host_built_model_goes_flat_after_a_move():
    model = host_model()
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=0.01)
    train(opt, ps, 2)
    assert opt.flat_groups == 0
    ms.to_device(model, "sim:1", mode="move")
    got = train(opt, ps, 3, start=3)
    assert opt.flat_groups == 1
    single_ps = ms.params(per_param_model("host"))
    assert_same(got, train(optim.Adam(single_ps, lr=0.01), single_ps, 5))


@pytest.mark.parametrize("rule", ["Adam", "Nesterov", "RMSProp",
                                  "chain(WeightDecay, Momentum)"])
def test_state_dict_round_trip_from_a_flat_optimizer(dev, rule):
    make, _ = RULES[rule]
    whole_ps = ms.params(flat_model(dev))
    whole = train(make(whole_ps), whole_ps, 10)

    first_ps = ms.params(flat_model(dev))
    first = make(first_ps)
    train(first, first_ps, 4)
    sd = first.state_dict()
    single_ps = ms.params(per_param_model(dev))
    single = make(single_ps)
    train(single, single_ps, 4)
    expected = single.state_dict()
    parts = zip(sd.get("parts", [sd]), expected.get("parts", [expected]), strict=True)
    for got_part, want_part in parts:
        assert got_part["state"].keys() == want_part["state"].keys()
        for path, entry in got_part["state"].items():
            assert entry.keys() == want_part["state"][path].keys()
            for key, value in entry.items():
                assert isinstance(value, (int, np.ndarray))
                np.testing.assert_array_equal(value, want_part["state"][path][key])

    resumed_model = ms.to_device(Bag([ms.Param(to_numpy(p.value)) for p in first_ps]), dev)
    resumed_ps = ms.params(resumed_model)
    resumed = make(resumed_ps)
    resumed.load_state_dict(sd)
    assert_same(train(resumed, resumed_ps, 6, start=5), whole)


def test_state_dict_of_a_flat_device_optimizer_is_one_transfer_per_state():
    ps = ms.params(flat_model("sim:1"))
    opt = optim.Adam(ps)
    train(opt, ps, 2)
    with ms.track_transfers() as ledger:
        sd = opt.state_dict()
    assert ledger.count == 2 and {e.what for e in ledger.events} == {"state"}
    assert all(isinstance(e["exp_avg"], np.ndarray) for e in sd["state"].values())
    entry = sd["state"][next(iter(sd["state"]))]
    entry["exp_avg"][...] = 99  # a copy: editing it does not touch the optimizer
    assert not any(np.any(to_numpy(s["exp_avg"]) == 99) for s in opt.state.values())


@pytest.mark.parametrize("rule", ["Adam", "Momentum", "SGD"])
def test_missing_gradient_falls_back_to_per_param(dev, rule):
    make, _ = RULES[rule]
    skip = {3: (1,), 5: (0, 4)}  # step -> Params without a gradient
    flat_ps = ms.params(flat_model(dev))
    flat_opt = make(flat_ps)
    got = train(flat_opt, flat_ps, 8, skip=skip)
    single_ps = ms.params(per_param_model(dev))
    single_opt = make(single_ps)
    assert_same(got, train(single_opt, single_ps, 8, skip=skip))
    steps = [flat_opt._step_of(p) for p in flat_ps]
    assert steps == [single_opt._step_of(p) for p in single_ps] == [7, 7, 8, 8, 7, 8]
    assert flat_opt.flat_groups == 0  # step counts differ now: Param by Param from here on


def test_missing_gradient_on_the_first_step_then_flat(dev):
    ps = ms.params(flat_model(dev))
    opt = optim.Adam(ps, lr=0.01)
    train(opt, ps, 1, skip={1: (2,)})
    assert ps[2] not in opt.state and opt.flat_groups == 0
    single_ps = ms.params(per_param_model(dev))
    single = optim.Adam(single_ps, lr=0.01)
    train(single, single_ps, 1, skip={1: (2,)})
    assert_same(train(opt, ps, 3, start=2), train(single, single_ps, 3, start=2))


def test_load_state_dict_then_flat_again():
    ps = ms.params(flat_model("host"))
    opt = optim.Adam(ps, lr=0.01)
    train(opt, ps, 3)
    opt.load_state_dict(opt.state_dict())
    train(opt, ps, 1, start=4)
    assert opt.flat_groups == 1 and opt.state[ps[0]]["step"] == 4


def test_wrap_mode_training_is_coherent_and_moves_nothing():
    original = host_model("float32")
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    ps = ms.params(wrapper)
    opt = optim.Adam(ps, lr=0.01)
    grads = [copy_to(np.full(p.shape, 0.5, dtype=np.float32), p.device, reason="test",
                     what="grad") for p in ps]
    with ms.track_transfers() as ledger, ms.transfer_guard("disallow"):
        for _ in range(3):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            opt.step()
            opt.zero_grad()
    assert ledger.count == 0 and opt.flat_groups == 1
    pulled = [to_numpy(p.value) for p in ms.params(original)]  # the original pulls once
    assert_same(pulled, [to_numpy(p.value) for p in ps])
    assert not np.array_equal(pulled[0], thetas("float32")[0])


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_a_flat_training_step_moves_no_bytes(mode):
    model = ms.to_device(host_model("float32"), "sim:1", mode=mode)
    ps = ms.params(model)
    opt = optim.chain(optim.ClipNorm(ps, 1.0), optim.AdamW(ps))
    grads = [copy_to(np.ones(p.shape, dtype=np.float32), p.device, reason="test",
                     what="grad") for p in ps]
    with ms.track_transfers() as ledger, ms.transfer_guard("disallow"):
        for _ in range(3):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            opt.step()
    assert ledger.count == 0 and opt.parts[-1].flat_groups == 1


FORK_AFTER_PARALLEL_STEP = """
import os, numpy as np
import modelsync as ms
from modelsync import optim
p = ms.Param(np.ones(300_000, dtype=np.float32))
p.grad = np.ones(300_000, dtype=np.float32)
opt = optim.Adam([p])
opt.step()  # large enough for the parallel loop
pid = os.fork()
if pid == 0:
    opt.step()
    os._exit(0 if abs(float(p.value[0]) - 0.998) < 1e-6 else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not HAS_NUMBA or not hasattr(__import__("os"), "fork"),
                    reason="needs numba and os.fork")
def test_a_child_forked_after_a_parallel_step_can_step():
    # GNU OpenMP aborts a forked child that enters a parallel region; the child must fall
    # back to the serial loop instead of dying
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_PARALLEL_STEP], timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_empty_and_float16_params_in_a_flat_run(dtype):
    shapes = [(0,), (3, 2), (2, 0), (), (4,)]
    ps = ms.params(flat_model("host", dtype, shapes))
    opt = optim.Adam(ps, lr=0.01)
    got = train(opt, ps, 4)
    assert opt.flat_groups == 1
    single_ps = ms.params(per_param_model("host", dtype, shapes))
    assert_same(got, train(optim.Adam(single_ps, lr=0.01), single_ps, 4))


def test_asking_for_numba_without_it_warns_and_uses_numpy(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {"numba": None})
    monkeypatch.setattr(kernels, "_why", {"numba": "ModuleNotFoundError: no numba"})
    monkeypatch.setenv(kernels.ENV, "numba")
    with pytest.warns(RuntimeWarning, match="no numba"):
        assert kernels.host_kernels() is None
    ps = ms.params(flat_model("host"))
    with pytest.warns(RuntimeWarning):
        train(optim.SGD(ps, lr=0.1), ps, 2)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rules_loop_is_its_numpy_form_even_uncompiled(rule):
    """The loop a rule writes for numba is plain Python too (`prange` is ``range`` until
    compiled): run as Python on float64 it equals the NumPy form bit for bit, with or
    without numba installed."""
    make, _ = RULES[rule]
    opt = make([ms.Param(np.ones(7))])
    part = opt.parts[-1] if isinstance(opt, optim.OptimizerChain) else opt
    rng = np.random.default_rng(3)
    data, grad = rng.uniform(-1, 1, 7), rng.uniform(-1, 1, 7)
    state = [rng.uniform(0.1, 1, 7) for _ in part.state_names]
    for step in (1, 2, 5):
        s = part.scalars(step)
        want_data, want_state = data.copy(), [a.copy() for a in state]
        part.update_host(want_data, grad, want_state, s, (np.empty(7),))
        got_data, got_state = data.copy(), [a.copy() for a in state]
        part.loop(got_data, grad, *got_state, *s)
        np.testing.assert_array_equal(got_data, want_data)
        for a, b in zip(got_state, want_state, strict=True):
            np.testing.assert_array_equal(a, b)
