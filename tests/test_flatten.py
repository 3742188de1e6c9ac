"""ms.flatten, optimizers packing a host-built model at construction, and flat gradients
(backprop accumulating into views of one gradient buffer per flat store)."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.transfers import copy_to


def host_model(seed=0, n=4):
    return layers.Chain(*[layers.Dense(3, 3, "tanh", seed=seed + i) for i in range(n)],
                        layers.Dense(3, 2, seed=seed + n))


def batch(dev="host"):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    return ms.to_device(x, dev), ms.to_device(y, dev)


def values(model):
    return [to_numpy(p.value).copy() for p in ms.params(model)]


def user_array_model(seed=0, n=4, dev="host"):
    """The same model, each Param made over an array the test holds (never packed), on
    ``dev`` (each array copied there on its own: not flat)."""
    model = host_model(seed, n)
    for leaf in model.layers:
        for name in ("weight", "bias"):
            array = copy_to(getattr(leaf, name).value.copy(), ms.device(dev), reason="test")
            setattr(leaf, name, ms.Param(array, name=name))
    return model


# -- ms.flatten --------------------------------------------------------------------------------
def test_flatten_keeps_identity_values_grads_and_frees_the_old_arrays(dev):
    model = user_array_model(dev=dev)
    ps = ms.params(model)
    assert all(p.flat_store is None for p in ps)
    x, y = batch(dev)
    ms.backprop(model, losses.mse, x, y)
    before, grads = values(model), [to_numpy(p.grad).copy() for p in ps]
    old = weakref.ref(ps[0].storage()) if dev.kind != "cuda" else None
    assert ms.flatten(model) is model
    assert ms.params(model) == ps and all(a is b for a, b in zip(ms.params(model), ps, strict=True))
    store = ps[0].flat_store
    assert store is not None and all(p.flat_store is store for p in ps)
    for p, v, g in zip(ps, before, grads, strict=True):
        np.testing.assert_array_equal(to_numpy(p.value), v)
        np.testing.assert_array_equal(to_numpy(p.grad), g)
    assert store.all_grads_set()  # the grads were copied into the store's gradient buffer
    if old is not None:
        gc.collect()
        assert old() is None, "flatten kept the old array alive"
    if dev.kind == "host":
        assert np.shares_memory(ps[0].value, store.buffer)
        assert np.shares_memory(ps[0].grad, store.grads)


def test_flatten_keeps_ties_and_stops_aliasing_the_users_array():
    mine = np.ones((3, 3), dtype=np.float32)
    shared = ms.Param(mine)
    model = layers.Chain(layers.Dense(3, 3), layers.Dense(3, 3))
    model.layers[0].weight = shared
    model.layers[1].weight = shared
    ms.flatten(model)
    assert model.layers[0].weight is model.layers[1].weight is shared
    assert len(ms.params(model)) == 3 and shared.flat_store is not None
    mine[...] = 5
    assert shared.value.sum() == 9  # no longer the Param's storage
    shared.assign(np.zeros((3, 3), dtype=np.float32))
    assert mine.sum() == 45


def test_flatten_twice_and_of_a_converted_model_changes_nothing():
    model = ms.to_host(host_model())
    store = ms.params(model)[0].flat_store
    ms.flatten(model)
    ms.flatten(model)
    assert all(p.flat_store is store for p in ms.params(model))


def test_flatten_of_a_moved_model_raises_moved_error():
    model = host_model()
    ms.to_device(model, "sim", mode="move")
    with pytest.raises(ms.MovedError):
        ms.flatten(model)


def test_flatten_of_a_wrapped_original_raises_and_changes_nothing():
    model = user_array_model()
    wrapper = ms.to_device(model, "sim", mode="wrap")
    ps = ms.params(model)
    held = [p.storage() for p in ps]
    with pytest.raises(ms.CoherenceError, match="flatten a wrapped original"):
        ms.flatten(model)
    assert all(p.storage() is h and p.flat_store is None for p, h in zip(ps, held, strict=True))
    assert ms.flatten(wrapper) is wrapper  # made flat by to_device: nothing to do
    ms.detach(wrapper)
    ms.flatten(model)
    assert ps[0].flat_store is not None


def test_flatten_keeps_dtypes_apart():
    model = layers.Chain(layers.Dense(2, 2, dtype="float64"), layers.Dense(2, 2))
    ms.flatten(model)
    stores = {id(p.flat_store) for p in ms.params(model)}
    assert len(stores) == 2


# -- optimizers pack what the library allocated --------------------------------------------------
def test_an_optimizer_over_a_host_built_model_is_flat_from_its_first_step():
    model = host_model()
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=1e-2)
    store = ps[0].flat_store
    assert store is not None and all(p.flat_store is store for p in ps)
    x, y = batch()
    ms.backprop(model, losses.mse, x, y)
    opt.step()
    assert opt.flat_groups == 1
    assert opt._plan.singles == [] and opt._plan.groups[0].members == ps


def test_an_optimizer_leaves_a_param_over_the_users_array_aliasing_it():
    model = user_array_model()
    mine = model.layers[0].weight.value
    ps = ms.params(model)
    opt = optim.SGD(ps, lr=0.1)
    assert all(p.flat_store is None for p in ps)
    x, y = batch()
    ms.backprop(model, losses.mse, x, y)
    opt.step()
    assert opt.flat_groups == 0 and model.layers[0].weight.value is mine


def test_packed_training_follows_the_per_param_trajectory():
    packed, loose = host_model(seed=5), user_array_model(seed=5)
    np.testing.assert_array_equal(values(packed)[0], values(loose)[0])
    x, y = batch()
    runs = []
    for model in (packed, loose):
        opt = optim.Adam(ms.params(model), lr=1e-2)
        for _ in range(5):
            opt.zero_grad()
            ms.backprop(model, losses.mse, x, y)
            opt.step()
        runs.append(values(model))
    assert ms.params(packed)[0].flat_store is not None
    assert ms.params(loose)[0].flat_store is None
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- flat gradients ----------------------------------------------------------------------------
def test_backprop_accumulates_into_views_of_one_gradient_buffer(dev):
    model = ms.to_device(host_model(), dev)
    ps = ms.params(model)
    store = ps[0].flat_store
    x, y = batch(dev)
    ms.backprop(model, losses.mse, x, y)
    first = [to_numpy(p.grad).copy() for p in ps]
    buffer = store.grads
    assert buffer is not None and store.all_grads_set()
    whole = to_numpy(buffer)
    for p, g, at, n in zip(ps, first, store.offsets, store.sizes, strict=True):
        np.testing.assert_array_equal(whole[at:at + n].reshape(p.shape), g)
    ms.backprop(model, losses.mse, x, y)  # no zero_grad: accumulates, in place
    assert store.grads is buffer
    for p, g in zip(ps, first, strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), 2 * g, rtol=1e-6)
    opt = optim.SGD(ps, lr=0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in ps) and not store.all_grads_set()
    ms.backprop(model, losses.mse, x, y)
    assert store.grads is buffer and store.all_grads_set()  # the buffer is kept
    for p, g in zip(ps, first, strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), g, rtol=1e-6)


def test_a_flat_step_reads_the_gradient_buffer_without_gathering(monkeypatch):
    model = host_model()
    ps = ms.params(model)
    opt = optim.Adam(ps, lr=1e-2)
    x, y = batch()
    ms.backprop(model, losses.mse, x, y)
    opt.step()

    def refuse(*args, **kwargs):
        raise AssertionError("a flat step with flat gradients gathered them")

    monkeypatch.setattr(np, "concatenate", refuse)
    opt.zero_grad()
    ms.backprop(model, losses.mse, x, y)
    before = values(model)
    opt.step()
    assert all((a != b).any() for a, b in zip(values(model), before, strict=True))


def test_a_user_set_gradient_still_drives_the_step():
    model = host_model()
    ps = ms.params(model)
    opt = optim.SGD(ps, lr=0.5)
    x, y = batch()
    ms.backprop(model, losses.mse, x, y)
    mine = np.full(ps[0].shape, 2.0, dtype=np.float32)
    ps[0].grad = mine
    assert ps[0].grad is mine and not ps[0].flat_store.all_grads_set()
    others = [p.grad.copy() for p in ps[1:]]
    before = values(model)
    opt.step()
    np.testing.assert_allclose(ps[0].value, before[0] - 1.0, rtol=1e-6)
    for p, b, g in zip(ps[1:], before[1:], others, strict=True):
        np.testing.assert_allclose(p.value, b - 0.5 * g, rtol=1e-6)
    assert ps[0].grad is mine and mine.tolist() == np.full(ps[0].shape, 2.0).tolist()
    ms.backprop(model, losses.mse, x, y)  # the library's sum goes into the buffer again
    assert ps[0].flat_store.all_grads_set() and (mine == 2.0).all()


def test_copy_does_not_copy_gradients_and_move_carries_them():
    model = host_model()
    optim.SGD(ms.params(model), lr=0.1)
    x, y = batch()
    ms.backprop(model, losses.mse, x, y)
    grads = [p.grad.copy() for p in ms.params(model)]
    copied = ms.to_host(model)
    assert all(p.grad is None for p in ms.params(copied))
    deep = copy.deepcopy(model)
    ms.params(deep)[0].grad[...] = 7  # its own gradient, not a view of the model's buffer
    np.testing.assert_array_equal(ms.params(model)[0].grad, grads[0])
    moved = ms.to_device(model, "sim", mode="move")
    for p, g in zip(ms.params(moved), grads, strict=True):
        np.testing.assert_array_equal(to_numpy(p.grad), g)
    xs, ys = batch("sim")
    ms.backprop(moved, losses.mse, xs, ys)  # adds to the carried gradients
    store = ms.params(moved)[0].flat_store
    assert store.all_grads_set()
    for p, g in zip(ms.params(moved), grads, strict=True):
        np.testing.assert_allclose(to_numpy(p.grad), 2 * g, rtol=1e-5)


def test_a_user_set_gradient_on_sim_is_checked_and_used():
    model = ms.to_device(host_model(), "sim")
    ps = ms.params(model)
    opt = optim.SGD(ps, lr=1.0)
    x, y = batch("sim")
    ms.backprop(model, losses.mse, x, y)
    g = copy_to(np.ones(ps[1].shape, dtype=np.float32), ps[1].device, reason="test")
    ps[1].grad = g
    before = to_numpy(ps[1].value).copy()
    opt.step()
    np.testing.assert_allclose(to_numpy(ps[1].value), before - 1.0, rtol=1e-6)
    with pytest.raises(ms.DeviceMismatchError):
        ps[1].grad = np.ones(ps[1].shape, dtype=np.float32)


def test_owns_storage_says_who_allocated_the_array():
    import pickle

    mine = np.zeros(3, dtype=np.float32)
    assert not ms.Param(mine).owns_storage
    assert ms.Param([1.0, 2.0]).owns_storage
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    assert ms.Param(frozen).owns_storage  # copied: the array is not the storage
    assert ms.Param.owning(mine).owns_storage
    assert all(p.owns_storage for p in ms.params(host_model()))
    assert all(p.owns_storage for p in ms.params(ms.to_host(user_array_model())))
    assert pickle.loads(pickle.dumps(ms.Param(mine))).owns_storage


def test_flatten_refuses_what_is_not_a_model_and_takes_one_without_params():
    with pytest.raises(ms.ArgumentTypeError, match="expected a model"):
        ms.flatten([ms.Param([1.0])])
    empty = layers.Chain(layers.Dropout(0.5))
    assert ms.flatten(empty) is empty
