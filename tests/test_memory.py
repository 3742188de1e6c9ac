"""Nothing the library keeps outlives the user's last reference (docs/concepts.md): with the
cyclic collector off, reference counting alone frees a dropped model, its Params and its
buffers, whatever conversions, wraps, detaches, moves and syncs it went through."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import weakref

import numpy as np
import pytest
from conftest import sgd_step

import modelsync as ms
from modelsync import layers


@contextlib.contextmanager
def no_cyclic_collector():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def build(width: int = 8, seed: int = 0):
    return layers.Chain(layers.Dense(width, width, "tanh", seed=seed),
                        layers.Dense(width, 3, seed=seed + 1))


def batch(spec: str, width: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, width)).astype("float32")
    return ms.to_device(x, spec), ms.to_device(rng.integers(0, 3, size=4), spec)


@pytest.mark.parametrize("target", ["host", "sim:1"])
def test_a_discarded_converted_model_frees_its_buffer_at_once(target):
    model = build()
    with no_cyclic_collector():
        converted = ms.to_device(model, target)
        ms.sync(converted, model)  # (a cached plan on converted's walk)
        ms.graph_id(converted)
        store = ms.params(converted)[0].flat_store
        assert store is not None
        gone = weakref.ref(store), weakref.ref(ms.params(converted)[0])
        del converted, store
        assert all(ref() is None for ref in gone)


def test_a_moved_models_old_storage_and_new_store_go_with_it():
    with no_cyclic_collector():
        moved = ms.to_device(ms.to_device(build(), "sim:1"), "sim:2", mode="move")
        gone = weakref.ref(ms.params(moved)[0].flat_store), weakref.ref(moved)
        del moved
        assert all(ref() is None for ref in gone)


def test_a_detached_wrapper_does_not_keep_its_original_alive():
    with no_cyclic_collector():
        original = build()
        wrapper = ms.to_device(original, "sim:1", mode="wrap")
        sgd_step(wrapper, *batch("sim:1"))
        ms.detach(wrapper)
        gone = weakref.ref(original), weakref.ref(ms.params(original)[0])
        del original
        assert all(ref() is None for ref in gone)
        sgd_step(wrapper, *batch("sim:1"))  # the detached wrapper works on its own


def test_a_dropped_wrapper_writes_back_and_frees_itself():
    with no_cyclic_collector():
        original = build()
        wrapper = ms.to_device(original, "sim:1", mode="wrap")
        sgd_step(wrapper, *batch("sim:1"))
        trained = ms.to_device(ms.params(wrapper)[0].value, "host")
        twin = weakref.ref(ms.params(wrapper)[0])
        del wrapper
        assert twin() is None
        p = ms.params(original)[0]
        assert p.link is None
        np.testing.assert_array_equal(p.value, trained)
        p.writable()[...] = 0  # (writable again: the protection went with the link)


def _round_trip(model) -> None:
    """Convert, sync, wrap, train, detach, move and drop, while ``model`` lives on: every
    kind of entry the library keeps about a model (walk caches, sync plans, graph ids, moved
    marks, wrappings, links, flat stores, protected host arrays)."""
    width = model.layers[0].in_features
    copy = ms.to_device(model, "sim:1")
    ms.sync(copy, model)
    ms.graph_id(copy)
    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    sgd_step(wrapper, *batch("sim:1", width))
    ms.to_host(wrapper)  # (pulls into the original)
    ms.detach(wrapper)
    moved = ms.to_device(copy, "sim:2", mode="move")
    ms.sync(moved, wrapper, check="structure")
    other = ms.to_device(model, "sim:1", mode="wrap")  # dropped undetached
    ms.sync(other, moved, check="structure")
    back = ms.to_host(moved, mode="move")
    ms.sync(model, back)
    twin = ms.to_host(model)
    ms.sync(twin, model)  # (a plan cached on twin's walk, dropped with twin)


def test_the_live_arrays_return_to_the_baseline():
    model = build(256)  # ~0.25 MiB of Params: a leak of one copy is far above the noise
    with no_cyclic_collector():
        _round_trip(model)  # warm up: first-use costs (imports, caches of classes)
        tracemalloc.start()
        try:
            _round_trip(model)
            baseline = tracemalloc.get_traced_memory()[0]
            for _ in range(5):
                _round_trip(model)
            grown = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
    model_bytes = sum(p.nbytes for p in ms.params(model))
    assert grown < model_bytes // 4, f"{grown} bytes still live after 5 round trips"
