"""``ms.batches``: the same rows of several arrays, a batch at a time, on every device.

Written once against the array API, so it slices the way every backend accepts: within
bounds and with a trailing ellipsis (``x[a:b, ...]``; array_api_strict refuses a slice past
the end and a partial index of an array with more axes), and shuffles by taking rows with
an index array on the arrays' device (``xp.take``). NumPy arrays take the direct path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .devices import Device, device, device_of, is_array
from .errors import ArgumentError, ArgumentTypeError
from .transfers import copy_to, to_device_array
from .xp import namespace

SHUFFLE_REASON = "batches(shuffle=True): the row order"


class Batches:
    """What `batches` returns: iterable any number of times (each pass a new permutation
    when shuffling), with ``len()`` the number of batches per pass."""

    def __init__(self, arrays: tuple[Any, ...], batch_size: int, shuffle: bool,
                 seed: int | None, drop_last: bool, target: Device | None) -> None:
        self.arrays = arrays
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = target
        self.rows = int(arrays[0].shape[0])
        self._rng = np.random.default_rng(seed)  # one generator: each pass draws anew

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __repr__(self) -> str:
        return (f"batches({len(self.arrays)} arrays of {self.rows} rows, batch_size="
                f"{self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"device={self.device})")

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        # (a generator: the permutation is drawn when the pass starts, so an iter() that is
        # never consumed, such as train's one-shot check, does not use one up)
        order = self._rng.permutation(self.rows) if self.shuffle else None
        on_device: dict[Device, Any] = {}  # the row order on each array's device, sent once
        if order is not None:
            for a in self.arrays:
                dev = device_of(a)
                if dev not in on_device:
                    on_device[dev] = order if dev.kind == "host" else copy_to(
                        order, dev, reason=SHUFFLE_REASON, what="data")
        size, rows = self.batch_size, self.rows
        for start in range(0, len(self) * size, size):
            stop = min(start + size, rows)
            out = []
            for a in self.arrays:
                if order is None:
                    part = a[start:stop, ...]
                else:
                    index = on_device[device_of(a)][start:stop]
                    part = a[index] if type(a) is np.ndarray else namespace(a).take(
                        a, index, axis=0)
                if self.device is not None:
                    part = to_device_array(part, self.device)
                out.append(part)
            yield tuple(out)


def batches(*arrays: Any, batch_size: int, shuffle: bool = False, seed: int | None = None,
            drop_last: bool = False, device: Device | str | None = None) -> Batches:
    """Batches of ``arrays`` along their first axis, one tuple per batch (the same rows of
    each array), on ``device`` if given (moved and counted as data) else where each array is.

    The last, partial batch is included unless ``drop_last``; ``shuffle`` permutes the rows
    by ``seed``, with a new permutation each pass. Arrays of different lengths, and
    ``batch_size`` < 1, raise ValueError naming them.
    """
    if not arrays:
        raise ArgumentError(
            "batches() needs at least one array, e.g. ms.batches(x, y, batch_size=32)")
    checked = tuple(_array(a, i) for i, a in enumerate(arrays))
    lengths = [int(a.shape[0]) for a in checked]
    if len(set(lengths)) > 1:
        listed = ", ".join(f"arrays[{i}] has {n}" for i, n in enumerate(lengths))
        raise ArgumentError(
            f"batches: the arrays have different lengths ({listed} rows); each batch takes "
            "the same rows of every array, so they must have as many rows")
    size = _positive_int(batch_size, "batch_size")
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ArgumentTypeError(f"{name}={flag!r} is a {type(flag).__name__}; expected "
                                    "True or False")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ArgumentTypeError(
                f"seed={seed!r} is a {type(seed).__name__}; expected None or a non-negative int")
        if seed < 0:
            raise ArgumentError(f"seed={seed} is outside [0, ∞)")
    target = None if device is None else _device(device)
    return Batches(checked, size, bool(shuffle), seed, bool(drop_last), target)


def _array(value: Any, index: int) -> Any:
    if isinstance(value, (list, tuple)) and not is_array(value):
        value = np.asarray(value)
    if not is_array(value):
        raise ArgumentTypeError(
            f"batches: arrays[{index}] is a {type(value).__name__}; expected an array (NumPy, "
            "CuPy or a simulated device's) with one row per sample")
    if value.ndim == 0:
        raise ArgumentError(
            f"batches: arrays[{index}] is 0-d; expected an array with one row per sample")
    device_of(value)  # (an array on no device modelsync knows raises here, saying so)
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"{name}={value!r} is a {type(value).__name__}; expected an int in [1, ∞)")
    if value < 1:
        raise ArgumentError(f"{name}={value} is outside [1, ∞)")
    return int(value)


def _device(spec: Any) -> Device:
    return device(spec)
