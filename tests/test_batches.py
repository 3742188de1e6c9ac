"""ms.batches (SPEC "Data"): the same rows of every array, the last partial batch included,
on every device (a simulated device refuses slices past the end and partial indexes, so
these cover what NumPy forgives), shuffled by seed with a new order each pass, moved to
``device`` and counted as data; ms.train on top of it; ms.datasets reachable."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.devices import device_of


def data(rows: int = 1437):
    """Rows numbered in both arrays, so a batch's rows can be read back; x is 3-D (images),
    which a simulated device indexes only with a trailing ellipsis."""
    x = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3)
    y = np.arange(rows, dtype=np.int64)
    return x, y


def rows_of(batch) -> np.ndarray:
    x, y = (to_numpy(a) for a in batch)
    np.testing.assert_array_equal(x[:, 0, 0] / 6, y)  # the same rows of each array
    return y


def test_batches_cover_every_row_in_order_with_the_last_partial_batch(dev):
    x, y = (ms.to_device(a, dev) for a in data())
    found = ms.batches(x, y, batch_size=32)
    assert len(found) == 45
    got = list(found)
    assert len(got) == 45
    assert [int(b[0].shape[0]) for b in got] == [32] * 44 + [29]  # 1408:1437, not 1408:1440
    assert all(device_of(a) == dev for b in got for a in b)
    assert tuple(got[0][0].shape) == (32, 2, 3)
    np.testing.assert_array_equal(np.concatenate([rows_of(b) for b in got]), np.arange(1437))


def test_drop_last_drops_the_partial_batch(dev):
    x, y = (ms.to_device(a, dev) for a in data(10))
    found = ms.batches(x, y, batch_size=4, drop_last=True)
    assert len(found) == 2 and [int(b[1].shape[0]) for b in found] == [4, 4]
    assert len(ms.batches(x, batch_size=5, drop_last=True)) == 2  # exact: nothing dropped
    (only,) = list(ms.batches(y, batch_size=100))  # one array: tuples of one
    assert int(only[0].shape[0]) == 10


def test_shuffle_is_a_permutation_by_seed_new_each_pass_and_the_same_on_every_device(dev):
    x, y = (ms.to_device(a, dev) for a in data(50))
    found = ms.batches(x, y, batch_size=8, shuffle=True, seed=3)
    first = np.concatenate([rows_of(b) for b in found])
    second = np.concatenate([rows_of(b) for b in found])
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert not np.array_equal(first, np.arange(50))
    assert not np.array_equal(first, second)  # a new permutation each pass
    again = ms.batches(x, y, batch_size=8, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([rows_of(b) for b in again]), first)
    hx, hy = data(50)
    on_host = ms.batches(hx, hy, batch_size=8, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([rows_of(b) for b in on_host]), first)


def test_device_moves_each_batch_and_counts_it_as_data(dev):
    x, y = data(100)
    with ms.track_transfers() as t:
        got = list(ms.batches(x, y, batch_size=30, shuffle=True, seed=0, device=dev))
    assert all(device_of(a) == dev for b in got for a in b)
    np.testing.assert_array_equal(np.sort(np.concatenate([rows_of(b) for b in got])),
                                  np.arange(100))
    if dev.kind == "host":
        assert t.count == 0
    else:
        assert t.count == 8 and t.bytes == x.nbytes + y.nbytes
        assert {e.what for e in t.events} == {"data"}


def test_shuffled_batches_of_device_arrays_send_only_the_row_order():
    x, y = (ms.to_device(a, "sim:1") for a in data(100))
    with ms.track_transfers() as t:
        list(ms.batches(x, y, batch_size=30, shuffle=True, seed=0))
    assert t.count == 1 and t.bytes == 100 * 8 and t.events[0].what == "data"


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda x, y: ms.batches(x, y[:-1], batch_size=4), ValueError,
     ["arrays[0] has 10", "arrays[1] has 9", "different lengths"]),
    (lambda x, y: ms.batches(x, y, batch_size=0), ValueError, ["batch_size=0", "[1, ∞)"]),
    (lambda x, y: ms.batches(x, y, batch_size=-3), ValueError, ["batch_size=-3"]),
    (lambda x, y: ms.batches(x, y, batch_size=2.5), TypeError, ["batch_size=2.5", "int"]),
    (lambda x, y: ms.batches(x, y, batch_size=True), TypeError, ["batch_size=True"]),
    (lambda x, y: ms.batches(batch_size=4), ValueError, ["at least one array"]),
    (lambda x, y: ms.batches(x, "abc", batch_size=4), TypeError, ["arrays[1] is a str"]),
    (lambda x, y: ms.batches(x, np.float32(1.0), batch_size=4), TypeError,
     ["arrays[1] is a float32"]),
    (lambda x, y: ms.batches(x, np.zeros(()), batch_size=4), ValueError, ["arrays[1] is 0-d"]),
    (lambda x, y: ms.batches(x, y, batch_size=4, seed=-1), ValueError, ["seed=-1"]),
    (lambda x, y: ms.batches(x, y, batch_size=4, shuffle="yes"), TypeError, ["shuffle='yes'"]),
    (lambda x, y: ms.batches(x, y, batch_size=4, device="gpu7"), ms.DeviceError, ["gpu7"]),
])
def test_bad_arguments_are_one_clear_error(call, error, words):
    x, y = data(10)
    with pytest.raises(error) as info:
        call(x, y)
    assert isinstance(info.value, ms.ModelSyncError)
    for word in words:
        assert word in str(info.value)


def test_python_lists_are_taken_as_host_arrays():
    (got,) = list(ms.batches([[1.0, 2.0], [3.0, 4.0]], batch_size=5))
    np.testing.assert_array_equal(got[0], [[1.0, 2.0], [3.0, 4.0]])


# -- ms.train on top of it -------------------------------------------------------------------
def model_and_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 4)).astype(np.float32)
    y = rng.integers(0, 3, 70)
    model = layers.Chain(layers.Dense(4, 8, "relu", seed=0), layers.Dense(8, 3, seed=1))
    return model, x, y


def test_train_with_batch_size_is_the_loop_over_ms_batches_with_a_new_order_each_epoch(dev):
    model, x, y = model_and_data()
    a = ms.to_device(model, dev)
    b = ms.to_device(model, dev)
    got = ms.train(a, (x, y), losses.cross_entropy, optim.SGD(ms.params(a), lr=0.1), epochs=2,
                   batch_size=16, shuffle=True, seed=0, progress=False)
    opt = optim.SGD(ms.params(b), lr=0.1)
    expected = []
    found = ms.batches(x, y, batch_size=16, shuffle=True, seed=0, device=dev)
    for _ in range(2):  # each pass over `found` is a new permutation
        for xb, yb in found:
            opt.zero_grad()
            expected.append(ms.backprop(b, losses.cross_entropy, xb, yb))
            opt.step()
    assert len(got) == 10
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    c = ms.to_device(model, dev)
    plain = ms.train(c, (x, y), losses.cross_entropy, optim.SGD(ms.params(c), lr=0.1),
                     epochs=2, batch_size=16, progress=False)
    assert not np.allclose(plain, got)  # (shuffling changed the order)


def test_train_explains_an_array_pair_without_batch_size_and_shuffle_without_it():
    model, x, y = model_and_data()
    opt = optim.SGD(ms.params(model), lr=0.1)
    with pytest.raises(ms.ArgumentError, match="batch_size"):
        ms.train(model, (x, y), losses.cross_entropy, opt, progress=False)
    with pytest.raises(ms.ArgumentError, match="shuffle=True.*without batch_size"):
        ms.train(model, [(x, y)], losses.cross_entropy, opt, shuffle=True, progress=False)
    with pytest.raises(ms.ArgumentTypeError, match="data is a list of 3"):
        ms.train(model, [x, y, y], losses.cross_entropy, opt, batch_size=8, progress=False)


def test_datasets_is_reachable_after_import_modelsync():
    code = ("import modelsync as ms; x, y, xt, yt = ms.datasets.load_digits(); "
            "print(x.shape[0], xt.shape[0], 'batches' in ms.__all__, 'datasets' in ms.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["1437", "360", "True", "True"]
