"""The main job across processes: ``mpiexec -n N modelsync demo --distributed``.

For each mode the root builds the classifier; `replicate` gives every rank the same graph on
the host; each rank converts its replica with ``to_device(..., mode=...)`` and trains it with
`DataParallel` on its shard of every global batch (``BATCH_SIZE // N`` images per rank and
step, so the global batch is the one-process demo's 32 for N = 1, 2, 4); `save` writes the
file once, from the root, which reloads and tests it; `broadcast` and a digest exchange
check that the replicas ended bitwise equal. Each phase runs in its own ledger, which also
counts the bytes sent between processes. The rows come back on the root (None elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import demo as single
from .. import losses
from ..convert import sync as local_sync
from ..convert import to_device, to_host
from ..datasets import load_digits
from ..devices import HOST, Device, cuda_status, device
from ..errors import ArgumentError
from ..io import load
from ..train import train
from ..tree import graph_id, params
from .comm import Comm
from .data_parallel import DataParallel
from .replicas import broadcast
from .replicate import replicate
from .save import save


def rank_device(comm: Comm, spec: Device | str) -> tuple[Device, str]:
    """This rank's device for ``spec``: "auto" or "cuda" give each rank the GPU of its local
    rank (ranks beyond the GPU count share them, and go through the host)."""
    dev, line = single.resolve_device(spec)
    bare = isinstance(spec, str) and spec.strip().lower() in ("auto", "cuda")
    if dev.kind == "cuda" and bare:
        count = cuda_status()[0]
        dev = device(f"cuda:{comm.local_rank % count}")
        line = f"device: each rank its own GPU (rank {comm.rank}: {dev})"
    return dev, line


def shards(n: int, ranks: int, rank: int, batch: int = single.BATCH_SIZE
           ) -> tuple[int, list[tuple[int, int]]]:
    """Images per rank and step, and this rank's (start, stop) of every global batch: only
    whole global batches, so every rank takes the same number of steps."""
    per = max(1, batch // ranks)
    whole = per * ranks
    return per, [(start + rank * per, start + (rank + 1) * per)
                 for start in range(0, n - whole + 1, whole)]


def run(comm: Comm, *, dev: Device | str = "auto", modes: str | Sequence[str] = "all",
        epochs: int = single.DEFAULT_EPOCHS, out: Any = None, progress: bool = True,
        seed: int = 0, log: Callable[[str], None] | None = None
        ) -> list[single.DemoRow] | None:
    """Run the distributed demo on every rank of ``comm``; the rows on rank 0, else None."""
    chosen = single.check_modes(modes)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ArgumentError(f"epochs={epochs!r} is outside [1, ∞)")
    target, _ = rank_device(comm, dev)
    root = comm.rank == 0
    say = log if (log is not None and root) else (lambda _line: None)
    data = load_digits()
    with _folder(comm, out) as folder:
        rows = []
        for mode in chosen:
            row = run_mode(comm, mode, target, data, epochs=epochs, folder=folder,
                           progress=progress and root, seed=seed)
            if row is not None:
                say(f"{mode}: {row.steps} steps in {row.train_seconds:.2f} s on "
                    f"{single.ranks_text(comm.size)}, test accuracy {row.accuracy:.3f}, "
                    f"{single.format_bytes(row.collective_bytes_per_step)} per step across "
                    f"processes, {single.format_bytes(row.bytes_per_step)} per step "
                    "host/device")
            rows.append(row)
    return rows if root else None


@contextlib.contextmanager
def _folder(comm: Comm, out: Any) -> Iterator[Path | None]:
    """The root's folder for the files (other ranks write nothing and get None)."""
    if comm.rank != 0:
        yield None
        return
    with single._out_folder(out) as folder:
        yield folder


def run_mode(comm: Comm, mode: str, dev: Device, data: tuple[np.ndarray, ...], *,
             epochs: int, folder: Path | None, progress: bool, seed: int
             ) -> single.DemoRow | None:
    """One mode on every rank: replicate, convert, train data-parallel, save from the root,
    reload and test there, check the replicas are equal."""
    from ..optim import Adam

    x_train, y_train, x_test, y_test = data
    ledgers = single.PhaseLedgers()
    phase = ledgers.track

    with phase("replicate"):
        original = replicate(single.build_model(seed) if comm.rank == 0 else None, comm,
                             device=HOST)
    twin = to_host(original, mode="copy")
    with phase("convert"):
        model = to_device(original, dev, mode=mode)
    per, mine = shards(len(x_train), comm.size, comm.rank)
    with phase("data"):
        rows = np.concatenate([np.arange(a, b) for a, b in mine])
        x_dev, y_dev = to_device(x_train[rows], dev), to_device(y_train[rows], dev)
        batches = single.device_batches(x_dev, y_dev, per)
        x_test_dev = to_device(x_test, dev)
    optimizer = DataParallel(Adam(params(model), lr=single.LEARNING_RATE), comm)
    with phase("train"):
        start = time.perf_counter()
        step_losses = train(model, batches, losses.cross_entropy, optimizer,
                            epochs=epochs, progress=progress)
        seconds = time.perf_counter() - start
    with phase("evaluate"):
        device_acc = single.accuracy(model, x_test_dev, y_test)
    path = None if folder is None else folder / f"digits-mlp-{mode}-{comm.size}ranks.safetensors"
    with phase("save"):
        save(original if mode == "wrap" else model, path, comm, optimizer=optimizer)
    with phase("sync"):
        broadcast(model, comm)  # replicas that stayed equal stay equal
        local_sync(twin, model)
    equal = _replicas_equal(comm, model)
    if comm.rank != 0:
        return None
    with phase("load"):
        reloaded = load(path, device="host")
    host_acc = single.accuracy(reloaded, x_test, y_test)
    synced = equal and bool(np.array_equal(np.argmax(twin(x_test), axis=1),
                                           np.argmax(reloaded(x_test), axis=1)))
    per_phase = {name: (ledger.h2d_bytes, ledger.d2h_bytes, ledger.d2d_bytes)
                 for name, ledger in ledgers.items()}
    steps = len(step_losses)
    train_ledger = ledgers["train"]
    return single.DemoRow(
        mode=mode, device=str(dev), accuracy=host_acc, device_accuracy=device_acc,
        train_seconds=seconds, steps=steps, final_loss=step_losses[-1],
        h2d_bytes=sum(v[0] for v in per_phase.values()),
        d2h_bytes=sum(v[1] for v in per_phase.values()),
        d2d_bytes=sum(v[2] for v in per_phase.values()),
        bytes_per_step=(train_ledger.bytes - train_ledger.collective_bytes) / steps,
        param_bytes=sum(p.nbytes for p in params(model)),
        file_bytes=path.stat().st_size, file=str(path), synced=synced,
        same_graph=graph_id(reloaded) == graph_id(model), phase_bytes=per_phase,
        ranks=comm.size, global_batch=per * comm.size,
        collective_bytes_per_step=train_ledger.collective_bytes / steps)


def _replicas_equal(comm: Comm, model: Any) -> bool:
    """Whether every rank's Params are bitwise equal to rank 0's (a digest exchange)."""
    h = hashlib.sha256()
    for p in params(to_host(model) if params(model)[0].device != HOST else model):
        h.update(np.ascontiguousarray(p.value).tobytes())
    if comm.size == 1:
        return True
    everyone = comm.mpi.allgather(h.digest())
    return all(d == everyone[0] for d in everyone)
