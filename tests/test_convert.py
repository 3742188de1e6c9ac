"""Conversion semantics (SPEC "Conversion" and "Transfers are accounted"): copy, move, wrap,
detach, to_host and sync, each on host<->sim:1 and sim:1<->sim:2."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from conftest import sgd_step, to_numpy

import modelsync as ms
from modelsync import layers, losses

PAIRS = [("host", "sim:1"), ("sim:1", "sim:2"), ("sim:1", "host")]


def build(seed: int = 0, dtype: str = "float32"):
    return layers.Chain(layers.Dense(4, 6, "tanh", seed=seed, dtype=dtype),
                        layers.Dense(6, 3, seed=seed + 1, dtype=dtype))


def build_tied(seed: int = 0):
    first = layers.Dense(5, 5, "tanh", seed=seed)
    second = layers.Dense(5, 5, seed=seed + 1)
    second.weight = first.weight  # one Param used in two places
    return layers.Chain(first, second)


def on(spec: str, model):
    """``model`` copied to ``spec`` (host models are used as they are)."""
    return model if spec == "host" else ms.to_device(model, spec)


def values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def param_bytes(model) -> int:
    return sum(p.nbytes for p in ms.params(model))


def batch(spec: str, seed: int = 0, width: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, width)).astype("float32")
    y = rng.integers(0, 3, size=8)
    return ms.to_device(x, spec), ms.to_device(y, spec)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_differs(a: dict, b: dict) -> None:
    assert any(not np.array_equal(a[k], b[k]) for k in a)


# -- copy -------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", PAIRS)
def test_copy_is_deep_independent_and_costs_the_parameter_bytes_once(src, dst):
    original = on(src, build_tied())
    before = values(original)
    with ms.track_transfers() as t:
        copy = ms.to_device(original, dst, mode="copy")
    assert t.bytes == param_bytes(original)  # the tied Param counted once
    assert all(p.device == ms.device(dst) for p in ms.params(copy))
    assert set(map(id, ms.params(copy))).isdisjoint(map(id, ms.params(original)))
    assert len(ms.params(copy)) == len(ms.params(original)) == 3
    assert copy.layers[0].weight is copy.layers[1].weight
    assert ms.graph_id(copy) == ms.graph_id(original)
    assert_same(values(copy), before)
    sgd_step(copy, *batch(dst, width=5))
    assert_same(values(original), before)
    assert_differs(values(copy), before)


def test_copy_of_separately_built_model_has_another_graph_id():
    assert ms.graph_id(build(0)) != ms.graph_id(build(0))


# -- move -------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", PAIRS)
def test_move_keeps_param_identity_and_invalidates_the_original(src, dst):
    original = on(src, build_tied())
    kept = ms.params(original)
    gid = ms.graph_id(original)
    expected = values(original)
    with ms.track_transfers() as t:
        moved = ms.to_device(original, dst, mode="move")
    assert t.bytes == param_bytes(moved)
    assert [id(p) for p in ms.params(moved)] == [id(p) for p in kept]
    assert all(p.device == ms.device(dst) for p in kept)
    assert ms.graph_id(moved) == gid
    assert_same(values(moved), expected)
    x, _ = batch(src, width=5)
    for use in (lambda: original(x), lambda: ms.params(original),
                lambda: ms.named_params(original), lambda: ms.to_device(original, dst),
                lambda: ms.sync(original, moved), lambda: ms.sync(moved, original),
                lambda: original.layers[0](x)):
        with pytest.raises(ms.MovedError, match=f"moved to {dst}"):
            use()


def test_move_releases_the_old_storage():
    original = build()
    old = weakref.ref(ms.params(original)[0].storage())
    moved = ms.to_device(original, "sim:1", mode="move")
    gc.collect()
    assert old() is None
    assert ms.params(moved)[0].device == ms.device("sim:1")


def test_move_failing_midway_changes_nothing():
    original = build()
    before = values(original)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.to_device(original, "sim:1", mode="move")
    assert all(p.device == ms.device("host") for p in ms.params(original))
    assert_same(values(original), before)


# -- wrap -------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", PAIRS)
def test_training_a_wrapper_moves_nothing_and_reading_the_original_pulls_once(src, dst):
    original = on(src, build())
    wrapper = ms.to_device(original, dst, mode="wrap")
    x, y = batch(dst)
    with ms.track_transfers() as t:
        for _ in range(3):
            sgd_step(wrapper, x, y)
    assert t.bytes_of("param") == 0
    trained = values(wrapper)
    with ms.track_transfers() as first:
        seen = values(original)
    with ms.track_transfers() as second:
        values(original)
    assert first.bytes == param_bytes(original)
    assert second.bytes == 0
    assert_same(seen, trained)


@pytest.mark.parametrize("src,dst", PAIRS)
def test_wrap_writes_on_both_sides_compose_in_program_order(src, dst):
    original = on(src, build())
    wrapper = ms.to_device(original, dst, mode="wrap")
    ref = values(original)
    x, y = batch(dst)
    sgd_step(wrapper, x, y)  # device side newest
    ref = values(wrapper)
    # An API write on the original first pulls the device update, then writes.
    bias = ms.named_params(original)["layers.1.bias"]
    bias.assign(np.full(3, 0.5, dtype="float32"))
    ref["layers.1.bias"] = np.full(3, 0.5, dtype="float32")
    # The wrapper sees it, then trains on top of it.
    assert_same(values(wrapper), ref)
    sgd_step(wrapper, x, y)
    final = values(wrapper)
    assert not np.array_equal(final["layers.1.bias"], ref["layers.1.bias"])
    assert_same(values(ms.to_host(wrapper)), final)


def test_wrapped_host_original_is_read_only_until_detached():
    original = build()
    held = ms.params(original)[0].value  # a reference taken before wrapping
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    with pytest.raises(ValueError, match="read-only"):
        ms.params(original)[0].value[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        held[0, 0] = 1.0
    ms.detach(wrapper)
    ms.params(original)[0].value[0, 0] = 1.0
    assert held[0, 0] == 1.0


def test_one_wrapper_per_original():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    with pytest.raises(ms.CoherenceError, match="detach"):
        ms.to_device(original, "sim:2", mode="wrap")
    with pytest.raises(ms.CoherenceError, match="detach"):
        ms.to_device(original, "sim:2", mode="move")
    with pytest.raises(ms.CoherenceError):
        ms.to_device(wrapper, "sim:2", mode="wrap")
    with pytest.raises(ms.CoherenceError):
        ms.to_device(wrapper, "sim:2", mode="move")
    ms.detach(wrapper)
    again = ms.to_device(original, "sim:2", mode="wrap")
    assert ms.graph_id(again) == ms.graph_id(original)


@pytest.mark.parametrize("src,dst", PAIRS)
def test_detach_writes_back_then_cuts_the_link(src, dst):
    original = on(src, build())
    wrapper = ms.to_device(original, dst, mode="wrap")
    x, y = batch(dst)
    sgd_step(wrapper, x, y)
    trained = values(wrapper)
    with ms.track_transfers() as t:
        assert ms.detach(wrapper) is wrapper
    assert t.bytes == param_bytes(original)  # the pending update, written back once
    assert t.count == 1  # the twins' flat buffer, in one transfer
    assert_same(values(original), trained)
    sgd_step(wrapper, x, y)  # now an independent copy
    assert_same(values(original), trained)
    with pytest.raises(ValueError, match="not a wrapper"):
        ms.detach(wrapper)


def test_detach_of_a_plain_model_is_a_value_error_and_a_library_error():
    with pytest.raises(ValueError, match="not a wrapper") as info:
        ms.detach(build())
    assert isinstance(info.value, ms.ModelSyncError)


def test_to_host_of_a_wrapper_returns_the_original_up_to_date():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))
    assert ms.to_host(wrapper) is original
    with ms.track_transfers() as t:
        assert_same(values(original), values(wrapper))
    assert t.bytes == 0
    with pytest.raises(ms.CoherenceError):
        ms.to_host(wrapper, mode="move")


def test_an_undetached_wrapper_that_is_collected_hands_back_its_updates():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))
    trained = values(wrapper)
    del wrapper
    gc.collect()
    assert_same(values(original), trained)
    ms.params(original)[0].value[0, 0] = 2.0  # writable again
    ms.to_device(original, "sim:1", mode="wrap")  # and wrappable again


# -- sync -------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", PAIRS)
def test_sync_copies_values_in_place_across_devices(src, dst):
    a = on(src, build())
    b = ms.to_device(a, dst)
    sgd_step(a, *batch(src))
    kept = ms.params(b)
    with ms.track_transfers() as t:
        assert ms.sync(b, a) is b
    assert ms.params(b) == kept and all(p is q for p, q in zip(ms.params(b), kept, strict=True))
    assert t.bytes == (0 if src == dst else param_bytes(a))
    assert_same(values(b), values(a))


@pytest.mark.parametrize("tau", [0.25, 0.5, 0.9])
def test_soft_sync(tau):
    a = build(dtype="float64")
    b = ms.to_device(a, "sim:1")
    sgd_step(a, *batch("host"))
    old, new = values(b), values(a)
    ms.sync(b, a, tau=tau)
    for key, got in values(b).items():
        np.testing.assert_allclose(got, tau * new[key] + (1 - tau) * old[key], rtol=1e-12)


def test_sync_refuses_another_graph_unless_structure_is_asked_for():
    a, b = build(0), ms.to_device(build(1), "sim:1")
    before = values(b)
    with pytest.raises(ms.GraphMismatchError, match="check=\"structure\""):
        ms.sync(b, a)
    assert_same(values(b), before)
    ms.sync(b, a, check="structure")
    assert_same(values(b), values(a))


def test_sync_mismatch_names_the_first_differing_path_and_changes_nothing():
    a = layers.Chain(layers.Dense(4, 6), layers.Dense(6, 3))
    b = layers.Chain(layers.Dense(4, 6), layers.Dense(6, 4))
    before = values(b)
    with pytest.raises(ms.GraphMismatchError,
                       match=r"layers\.1\.weight: dst \(4, 6\) float32 vs src \(3, 6\) float32"):
        ms.sync(b, a, check="structure")
    assert_same(values(b), before)


def test_sync_across_dtypes_is_a_mismatch():
    a, b = build(dtype="float32"), build(dtype="float64")
    with pytest.raises(ms.GraphMismatchError, match="float64 vs src .* float32"):
        ms.sync(b, a, check="structure")


def test_sync_of_extra_params_names_the_path():
    a = layers.Chain(layers.Dense(4, 4), layers.Dense(4, 4))
    b = layers.Chain(layers.Dense(4, 4))
    with pytest.raises(ms.GraphMismatchError, match=r"layers\.1\.weight: only src"):
        ms.sync(b, a, check="structure")


def test_sync_into_tied_dst_from_untied_src_with_different_values_is_a_mismatch():
    dst = build_tied()
    src = layers.Chain(layers.Dense(5, 5, "tanh", seed=3), layers.Dense(5, 5, seed=4))
    before = values(dst)
    with pytest.raises(ms.GraphMismatchError, match=r"layers\.0\.weight and layers\.1\.weight"):
        ms.sync(dst, src, check="structure")
    assert_same(values(dst), before)
    src.layers[1].weight.assign(src.layers[0].weight.value)  # equal values: fine
    ms.sync(dst, src, check="structure")
    src_values = values(src)
    assert_same(values(dst), {k: src_values[k] for k in values(dst)})


def test_sync_with_itself_and_bad_arguments():
    a = build()
    with pytest.raises(ValueError, match="same model"):
        ms.sync(a, a)
    with pytest.raises(ValueError, match="check='shape'"):
        ms.sync(a, build(), check="shape")
    for tau in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            ms.sync(a, build(), tau=tau, check="structure")
    with pytest.raises(TypeError, match="registered with @ms.layer"):
        ms.sync(a, {"weight": 1})


def test_a_guarded_sync_changes_nothing():
    a = build()
    b = ms.to_device(a, "sim:1")
    sgd_step(a, *batch("host"))
    before = values(b)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.sync(b, a)
    assert_same(values(b), before)


def test_sync_into_a_wrapper_and_its_original_compose():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    other = ms.to_device(original, "sim:2")
    sgd_step(other, *batch("sim:2"))
    ms.sync(wrapper, other)  # device side newest
    assert_same(values(original), values(other))


# -- arguments --------------------------------------------------------------------------------
def test_unknown_mode_lists_the_modes():
    with pytest.raises(ValueError, match=r"mode='share'.*\('copy', 'move', 'wrap'\)"):
        ms.to_device(build(), "sim:1", mode="share")


def test_non_models_are_type_errors():
    with pytest.raises(TypeError, match="registered with @ms.layer"):
        ms.to_device({"w": ms.Param(np.zeros(2, dtype="float32"))}, "sim:1")
    with pytest.raises(TypeError):
        ms.to_host(object())


def test_to_device_moves_plain_arrays_as_counted_data():
    x = np.ones((2, 3), dtype="float32")
    with ms.track_transfers() as t:
        y = ms.to_device(x, "sim:1")
    assert t.h2d_bytes == x.nbytes and t.events[0].what == "data"
    np.testing.assert_array_equal(to_numpy(y), x)
    with pytest.raises(ValueError, match="always copied"):
        ms.to_device(x, "sim:1", mode="move")


# -- flat storage -----------------------------------------------------------------------------
def mixed_dtypes():
    return layers.Chain(layers.Dense(4, 6, "tanh", dtype="float64"), layers.Dense(6, 3),
                        layers.Dense(3, 3))


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_a_conversion_lays_params_out_flat_and_moves_one_buffer_per_dtype(mode):
    from modelsync import flat

    model = ms.to_device(mixed_dtypes(), "sim:1")
    with ms.track_transfers() as t:
        converted = ms.to_device(model, "sim:2", mode=mode)
    assert t.count == 2  # float64 and float32
    groups = flat.group_by_dtype(ms.params(converted))
    assert all(flat.intact_store(group) is not None for group in groups.values())
    a = ms.to_device(converted, "host")
    with ms.track_transfers() as t:
        ms.sync(a, converted)
    assert t.count == 2 and t.bytes == param_bytes(a)
    assert_same(values(a), values(converted))


def test_a_moved_param_leaves_its_old_store_and_sync_still_matches():
    from modelsync import flat

    a = ms.to_device(mixed_dtypes(), "sim:1")
    b = ms.to_device(a, "sim:2")
    old_group = flat.group_by_dtype(ms.params(a))["float32"]
    store = flat.intact_store(old_group)
    moved = ms.to_device(a, "host", mode="move")
    assert store.broken and flat.intact_store(old_group) is not store
    sgd_step(moved, *batch("host"))
    ms.sync(b, moved)
    assert_same(values(b), values(moved))


# -- writes that replace everything skip the pull ---------------------------------------------
def test_a_full_overwrite_of_a_stale_side_pulls_nothing():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))  # the original is now stale
    source = ms.to_host(ms.to_device(original, "sim:2"))  # same graph, on the host
    sgd_step(source, *batch("host"))
    with ms.track_transfers() as t:
        ms.sync(original, source)  # host -> host, and no pull of the stale values
    assert t.bytes == 0
    assert_same(values(wrapper), values(source))  # the wrapper now pulls the sync's values
    bias = ms.named_params(wrapper)["layers.1.bias"]
    sgd_step(original, *batch("host"))  # the wrapper is stale again
    with ms.track_transfers() as t:
        bias.assign(np.zeros(3, dtype="float32"))
    assert t.bytes == bias.nbytes  # the new values only, no pull first


# -- an optimizer bound before a move ---------------------------------------------------------
@pytest.mark.parametrize("src,dst", PAIRS)
def test_an_optimizer_bound_before_a_move_follows_its_params(src, dst):
    from modelsync import optim

    def run(model, opt, x, y, steps):
        for _ in range(steps):
            opt.zero_grad()
            ms.backprop(model, losses.cross_entropy, x, y)
            opt.step()

    reference = on(src, build(dtype="float64"))
    moved_model = ms.to_device(reference, src if src != "host" else "host")  # same values
    x, y = batch(src)
    x = ms.to_device(to_numpy(x).astype("float64"), src)
    ref_opt = optim.Adam(ms.params(reference), lr=0.01)
    opt = optim.Adam(ms.params(moved_model), lr=0.01)
    run(reference, ref_opt, x, y, 3)
    run(moved_model, opt, x, y, 3)
    moved = ms.to_device(moved_model, dst, mode="move")
    xd, yd = ms.to_device(to_numpy(x), dst), ms.to_device(to_numpy(batch(src)[1]), dst)
    with ms.track_transfers() as first:
        run(moved, opt, xd, yd, 1)
    with ms.track_transfers() as later:
        run(moved, opt, xd, yd, 2)
    run(reference, ref_opt, x, y, 3)
    assert first.bytes_of("state") > 0 and first.bytes_of("param") == 0
    assert later.bytes == 0
    for key, got in values(moved).items():
        np.testing.assert_allclose(got, values(reference)[key], rtol=1e-12, err_msg=key)


def test_tied_values_are_checked_at_every_sync_not_only_the_first():
    dst = build_tied()
    src = layers.Chain(layers.Dense(5, 5, "tanh", seed=3), layers.Dense(5, 5, seed=4))
    src.layers[1].weight.assign(src.layers[0].weight.value)
    ms.sync(dst, src, check="structure")  # equal values: fine, and the plan is cached
    src.layers[1].weight.assign(np.zeros((5, 5), dtype="float32"))
    before = values(dst)
    with pytest.raises(ms.GraphMismatchError, match=r"layers\.0\.weight and layers\.1\.weight"):
        ms.sync(dst, src, check="structure")
    assert_same(values(dst), before)


# -- regressions found in review ----------------------------------------------------------------
def _trained_wrapper():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1"))  # the twin side is newest
    return original, wrapper


def test_a_detach_that_fails_leaves_a_wrapper_that_can_be_detached_again():
    original, wrapper = _trained_wrapper()
    trained = values(wrapper)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.detach(wrapper)
    ms.detach(wrapper)
    assert_same(values(original), trained)
    ms.to_device(original, "sim:2", mode="move")  # no longer linked


def test_a_wrapper_collected_inside_a_guard_still_hands_back_and_releases():
    original, wrapper = _trained_wrapper()
    trained = values(wrapper)
    with ms.transfer_guard("disallow"):
        del wrapper
        gc.collect()
    assert all(p.link is None for p in ms.params(original))
    assert_same(values(original), trained)


def test_detach_keeps_writes_made_on_the_original_side():
    original = build()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    bias = ms.named_params(original)["layers.1.bias"]
    bias.assign(np.ones(3, dtype="float32"))  # the original side is newest
    ms.detach(wrapper)
    np.testing.assert_array_equal(values(wrapper)["layers.1.bias"], np.ones(3, dtype="float32"))


def test_a_soft_sync_whose_pull_fails_changes_nothing():
    model = layers.Chain(layers.Dense(2, 2, seed=0), layers.Dense(2, 2, dtype="float64", seed=1))
    src = ms.to_host(model)
    for p in ms.params(src):
        p.assign(np.zeros(p.shape, dtype=p.dtype))
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    late = wrapper.layers[1].weight  # only the float64 group goes stale on the host side
    late.writable()[...] = ms.to_device(np.full((2, 2), 7.0), "sim:1")
    expected = values(wrapper)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.sync(model, src, tau=0.5)  # float32 needs no pull; float64 does, and may not
    assert_same(values(model), expected)


def test_a_soft_sync_between_models_sharing_a_param_leaves_it_unchanged():
    shared = layers.Dense(2, 2, seed=0)
    a = layers.Chain(shared, layers.Dense(2, 2, seed=1))
    b = layers.Chain(shared, layers.Dense(2, 2, seed=2))
    kept = to_numpy(shared.weight.value)
    ms.sync(a, b, check="structure", tau=0.5)
    np.testing.assert_array_equal(to_numpy(shared.weight.value), kept)


def test_the_graph_check_also_sees_configuration():
    model = layers.Chain(layers.Dense(2, 2, "relu", seed=0))
    twin = ms.to_host(model)
    twin.layers[0].activation = "tanh"
    assert ms.graph_id(model) != ms.graph_id(twin)
    with pytest.raises(ms.GraphMismatchError, match="one graph"):
        ms.sync(model, twin)
    ms.sync(model, twin, check="structure")


@pytest.mark.parametrize("flat_source", [False, True])
def test_a_same_device_copy_shares_no_memory_with_its_source(flat_source):
    source = ms.to_host(build()) if flat_source else build()
    copy = ms.to_host(source)
    for a, b in zip(ms.params(source), ms.params(copy), strict=True):
        assert not np.shares_memory(a.value, b.value)


def test_a_tau_past_float_range_is_outside_the_interval():
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        ms.sync(build(), build(), check="structure", tau=10**400)


# -- regressions found in the fourth review -----------------------------------------------------
def test_a_deep_copied_converted_model_is_independent_and_syncs():
    import copy

    model = ms.to_host(build())  # flat
    target = copy.deepcopy(model)
    assert all(p.flat_store is None for p in ms.params(target))
    zeros = ms.to_host(model)
    for p in ms.params(zeros):
        p.assign(np.zeros(p.shape, dtype=p.dtype))
    ms.sync(target, zeros)
    assert all(not to_numpy(p.value).any() for p in ms.params(target))
    assert any(to_numpy(p.value).any() for p in ms.params(model))


class _Pair(tuple):
    def __new__(cls, a, b):  # a container that rebuild cannot remake
        return super().__new__(cls, (a, b))


@ms.layer
class ConvertTestPairHolder:
    ps: _Pair

    def forward(self, x, ctx):
        return x, lambda dy: dy


@pytest.mark.parametrize("mode", ["move", "wrap"])
def test_a_conversion_that_fails_to_rebuild_changes_nothing(mode):
    model = ConvertTestPairHolder(_Pair(ms.Param(np.ones(2, "float32")),
                                        ms.Param(np.ones(2, "float32"))))
    with pytest.raises(TypeError):
        ms.to_device(model, "sim:1", mode=mode)
    assert all(p.device == ms.device("host") and p.link is None for p in ms.params(model))


@ms.layer
class ConvertTestTwo:
    a: ms.Param
    b: ms.Param

    def forward(self, x, ctx):
        return x, lambda dy: dy


def test_two_params_over_one_host_array_can_be_wrapped_read_and_detached():
    shared = np.zeros(2, "float32")
    model = ConvertTestTwo(ms.Param(shared), ms.Param(shared))
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    ms.params(wrapper)[1].assign(ms.to_device(np.ones(2, "float32"), "sim:1"))
    np.testing.assert_array_equal(model.b.value, np.ones(2, "float32"))
    ms.detach(wrapper)
    assert shared.flags.writeable
    model.a.assign(np.full(2, 3.0, "float32"))


def test_sync_from_a_model_that_aliases_dst_params_reads_values_before_any_write():
    a, b = layers.Dense(2, 2, bias=False), layers.Dense(2, 2, bias=False)
    a.weight.assign(np.zeros((2, 2), "float32"))
    b.weight.assign(np.ones((2, 2), "float32"))
    ms.sync(layers.Chain(a, b), layers.Chain(b, a), check="structure")  # a swap
    assert a.weight.value[0, 0] == 1.0 and b.weight.value[0, 0] == 0.0


def test_a_model_holding_a_moved_layer_refuses_use():
    d1, d2 = layers.Dense(2, 2), layers.Dense(2, 2)
    model = layers.Chain(d1, d2)
    ms.params(model)  # walked (and cached) before the move
    ms.to_device(d1, "sim:1", mode="move")
    for use in (lambda: ms.params(model), lambda: model(np.ones((1, 2), "float32")),
                lambda: ms.to_device(model, "host")):
        with pytest.raises(ms.MovedError, match=r"layers\.0.*moved to sim:1"):
            use()


def test_to_host_copies_a_plain_array():
    x = ms.to_device(np.arange(3.0), "sim:1")
    with ms.track_transfers() as t:
        back = ms.to_host(x)
    assert isinstance(back, np.ndarray) and t.d2h_bytes == 24 and t.events[0].what == "data"


# -- a moved model cannot be copied into a working one (issue 12) -----------------------------
@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_a_moved_model_cannot_be_copied_or_pickled(how):
    import copy
    import pickle

    original = build()
    inner = original.layers[0]  # (taken before the move: a moved model refuses .layers)
    moved = ms.to_device(original, "sim:1", mode="move")
    holder = layers.Chain(inner)  # a model holding a moved layer
    copier = {"deepcopy": copy.deepcopy, "copy": copy.copy, "pickle": pickle.dumps}[how]
    for model in (original, holder):
        if how == "copy" and model is holder:  # a shallow copy holds the same moved layer
            with pytest.raises(ms.MovedError, match="moved to sim:1"):
                ms.params(copier(model))
            continue
        with pytest.raises(ms.MovedError, match="moved to sim:1"):
            copier(model)
    again = copier(moved)  # the model to_device returned copies as ever
    if how == "pickle":
        again = pickle.loads(again)
    assert_same(values(again), values(moved))
