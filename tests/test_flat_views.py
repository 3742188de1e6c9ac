"""The batched creation paths of a conversion: a store's host views made as rows of strided
arrays (`flat.host_views`), its Params made in one loop, member deaths recorded without a
Python callback, and layers copied by generated per-class functions (`rebuild.rebuild`)."""

from __future__ import annotations

import gc
import itertools

import attrs
import numpy as np
import pytest

import modelsync as ms
from modelsync import flat
from modelsync.layers import Chain, Dense

SHAPE_CASES = {
    "periodic (a stack of like layers)": [(4, 3), (4,)] * 6,
    "one shape": [(5,)] * 7,
    "mixed, no period": [(2, 3), (3,), (3, 3), (1,), (2, 3), (4, 1, 2), (3,)],
    "0-d and zero-size members": [(), (2,), (0,), (), (2,), (0, 3), ()],
    "one member": [(3, 2)],
    "period with a repeated shape inside": [(2, 2), (2,), (2, 2), (3,)] * 3,
}


def _naive(buffer, offsets, sizes, shapes):
    return [buffer[o:o + n].reshape(s) for o, n, s in zip(offsets, sizes, shapes, strict=True)]


@pytest.mark.parametrize("case", SHAPE_CASES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_host_views_are_the_slices_of_the_buffer(case, contiguous):
    shapes = SHAPE_CASES[case]
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = list(itertools.accumulate(sizes, initial=0))[:-1]
    whole = np.arange(2 * sum(sizes) + 2, dtype=np.float32)
    buffer = whole[: sum(sizes)] if contiguous else whole[::2][: sum(sizes)]
    views = flat.host_views(buffer, offsets, sizes, shapes)
    expected = _naive(buffer, offsets, sizes, shapes)
    assert len(views) == len(shapes)
    for got, want, shape in zip(views, expected, shapes, strict=True):
        assert isinstance(got, np.ndarray) and got.shape == shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable
        if got.size:
            assert np.shares_memory(got, buffer)
    for i, got in enumerate(views):  # each view writes into its own place of the buffer
        got[...] = -(i + 1)
    for i, want in enumerate(_naive(buffer, offsets, sizes, shapes)):
        assert np.all(want == -(i + 1))


def test_a_converted_chain_views_one_buffer_in_order():
    model = Chain(*[Dense(3, 2, seed=i) for i in range(5)])
    copy = ms.to_host(model)
    ps = ms.params(copy)
    store = flat.intact_store(ps)
    assert store is not None
    for p, q, at, n in zip(ps, ms.params(model), store.offsets, store.sizes, strict=True):
        np.testing.assert_array_equal(p.value, q.value)
        np.testing.assert_array_equal(store.buffer[at:at + n], p.value.ravel())
        assert p.origin == q.origin and p.name == q.name and p.value.flags.c_contiguous
    ps[3].value[...] = 7  # written through the view, into the buffer; the original untouched
    np.testing.assert_array_equal(store.buffer[store.offsets[3]:store.offsets[4]], 7)
    assert not np.any(ms.params(model)[3].value == 7)


def test_a_freed_member_leaves_its_store_not_intact():
    like = ms.params(Chain(Dense(2, 2, seed=0), Dense(2, 2, seed=1)))
    made = flat.params_on(np.zeros(12, np.float32), like)
    store = flat.intact_store(made)
    assert store is not None and store.holds(made)
    survivors = made[:3]
    del made  # (the fourth Param is now held by no one)
    gc.collect()
    assert store.members[3] is None and store.members[0] is survivors[0]
    assert not store.holds(survivors + [ms.Param(np.zeros(2, np.float32))])
    assert flat.intact_store(survivors) is None


@ms.layer
@attrs.define(eq=False, slots=False)
class DictLayer:
    """A layer class without slots: its copy writes fields through object.__setattr__."""

    scale: float
    inner: Dense
    extra: ms.Param


def test_rebuild_copies_a_layer_class_without_slots_and_keeps_ties():
    inner = Dense(2, 2, seed=3)
    model = DictLayer(2.5, inner, inner.weight)  # (extra is tied to inner.weight)
    copy = ms.to_host(model)
    assert type(copy) is DictLayer and copy.scale == 2.5
    assert copy.inner is not inner and copy.extra is copy.inner.weight
    assert copy.extra is not inner.weight
    np.testing.assert_array_equal(copy.extra.value, inner.weight.value)
    assert ms.graph_id(copy) == ms.graph_id(model)
