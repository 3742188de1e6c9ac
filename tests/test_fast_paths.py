"""Sync's and conversion's fast paths (issue 11) give what the slow ones give: a whole-buffer
copy between unlinked flat stores, loose src values concatenated into dst's buffer, the fused
soft update (`modelsync.blend`), which equals ``tau*src + (1-tau)*dst`` bit for bit, and a
conversion's layout cached with the model's walk."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import sgd_step, to_numpy

import modelsync as ms
from modelsync import blend, coherence, flat, kernels, layers
from modelsync.params import Param

TAUS = [0.05, 0.5, 0.9]


def build(seed: int = 0, dtype: str = "float32", width: int = 6):
    return layers.Chain(layers.Dense(4, width, "tanh", seed=seed, dtype=dtype),
                        layers.Dense(width, 3, seed=seed + 1, dtype=dtype))


def values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def reference(dst: dict, src: dict, tau: float) -> dict:
    """The soft update as the formula, on NumPy arrays of the values' dtype."""
    return {key: tau * src[key] + (1.0 - tau) * dst[key] for key in dst}


def assert_bitwise(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].tobytes() == expected[key].tobytes(), key


@pytest.fixture(params=["auto", "numpy"])
def host_kernels(request, monkeypatch):
    """Each host test runs with the numba loop and with NumPy's chunked ufuncs."""
    monkeypatch.setenv(kernels.ENV, request.param)
    return request.param


# -- the fused soft update ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("size", [1, 7, blend.CHUNK + 3, (1 << 16) + 5])
def test_blend_equals_the_formula_bit_for_bit_on_the_host(host_kernels, dtype, size):
    rng = np.random.default_rng(size)
    dst = rng.normal(size=size).astype(dtype)
    src = rng.normal(size=size).astype(dtype)
    for tau in TAUS:
        expected = tau * src + (1.0 - tau) * dst
        blend.blend(dst, src, tau)
        assert dst.tobytes() == expected.tobytes(), tau


def test_blend_of_shaped_strided_and_self_arrays_equals_the_formula(host_kernels):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 30)).astype("float32")
    for dst, src in [(base.copy(), rng.normal(size=(40, 30)).astype("float32")),
                     (base.copy().T, rng.normal(size=(30, 40)).astype("float32")),  # strided
                     (base[::2, ::2].copy(), base[1::2, ::2])]:
        expected = 0.3 * src + (1.0 - 0.3) * dst
        blend.blend(dst, src, 0.3)
        np.testing.assert_array_equal(dst, expected)
    same = base.copy()
    expected = 0.3 * same + (1.0 - 0.3) * same
    blend.blend(same, same, 0.3)  # src is dst: the loop reads each element before writing it
    np.testing.assert_array_equal(same, expected)
    overlap = np.arange(10, dtype="float32")
    expected = 0.5 * overlap[:8] + 0.5 * overlap[2:]
    blend.blend(overlap[2:], overlap[:8], 0.5)  # partly overlapping: the formula's temporaries
    np.testing.assert_array_equal(overlap[2:], expected)


def test_blend_on_a_device_equals_the_formula(dev):
    rng = np.random.default_rng(1)
    d, s = rng.normal(size=1000).astype("float32"), rng.normal(size=1000).astype("float32")
    expected = 0.05 * s + (1.0 - 0.05) * d
    dst, src = ms.to_device(d, dev), ms.to_device(s, dev)
    blend.blend(dst, src, 0.05)
    assert to_numpy(dst).tobytes() == expected.tobytes()


@pytest.mark.parametrize("dst_spec,src_spec", [("host", "host"), ("sim:1", "sim:1"),
                                               ("sim:1", "sim:2"), ("host", "sim:1")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_flat_soft_sync_equals_the_formula_bit_for_bit(host_kernels, dst_spec, src_spec,
                                                          dtype):
    a = ms.to_device(build(0, dtype, width=300), src_spec)  # 1,200+ elements per weight
    b = ms.to_device(a, dst_spec)
    sgd_step(a, *batch(src_spec))
    for tau in TAUS:
        expected = reference(values(b), values(a), tau)
        ms.sync(b, a, tau=tau)
        assert_bitwise(values(b), expected)


@pytest.mark.parametrize("width", [6, 3000])  # loose dst gathered (small), or one by one
@pytest.mark.parametrize("dst_flat,src_flat", [(False, True), (True, False), (False, False)])
def test_a_soft_sync_of_loose_params_equals_the_formula_bit_for_bit(host_kernels, dst_flat,
                                                                     src_flat, width):
    a, b = build(0, width=width), build(0, width=width)
    b = ms.to_host(a) if dst_flat else b
    sgd_step(a, *batch("host"))
    a = ms.to_host(a) if src_flat else a
    expected = reference(values(b), values(a), 0.05)
    ms.sync(b, a, tau=0.05, check="structure")
    assert_bitwise(values(b), expected)


def batch(spec: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 4)).astype("float32")
    return ms.to_device(x, spec), ms.to_device(rng.integers(0, 3, size=8), spec)


# -- whole buffers without per-member hand-over -------------------------------------------------
def refuse_member_access(monkeypatch) -> None:
    """Make every per-member read and hand-over raise: what the fast path must not need."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a per-member read or hand-over on the fast path")

    monkeypatch.setattr(Param, "value", property(refuse))
    monkeypatch.setattr(Param, "writable", refuse)


@pytest.mark.parametrize("tau", [1.0, 0.05])
@pytest.mark.parametrize("dst_spec,src_spec", [("host", "host"), ("sim:2", "sim:1")])
def test_a_sync_of_unlinked_flat_stores_reads_no_member(monkeypatch, tau, dst_spec, src_spec):
    a = ms.to_device(build(0), src_spec)
    b = ms.to_device(a, dst_spec)
    ms.sync(b, a, tau=tau)  # (the plan is made here, and kept)
    sgd_step(a, *batch(src_spec))
    expected = reference(values(b), values(a), tau)
    with monkeypatch.context() as patched:
        refuse_member_access(patched)
        ms.sync(b, a, tau=tau)
    assert_bitwise(values(b), expected)


def test_the_whole_buffer_path_is_taken_only_while_no_member_is_linked():
    model = ms.to_host(build(0))
    store = flat.intact_store(ms.params(model))
    assert not coherence.has_links(store)
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    twin_store = flat.intact_store(ms.params(wrapper))
    assert coherence.has_links(store) and coherence.has_links(twin_store)
    ms.detach(wrapper)
    assert not coherence.has_links(store) and not coherence.has_links(twin_store)
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    del wrapper
    gc.collect()  # a collected wrapper is detached: its links are counted out once
    assert not coherence.has_links(store)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_a_linked_src_store_still_pulls_its_newer_twin(tau):
    original = ms.to_host(build(0))  # flat: its store is what a sync reads whole
    dst = ms.to_host(original)
    ms.sync(dst, original)  # (plan made while nothing is linked)
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))  # the twin is newest; the original's buffer is stale
    expected = reference(values(dst), values(wrapper), tau)
    ms.sync(dst, original, tau=tau)
    assert_bitwise(values(dst), expected)
    ms.detach(wrapper)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_a_linked_dst_store_hands_over_before_the_write(tau):
    original = ms.to_host(build(0))
    src = ms.to_device(ms.to_host(original), "sim:2")
    sgd_step(src, *batch("sim:2"))
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    ms.sync(wrapper, src)  # (plan made, the wrapper's side newest)
    for p in ms.params(original):  # now the original is newest: the wrapper must pull first
        p.assign(np.full(p.shape, 2.0, dtype="float32"))
    expected = reference(values(original), values(src), tau)
    ms.sync(wrapper, src, tau=tau)
    assert_bitwise(values(wrapper), expected)
    assert_bitwise(values(original), expected)  # (read back: the wrapper's side was newest)
    ms.detach(wrapper)


def test_a_soft_sync_into_a_loose_wrapped_original_pulls_its_newer_twin_first():
    original = build(0)  # built on the host: loose Params, updated as one gathered buffer
    src = ms.to_host(original)
    sgd_step(src, *batch("host"))
    ms.sync(original, src, tau=0.5)  # (the plan, made while nothing is linked)
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))  # the twin is newest
    expected = reference(values(wrapper), values(src), 0.5)
    ms.sync(original, src, tau=0.5)
    assert_bitwise(values(original), expected)
    assert_bitwise(values(wrapper), expected)  # (pulled back: the original is newest now)
    ms.detach(wrapper)


# -- loose src into one dst buffer ---------------------------------------------------------------
def test_loose_src_values_are_written_into_dst_buffer_in_place():
    src = build(3)
    dst = ms.to_host(build(0))
    kept = ms.params(dst)
    buffer = flat.intact_store(kept).buffer
    with ms.track_transfers() as t:
        ms.sync(dst, src, check="structure")
    assert t.count == 0
    assert all(p is q for p, q in zip(ms.params(dst), kept, strict=True))
    assert flat.intact_store(ms.params(dst)).buffer is buffer  # the same buffer, written
    assert_bitwise(values(dst), values(src))


def test_a_src_param_moved_after_the_plan_is_copied_from_its_new_device():
    src = build(3)
    dst = ms.to_host(build(0))
    ms.sync(dst, src, check="structure")  # the plan: every src value on the host
    holder = layers.Chain(layers.Dense(4, 6, seed=9))
    holder.layers[0].weight = src.layers[0].weight  # the same Param in another model
    ms.to_device(holder, "sim:1", mode="move")  # src's walk is unchanged, its Param moved
    for i, p in enumerate(ms.params(src)):
        p.assign(np.full(p.shape, float(i), dtype="float32"))
    expected = values(src)
    with ms.track_transfers() as t:
        ms.sync(dst, src, check="structure")
    assert t.d2h_bytes == src.layers[0].weight.nbytes
    assert_bitwise(values(dst), expected)


# -- a conversion's cached layout ----------------------------------------------------------------
def test_a_conversion_after_a_param_moved_copies_it_from_its_new_device():
    model = build(3)
    first = ms.to_host(model)  # the layout is cached: every Param on the host
    holder = layers.Chain(layers.Dense(4, 6, seed=9))
    holder.layers[0].weight = model.layers[0].weight
    ms.to_device(holder, "sim:1", mode="move")  # model's walk is unchanged, its Param moved
    with ms.track_transfers() as t:
        second = ms.to_host(model)
    assert t.d2h_bytes == model.layers[0].weight.nbytes
    assert_bitwise(values(second), values(first))
    assert all(flat.intact_store(group) is not None
               for group in flat.group_by_dtype(ms.params(second)).values())


def test_a_conversion_after_the_tree_changed_sees_the_new_tree():
    model = build(3)
    ms.to_host(model)
    model.layers.append(layers.Dense(3, 2, seed=7, dtype="float64"))
    copy = ms.to_device(model, "sim:1")
    assert list(ms.named_params(copy)) == list(ms.named_params(model))
    assert_bitwise(values(copy), values(model))
    with ms.track_transfers() as t:
        ms.to_host(copy)
    assert t.count == 2  # float32 and float64: one buffer each
