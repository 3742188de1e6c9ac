"""The shipped digits data set: shapes, dtypes, labels, the fixed split and its checksum."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest

import modelsync as ms
from modelsync import datasets


def test_load_digits_shapes_dtypes_and_scale():
    x_train, y_train, x_test, y_test = datasets.load_digits()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    both = np.concatenate([x_train, x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    # pixel counts 0..16 divided by 16: every value is an exact multiple of 1/16
    assert np.array_equal(both * 16, np.round(both * 16))


def test_every_digit_in_both_splits_and_the_split_is_fixed():
    _, y_train, _, y_test = datasets.load_digits()
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # the shuffle is stored in the file, so the split's class counts never change
    assert np.bincount(y_test).tolist() == [39, 43, 41, 37, 40, 26, 41, 32, 37, 24]
    assert np.bincount(y_train).tolist() == [139, 139, 136, 146, 141, 156, 140, 147, 137, 156]


def test_unflattened_images_are_8x8():
    x_train, _, x_test, _ = datasets.load_digits(flatten=False)
    assert x_train.shape == (1437, 8, 8) and x_test.shape == (360, 8, 8)
    flat = datasets.load_digits()[0]
    assert np.array_equal(x_train.reshape(1437, 64), flat)


def test_train_and_test_come_from_disjoint_rows_of_the_original():
    source = resources.files("modelsync") / "data" / "digits.npz"
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as stored:
        order = stored["order"]
    assert sorted(order.tolist()) == list(range(1797))
    assert not set(order[:1437].tolist()) & set(order[1437:].tolist())


def test_checksum_matches_and_each_call_returns_fresh_arrays():
    images, labels = datasets.load_digits_raw()
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == datasets.DIGITS_SHA256
    first = datasets.load_digits()
    first[0][:] = 0
    assert datasets.load_digits()[0].max() == 1.0


def test_a_checksum_mismatch_is_a_load_error(monkeypatch):
    monkeypatch.setattr(datasets, "DIGITS_SHA256", "0" * 64)
    with pytest.raises(ms.LoadError, match="checksum"):
        datasets.load_digits()


def test_licence_and_source_ship_with_the_data():
    folder = resources.files("modelsync") / "data"
    licence = (folder / "LICENSE-digits.txt").read_text(encoding="utf-8")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for text in (licence, readme):
        assert "CC BY 4.0" in text and "Alpaydin" in text and "UCI" in text


def test_batches_cover_the_data_once_in_a_seeded_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    parts = datasets.batches(x, y, 4, seed=3)
    assert [len(b[1]) for b in parts] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in parts])
    assert sorted(seen.tolist()) == list(range(10))
    assert np.array_equal(np.concatenate([b[0][:, 0] for b in parts]), seen)
    assert all(np.array_equal(a[1], b[1])
               for a, b in zip(parts, datasets.batches(x, y, 4, seed=3), strict=True))
    with pytest.raises(ValueError, match="batch_size=0"):
        datasets.batches(x, y, 0)
