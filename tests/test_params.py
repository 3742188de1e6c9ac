"""Param: identity semantics, its read-only facts, the checked .grad setter and assign from any
device (counted), on host and sim:1 (and cuda:0 with a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import modelsync as ms
from modelsync import layers
from modelsync.devices import HOST, device_of, dtype_name
from modelsync.transfers import copy_to


def _on(dev: ms.Device, values: np.ndarray):
    return copy_to(values, dev, reason="test setup", what="data")


def _param(dev: ms.Device, shape=(2, 3), dtype="float32", name=None) -> ms.Param:
    values = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return ms.Param(_on(dev, values), name=name)


def _other(dev: ms.Device) -> ms.Device:
    return ms.device("sim:2") if dev.kind == "sim" else ms.device("sim:1")


# -- identity -------------------------------------------------------------------------------
def test_equality_and_hash_are_identity() -> None:
    values = np.ones(3, np.float32)
    a, b = ms.Param(values.copy()), ms.Param(values.copy())
    assert a == a and a != b and not (a == b)
    assert hash(a) == hash(a) and hash(a) != hash(b)
    table = {a: "a", b: "b"}
    assert len(table) == 2 and table[a] == "a" and table[b] == "b"
    assert b not in [a] and a in [a]
    assert len({a, b, a}) == 2


def test_a_param_is_not_an_array() -> None:
    p = ms.Param(np.ones(3, np.float32))
    assert not ms.devices.is_array(p)
    with pytest.raises(TypeError):
        p + 1  # type: ignore[operator]


# -- facts ----------------------------------------------------------------------------------
def test_facts(dev: ms.Device) -> None:
    p = _param(dev, (4, 5), "float32", name="weight")
    assert p.shape == (4, 5) and isinstance(p.shape, tuple)
    assert dtype_name(p.dtype) == "float32"
    assert p.device == dev and device_of(p.value) == dev
    assert p.name == "weight"
    assert p.size == 20 and p.nbytes == 80
    assert p.grad is None
    assert isinstance(p.origin, str) and p.origin != _param(dev).origin
    np.testing.assert_array_equal(to_numpy(p.value), np.arange(20, dtype=np.float32).reshape(4, 5))
    assert "weight" in repr(p) and "(4, 5)" in repr(p) and str(dev) in repr(p)


def test_name_defaults_to_none_and_is_not_in_repr() -> None:
    p = ms.Param(np.zeros(2))
    assert p.name is None and repr(p) == "Param(shape=(2,), dtype=float64, device=host)"


def test_value_from_python_data() -> None:
    assert dtype_name(ms.Param([1.0, 2.0]).dtype) == "float64"
    assert ms.Param(np.float32(2.0)).shape == ()


@given(hnp.arrays(st.sampled_from(["float16", "float32", "float64"]),
                  hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_facts_hold_for_any_shape_and_float_dtype(values: np.ndarray) -> None:
    p = ms.Param(values)
    assert p.shape == values.shape and p.dtype == values.dtype
    assert p.size == values.size and p.nbytes == values.nbytes and p.device == HOST
    if values.dtype != np.float16:  # sim devices have no float16
        q = ms.Param(_on(ms.device("sim:1"), values))
        assert (q.shape, dtype_name(q.dtype), q.size, q.nbytes) == (
            values.shape, dtype_name(values.dtype), values.size, values.nbytes)
        np.testing.assert_array_equal(to_numpy(q.value), values)


@pytest.mark.parametrize("value", [np.arange(3), [1, 2], np.ones(2, bool), None, "x", True,
                                   np.ones(2, np.complex64), np.ones(2, np.int8)])
def test_non_float_values_are_rejected(value: object) -> None:
    with pytest.raises(ms.ArgumentTypeError, match="expected a floating dtype"):
        ms.Param(value)


# -- grad -----------------------------------------------------------------------------------
def test_grad_setter_accepts_matching_array_and_none(dev: ms.Device) -> None:
    p = _param(dev)
    g = _on(dev, np.full((2, 3), 0.5, np.float32))
    p.grad = g
    assert p.grad is g
    p.grad = None
    assert p.grad is None


def test_grad_setter_rejects_wrong_shape_and_dtype(dev: ms.Device) -> None:
    p = _param(dev)
    with pytest.raises(ms.ArgumentError, match=r"shape \(3, 2\).*\(2, 3\)"):
        p.grad = _on(dev, np.zeros((3, 2), np.float32))
    with pytest.raises(ms.ArgumentError, match="dtype float64.*float32"):
        p.grad = _on(dev, np.zeros((2, 3), np.float64))
    assert p.grad is None


def test_grad_setter_rejects_other_device(dev: ms.Device) -> None:
    p = _param(dev)
    other = _other(dev)
    with pytest.raises(ms.DeviceMismatchError) as info:
        p.grad = _on(other, np.zeros((2, 3), np.float32))
    assert str(other) in str(info.value) and str(dev) in str(info.value)
    if dev != HOST:
        with pytest.raises(ms.DeviceMismatchError):
            p.grad = np.zeros((2, 3), np.float32)
    assert p.grad is None


@pytest.mark.parametrize("bad", [[[0.0] * 3] * 2, 0.0, "grad"])
def test_grad_setter_rejects_non_arrays(bad: object) -> None:
    p = _param(HOST)
    with pytest.raises(ms.ArgumentTypeError, match=r"\(2, 3\) float32"):
        p.grad = bad
    assert p.grad is None


def test_accumulate_grad_adds(dev: ms.Device) -> None:
    p = _param(dev, (3,))
    p.accumulate_grad(_on(dev, np.ones(3, np.float32)))
    p.accumulate_grad(_on(dev, np.full(3, 2.0, np.float32)))
    np.testing.assert_array_equal(to_numpy(p.grad), np.full(3, 3.0, np.float32))


# -- assign ---------------------------------------------------------------------------------
def test_assign_same_device_writes_in_place_uncounted(dev: ms.Device) -> None:
    p = _param(dev)
    storage = p.value
    source = _on(dev, np.full((2, 3), 7.0, np.float32))
    with ms.track_transfers() as t:
        p.assign(source)
    assert t.count == 0
    assert p.value is storage  # in place: anyone holding the storage sees the new values
    np.testing.assert_array_equal(to_numpy(p.value), np.full((2, 3), 7.0, np.float32))


def test_assign_from_other_device_is_copied_and_counted(dev: ms.Device) -> None:
    p = _param(dev)
    other = _other(dev)
    source = _on(other, np.full((2, 3), 4.0, np.float32))
    with ms.track_transfers() as t:
        p.assign(source)
    assert t.count == 1 and t.bytes == 24
    event = t.events[0]
    assert (event.reason, event.what, event.src, event.dst) == (
        "Param.assign", "param", str(other), str(dev))
    assert p.device == dev and device_of(p.value) == dev
    np.testing.assert_array_equal(to_numpy(p.value), np.full((2, 3), 4.0, np.float32))
    source[...] = 0.0  # the Param holds a copy, not the source
    np.testing.assert_array_equal(to_numpy(p.value), np.full((2, 3), 4.0, np.float32))


def test_assign_from_python_data(dev: ms.Device) -> None:
    p = _param(dev, (2,))
    p.assign([5.0, 6.0])
    np.testing.assert_array_equal(to_numpy(p.value), np.array([5.0, 6.0], np.float32))


def test_assign_is_guarded() -> None:
    p = _param(ms.device("sim:1"))
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError, match="Param.assign"):
        p.assign(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(to_numpy(p.value), np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("make", [
    lambda d: _on(d, np.zeros((3, 2), np.float32)),
    lambda d: _on(d, np.zeros((2, 3), np.float64)),
    lambda d: _on(d, np.zeros((1, 3), np.float32)),  # broadcastable is still wrong
    lambda d: np.zeros((2, 3, 1), np.float32),
], ids=["shape", "dtype", "broadcastable", "host-shape"])
def test_assign_wrong_shape_or_dtype_rejected_value_unchanged(dev: ms.Device, make) -> None:
    p = _param(dev)
    before = to_numpy(p.value)
    bad = make(dev)
    with ms.track_transfers() as t, pytest.raises(ms.ArgumentError, match="expected the Param's"):
        p.assign(bad)
    np.testing.assert_array_equal(to_numpy(p.value), before)
    assert t.count == 0  # checked before anything moved


@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
       dtype=st.sampled_from(["float32", "float64"]),
       route=st.sampled_from([("host", "sim:1"), ("sim:1", "host"), ("sim:1", "sim:2"),
                              ("host", "host")]))
def test_assign_round_trips_any_shape(shape, dtype, route) -> None:
    home, there = (ms.device(s) for s in route)
    p = ms.Param(_on(home, np.zeros(shape, dtype)))
    values = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    source = _on(there, values)
    with ms.track_transfers() as t:
        p.assign(source)
    np.testing.assert_array_equal(to_numpy(p.value), values)
    assert t.bytes == (0 if home == there else values.nbytes)


def test_writable_is_the_storage() -> None:
    p = _param(HOST)
    p.writable()[0, 0] = 42.0
    assert p.value[0, 0] == 42.0


# -- regressions ------------------------------------------------------------------------------
def test_assign_non_numeric_raises_library_error() -> None:
    p = _param(HOST)
    with pytest.raises(ms.ArgumentTypeError):
        p.assign("abc")


def test_param_from_read_only_array_can_be_assigned() -> None:
    values = np.zeros((2, 3), np.float32)
    values.flags.writeable = False
    p = ms.Param(values)
    p.assign(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(p.value, np.ones((2, 3), np.float32))
    assert not values.any()  # the caller's read-only array is left alone


@pytest.mark.parametrize("bad", [None, "abc", object(), [None, None]])
def test_assign_of_non_numbers_is_refused_and_changes_nothing(bad) -> None:
    p = ms.Param(np.ones(2, np.float32)) if bad == [None, None] else ms.Param(np.float32(1))
    before = p.value.copy()
    with pytest.raises(ms.ArgumentTypeError, match="assign"):
        p.assign(bad)
    np.testing.assert_array_equal(p.value, before)


def test_accumulate_grad_refuses_a_delta_that_would_broadcast() -> None:
    p = ms.Param(np.ones((2, 3), np.float32))
    with pytest.raises(ms.ArgumentError, match=r"accumulate_grad.*shape \(3,\)"):
        p.accumulate_grad(np.ones(3, np.float32))
    with pytest.raises(ms.ArgumentError, match="dtype float64"):
        p.accumulate_grad(np.ones((2, 3)))
    assert p.grad is None
    on_sim = ms.Param(copy_to(np.ones(2, np.float32), ms.device("sim:1"), reason="test"))
    with pytest.raises(ms.DeviceMismatchError):
        on_sim.accumulate_grad(np.ones(2, np.float32))


def test_torch_habits_get_errors_that_point_the_way() -> None:
    p = ms.Param(np.ones(2, np.float32))
    with pytest.raises(ms.ArgumentTypeError, match=r"p\.assign"):
        p.value = np.zeros(2, np.float32)
    with pytest.raises(TypeError, match=r"p\.value"):
        np.asarray(p)


def test_a_pickled_param_keeps_values_and_origin_but_no_link() -> None:
    import pickle

    model = ms.layers.Dense(2, 2, seed=0)
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    again = pickle.loads(pickle.dumps(model))
    assert again.weight.origin == model.weight.origin and again.weight.link is None
    np.testing.assert_array_equal(again.weight.value, model.weight.value)
    again.weight.assign(np.zeros((2, 2), np.float32))  # writable, not read-only
    ms.to_device(again, "sim:2", mode="wrap")  # not stuck as "wrapped"
    ms.detach(wrapper)


# -- the library's door (what coherence, flat storage and io use) ------------------------------
def test_rehome_moves_the_storage_and_breaks_the_old_flat_store() -> None:
    model = ms.to_host(layers.Chain(layers.Dense(2, 3, seed=0), layers.Dense(3, 2, seed=1)))
    first, *rest = ms.params(model)
    old = first.flat_store
    assert old is not None and not old.broken and old.members == [first, *rest]
    moved = ms.to_device(first.value, "sim:1")
    first.rehome(moved)
    assert first.storage() is moved and first.device == ms.device("sim:1")
    assert first.flat_store is None and old.broken and first.grad is None


def test_storage_reads_without_the_wrap_mode_pull() -> None:
    original = layers.Dense(2, 2, seed=0)
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    wrapper.weight.assign(np.full((2, 2), 7.0, dtype="float32"))  # the original is now stale
    p = original.weight
    assert p.link is not None and p.link is wrapper.weight.link
    assert not np.all(p.storage() == 7.0)  # as it is: nothing pulled
    assert np.all(p.value == 7.0)  # .value pulls
    ms.detach(wrapper)
    assert p.link is None and wrapper.weight.link is None
