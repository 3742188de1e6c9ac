"""The buffer rows: what each conversion mode and each sync does to BatchNorm's running
statistics (state that is not trained), measured in bytes and values, beside what the
peers do (PyTorch, Flax, Chainer, stable-baselines3)."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

import modelsync as ms
from modelsync import layers

from .common import Data, adam, train_step
from .measure import measured

STEPS = 5  # training steps per mode: the counter must read this afterwards


def bn_model(seed: int = 0) -> Any:
    """Dense(64, 32) -> BatchNorm(32) -> ReLU -> Dense(32, 10), on the host."""
    return layers.Chain(layers.Dense(64, 32, seed=seed), layers.BatchNorm(32), layers.ReLU(),
                        layers.Dense(32, 10, seed=seed + 1))


def _stats(model: Any) -> dict[str, np.ndarray]:
    """The model's Buffers as host arrays, through the counted door."""
    from modelsync.transfers import copy_to

    return {path: copy_to(b.value, ms.device("host"), reason="semantics: buffers",
                          what="data") for path, b in ms.named_buffers(model).items()}


MEAN, COUNT = "layers.1.running_mean", "layers.1.num_batches_tracked"


@attrs.frozen
class ModeRow:
    mode: str
    bytes_per_step: float
    original_count: str  # the original's num_batches_tracked afterwards, or the error
    read_bytes: int  # bytes moved to read the original's statistics (twice)
    read_again_bytes: int


@attrs.frozen
class SyncRow:
    call: str
    bytes: int
    mean_error: float  # max |dst running_mean - expected|
    expected: str  # what dst's running_mean was compared with
    count: int  # dst's num_batches_tracked afterwards


@attrs.frozen
class BufferProbe:
    buffer_bytes: int
    steps: int
    modes: list[ModeRow]
    syncs: list[SyncRow]
    update_bn: SyncRow


def probe_buffers(modes: tuple[str, ...], dev: ms.Device, data: Data) -> BufferProbe:
    rows = []
    for mode in modes:
        original = bn_model(10)
        converted = ms.to_device(original, dev, mode=mode)
        opt = adam(converted)
        with measured("train") as train:
            for step in range(STEPS):
                train_step(converted, opt, *data.batch(step))
        try:
            with measured("read") as first:
                count = str(int(_stats(original)[COUNT]))
            with measured("read again") as again:
                _stats(original)
        except ms.ModelSyncError as exc:
            count, first, again = f"invalid: {type(exc).__name__}", None, None
        rows.append(ModeRow(mode, train.bytes / STEPS, count,
                            first.bytes if first else 0, again.bytes if again else 0))
        if mode == "wrap":
            ms.detach(converted)
    nbytes = sum(b.nbytes for b in ms.buffers(bn_model()))
    return BufferProbe(nbytes, STEPS, rows, _syncs(dev, data), _update_bn(dev, data))


def _trained_pair(dev: ms.Device, data: Data) -> tuple[Any, Any]:
    """(a host copy of the graph, untrained but for one step; the device model, trained)."""
    base = bn_model(20)
    dst = ms.to_host(base, mode="copy")
    train_step(dst, adam(dst), data.x_host[:32], data.y_host[:32])
    src = ms.to_device(base, dev)
    opt = adam(src)
    for step in range(STEPS):
        train_step(src, opt, *data.batch(step))
    return dst, src


def _syncs(dev: ms.Device, data: Data) -> list[SyncRow]:
    rows = []
    for call, tau, rule in (("ms.sync(dst, src)", 1.0, "copy"),
                            ("ms.sync(dst, src, tau=0.5)", 0.5, "copy"),
                            ("ms.sync(dst, src, tau=0.5, buffers=\"lerp\")", 0.5, "lerp"),
                            ("ms.sync(dst, src, tau=0.5, buffers=\"keep\")", 0.5, "keep")):
        dst, src = _trained_pair(dev, data)
        theirs, mine = _stats(src), _stats(dst)
        with measured(call) as phase:
            ms.sync(dst, src, tau=tau, buffers=rule)
        got = _stats(dst)
        if rule == "keep":
            want, label = mine[MEAN], "dst's own (kept)"
        elif rule == "lerp" and tau != 1.0:
            want, label = tau * theirs[MEAN] + (1 - tau) * mine[MEAN], "0.5·src + 0.5·dst"
        else:
            want, label = theirs[MEAN], "src's (copied)"
        rows.append(SyncRow(call, phase.bytes, float(np.max(np.abs(got[MEAN] - want))), label,
                            int(got[COUNT])))
    return rows


def _update_bn(dev: ms.Device, data: Data) -> SyncRow:
    """An EMA-style copy whose statistics were kept, then recomputed from 4 batches."""
    dst, src = _trained_pair(dev, data)
    ms.sync(dst, src, tau=0.5, buffers="keep")
    batches = [data.x_host[i:i + 32] for i in range(0, 128, 32)]
    with measured("update_bn") as phase:
        ms.update_bn(dst, batches)
    hidden = np.concatenate([np.asarray(dst.layers[0](x)) for x in batches])
    got = _stats(dst)
    return SyncRow("ms.update_bn(dst, 4 batches)", phase.bytes,
                   float(np.max(np.abs(got[MEAN] - hidden.mean(axis=0)))),
                   "the batches' mean under dst's weights", int(got[COUNT]))


#: What the peers do with running statistics (from their documentation and source).
PEERS = [
    ("PyTorch", "buffers in `state_dict` and moved by `module.to`; `DistributedDataParallel` "
     "broadcasts them from rank 0 at every forward (`broadcast_buffers=True`); "
     "`swa_utils.AveragedModel` averages Params only unless `use_buffers=True`, hence "
     "`update_bn`"),
    ("Flax (linen)", "a separate `batch_stats` collection, updated only when the call passes "
     "`mutable=[\"batch_stats\"]`; what an EMA or a target network does with it is user code"),
    ("Chainer", "persistent values (`avg_mean`, `avg_var`, `N`) registered with "
     "`add_persistent`: serialized with the Params, not seen by optimizers"),
    ("stable-baselines3", "target networks copy the running statistics with `tau=1` "
     "(`polyak_update(batch_norm_stats, batch_norm_stats_target, 1.0)`) while Params get "
     "`tau`"),
]
