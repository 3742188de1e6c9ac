"""The small real data set that ships with modelsync: UCI optical handwritten digits.

1,797 8×8 images (E. Alpaydin and C. Kaynak, 1998; CC BY 4.0; source and licence in
``modelsync/data/``), stored shuffled once with a fixed seed so that the split is fixed:
the first 1,437 samples train, the last 360 test. No scikit-learn needed.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from .errors import ArgumentError, LoadError

#: Samples in the data set, and how many of them (the first ones) form the training set.
DIGITS_SAMPLES = 1797
DIGITS_TRAIN = 1437
#: SHA-256 of the stored images' bytes followed by the labels' bytes: checked on each load.
DIGITS_SHA256 = "0031dbfa9a71a30e709e5934e2962487da0f7c8774a06d652f124804fe58eb95"
DIGITS_CITATION = ("Optical Recognition of Handwritten Digits, UCI Machine Learning "
                   "Repository (E. Alpaydin, C. Kaynak, 1998), CC BY 4.0")


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The stored arrays, checked: images (1797, 8, 8) uint8 in 0..16 and labels (1797,) uint8.

    Raises LoadError if the packaged file is missing or does not match its checksum.
    """
    source = resources.files("modelsync") / "data" / "digits.npz"
    try:
        with source.open("rb") as handle, np.load(handle, allow_pickle=False) as stored:
            images, labels = stored["images"], stored["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise LoadError(f"the packaged digits data set ({source}) cannot be read: {exc}; "
                        "reinstall modelsync") from exc
    digest = hashlib.sha256()
    digest.update(images.tobytes())
    digest.update(labels.tobytes())
    if (digest.hexdigest() != DIGITS_SHA256 or images.shape != (DIGITS_SAMPLES, 8, 8)
            or images.dtype != np.uint8 or labels.dtype != np.uint8):
        raise LoadError(f"the packaged digits data set ({source}) does not match its checksum "
                        f"(sha256 {digest.hexdigest()[:16]}..., expected "
                        f"{DIGITS_SHA256[:16]}...); reinstall modelsync")
    return images, labels


def load_digits(*, flatten: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: 1,437 training and 360 test samples.

    Images are float32 scaled to [0, 1] (pixel / 16), shaped (n, 64) when ``flatten`` (the
    default, ready for a Dense layer) or (n, 8, 8); labels are int64 digits 0..9. Fresh
    host arrays on every call, so callers may modify them.
    """
    images, labels = load_digits_raw()
    x = images.astype(np.float32) / np.float32(16.0)
    if flatten:
        x = x.reshape(DIGITS_SAMPLES, 64)
    y = labels.astype(np.int64)
    n = DIGITS_TRAIN
    return x[:n].copy(), y[:n].copy(), x[n:].copy(), y[n:].copy()


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None = None
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``(x, y)`` into a list of minibatches (shuffled once with ``seed`` when given).

    A list rather than a generator, so ``ms.train`` can iterate it once per epoch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size!r} is outside [1, ∞)")
    order = (np.random.default_rng(seed).permutation(len(x)) if seed is not None
             else np.arange(len(x)))
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]])
            for i in range(0, len(x), batch_size)]
