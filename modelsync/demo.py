"""The main job, end to end: train a digits classifier on a device in each conversion mode.

For each mode (wrap, copy, move) `run_demo` builds an MLP on the host, converts it with
``ms.to_device(model, dev, mode=...)``, trains it with Adam, saves it back to the host,
reloads the file and checks its test accuracy, and keeps a second copy of the same graph
in step with ``ms.sync``. Every phase runs inside its own ``ms.track_transfers()`` ledger,
so each returned `DemoRow` says exactly how many bytes crossed the host/device boundary
and when. The command line (``modelsync demo``) only parses options and prints the rows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from . import layers, losses
from .convert import MODES, sync, to_device, to_host
from .datasets import DIGITS_CITATION, load_digits
from .devices import HOST, Device, cuda_status, device
from .errors import ArgumentError, ArgumentTypeError
from .train import train
from .transfers import TransferLedger, copy_to, track_transfers
from .tree import graph_id, params
from .xp import namespace

#: The order the demo runs the modes in: the wrapper first, as the original discussion did.
DEMO_MODES = ("wrap", "copy", "move")
DEFAULT_EPOCHS = 12
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
HIDDEN = 128
PHASES = ("convert", "data", "train", "evaluate", "save", "load", "sync")


@attrs.frozen
class DemoRow:
    """What one mode's run measured.

    ``phase_bytes`` maps each phase (convert, data, train, evaluate, save, load, sync) to its
    (host→device, device→host, device→device) bytes; ``h2d_bytes``/``d2h_bytes`` are their
    totals. ``bytes_per_step`` counts everything moved during training divided by the number
    of optimizer steps: the guarantee is that it is 0. A distributed run
    (`modelsync.distributed.demo`) also says how many ``ranks`` trained, the ``global_batch``
    and the bytes each step sent between processes (``collective_bytes_per_step``).
    """

    mode: str
    device: str
    accuracy: float  # the reloaded file's test accuracy, computed on the host
    device_accuracy: float  # the trained model's test accuracy, computed on the device
    train_seconds: float
    steps: int
    final_loss: float
    h2d_bytes: int
    d2h_bytes: int
    d2d_bytes: int
    bytes_per_step: float
    param_bytes: int
    file_bytes: int
    file: str
    synced: bool  # the host copy synced from the trained model predicts exactly as it does
    same_graph: bool  # the reloaded model has the trained model's graph_id
    phase_bytes: dict[str, tuple[int, int, int]]
    ranks: int = 0  # 0: not a distributed run
    global_batch: int = BATCH_SIZE
    collective_bytes_per_step: float = 0.0


def resolve_device(spec: Device | str = "auto") -> tuple[Device, str]:
    """The device to run on, and one line saying which it is and, for "auto", why."""
    dev = device(spec)
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        if dev.kind == "cuda":
            return dev, f"device: {dev} (auto: CuPy can use a GPU)"
        why = cuda_status()[1]
        return dev, (f"device: {dev}, the simulated accelerator (auto: no usable GPU — {why}; "
                     "pass --device cuda on a machine with one)")
    return dev, f"device: {dev}"


def check_modes(modes: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` or one mode, or a sequence of modes, validated, in the demo's order."""
    if isinstance(modes, str):
        modes = DEMO_MODES if modes == "all" else (modes,)
    chosen = tuple(modes)
    for mode in chosen:
        if mode not in MODES:
            raise ArgumentError(
                f"mode={mode!r} is not a conversion mode; expected one of "
                f"{', '.join(DEMO_MODES)} or all")
    if not chosen:
        raise ArgumentError("modes is empty; expected at least one of wrap, copy, move")
    return chosen


def check_writable_dir(out: str | os.PathLike[str], label: str = "out") -> Path:
    """Create ``out`` if needed and prove it is writable by writing a probe file there.

    Called before any training, so a bad output folder fails in a second, not after a run.
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".modelsync-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ArgumentError(f"{label} {str(out)!r} is not a writable folder: {reason}") from None
    return path


def build_model(seed: int) -> Any:
    """The demo's classifier, on the host: Dense(64, 128, relu) -> Dense(128, 10)."""
    return layers.Chain(layers.Dense(64, HIDDEN, "relu", seed=seed),
                        layers.Dense(HIDDEN, 10, seed=seed + 1))


def device_batches(x: Any, y: Any, batch_size: int) -> list[tuple[Any, Any]]:
    """Minibatches as slices of arrays already on the device: no per-step transfer."""
    n = int(x.shape[0])
    return [(x[i:min(i + batch_size, n), ...], y[i:min(i + batch_size, n)])
            for i in range(0, n, batch_size)]


def accuracy(model: Any, x: Any, labels: np.ndarray) -> float:
    """Fraction of ``x`` (on the model's device) classified as ``labels`` (host ints).

    The predicted classes (not the logits) come back to the host through the counted door.
    """
    logits = model(x)
    classes = namespace(logits).argmax(logits, axis=1)
    predicted = copy_to(classes, HOST, reason="evaluate", what="data")
    return float(np.mean(predicted == labels))


def run_demo(*, dev: Device | str = "auto", modes: str | Sequence[str] = "all",
             epochs: int = DEFAULT_EPOCHS, out: str | os.PathLike[str] | None = None,
             progress: bool = True, seed: int = 0,
             log: Callable[[str], None] | None = None) -> list[DemoRow]:
    """Run the demo for each of ``modes`` on ``dev`` and return one `DemoRow` per mode.

    ``out`` is the folder for the saved ``.safetensors`` files (checked writable before any
    training; default: a temporary folder, removed afterwards). ``log`` receives progress
    lines ("wrap: trained 540 steps ...").
    """
    target = device(dev)
    chosen = check_modes(modes)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ArgumentError(f"epochs={epochs!r} is outside [1, ∞)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(f"seed={seed!r} is a {type(seed).__name__}; expected an int")
    data = load_digits()
    say = log or (lambda _line: None)
    with _out_folder(out) as folder:
        rows = []
        for mode in chosen:
            row = run_mode(mode, target, data, epochs=epochs, folder=folder,
                           progress=progress, seed=seed)
            say(f"{mode}: {row.steps} steps in {row.train_seconds:.2f} s, test accuracy "
                f"{row.accuracy:.3f}, {format_bytes(row.bytes_per_step)} per step")
            rows.append(row)
    return rows


@contextlib.contextmanager
def _out_folder(out: str | os.PathLike[str] | None) -> Iterator[Path]:
    if out is not None:
        yield check_writable_dir(out)
        return
    with tempfile.TemporaryDirectory(prefix="modelsync-demo-") as tmp:
        yield Path(tmp)


class PhaseLedgers(dict):
    """The transfer ledger of each named phase of a workflow (``with ledgers.track("train")``),
    which the demo's table adds up."""

    @contextlib.contextmanager
    def track(self, name: str) -> Iterator[TransferLedger]:
        with track_transfers() as ledger:
            self[name] = ledger
            yield ledger


def run_mode(mode: str, dev: Device, data: tuple[np.ndarray, ...], *, epochs: int,
             folder: Path, progress: bool, seed: int) -> DemoRow:
    """One mode's workflow: convert, train, save back to host, reload and check, sync."""
    from .io import load, save
    from .optim import Adam

    x_train, y_train, x_test, y_test = data
    ledgers = PhaseLedgers()
    phase = ledgers.track

    original = build_model(seed)
    twin = to_host(original, mode="copy")  # a second copy of the same graph, for sync
    with phase("convert"):
        model = to_device(original, dev, mode=mode)
    with phase("data"):
        batches = device_batches(to_device(x_train, dev), to_device(y_train, dev), BATCH_SIZE)
        x_test_dev = to_device(x_test, dev)
    optimizer = Adam(params(model), lr=LEARNING_RATE)
    with phase("train"):
        start = time.perf_counter()
        step_losses = train(model, batches, losses.cross_entropy, optimizer, epochs=epochs,
                            progress=progress)
        seconds = time.perf_counter() - start
    with phase("evaluate"):
        device_acc = accuracy(model, x_test_dev, y_test)
    path = folder / f"digits-mlp-{mode}.safetensors"
    with phase("save"):
        # wrap: the original is the host model, and reading it pulls the trained values once;
        # copy and move: the device model is saved from its current values.
        save(original if mode == "wrap" else model, path)
    with phase("load"):
        reloaded = load(path, device="host")
    host_acc = accuracy(reloaded, x_test, y_test)
    with phase("sync"):
        sync(twin, model)
    synced = bool(np.array_equal(np.argmax(twin(x_test), axis=1),
                                 np.argmax(reloaded(x_test), axis=1)))
    per_phase = {name: (ledger.h2d_bytes, ledger.d2h_bytes, ledger.d2d_bytes)
                 for name, ledger in ledgers.items()}
    steps = len(step_losses)
    return DemoRow(
        mode=mode, device=str(dev), accuracy=host_acc, device_accuracy=device_acc,
        train_seconds=seconds, steps=steps, final_loss=step_losses[-1],
        h2d_bytes=sum(v[0] for v in per_phase.values()),
        d2h_bytes=sum(v[1] for v in per_phase.values()),
        d2d_bytes=sum(v[2] for v in per_phase.values()),
        bytes_per_step=ledgers["train"].bytes / steps,
        param_bytes=sum(p.nbytes for p in params(model)),
        file_bytes=path.stat().st_size, file=str(path),
        synced=synced, same_graph=graph_id(reloaded) == graph_id(model),
        phase_bytes=per_phase)


# -- printing ---------------------------------------------------------------------------------
def ranks_text(n: int) -> str:
    """``1`` -> ``"1 rank"``, ``4`` -> ``"4 ranks"``."""
    return f"{n} rank" if n == 1 else f"{n} ranks"


def format_bytes(n: float) -> str:
    """``38440`` -> ``"37.5 KiB"`` (binary units, as ``modelsync inspect`` prints), ``0`` ->
    ``"0 B"``; a fraction of a byte (an average) keeps one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            if unit == "B":
                return f"{value:.0f} B" if value == int(value) else f"{value:.1f} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


TABLE_HEADER = ("mode", "test acc", "train s", "host→dev", "dev→host", "per step",
                "file size")


def table_lines(rows: Sequence[DemoRow]) -> list[str]:
    """The summary table, one line per mode, aligned, with a header and rule (and, for a
    distributed run, a column of bytes per step across processes)."""
    across = any(r.ranks for r in rows)
    header = TABLE_HEADER + (("across/step",) if across else ())
    cells = [header] + [
        (r.mode, f"{r.accuracy:.3f}", f"{r.train_seconds:.2f}", format_bytes(r.h2d_bytes),
         format_bytes(r.d2h_bytes), format_bytes(r.bytes_per_step), format_bytes(r.file_bytes))
        + ((format_bytes(r.collective_bytes_per_step),) if across else ())
        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def summary_lines(rows: Sequence[DemoRow], *, kept: bool) -> list[str]:
    """The table plus the notes that say what its numbers include."""
    if not rows:
        return []
    first = rows[0]
    batch = (f"global batch {first.global_batch} ({first.global_batch // first.ranks} per "
             f"rank)" if first.ranks else f"batch {BATCH_SIZE}")
    notes = [
        f"data: {DIGITS_CITATION}; 1,437 train / 360 test",
        f"model: Dense(64, {HIDDEN}, relu) -> Dense({HIDDEN}, 10), "
        f"{format_bytes(first.param_bytes)} of parameters; Adam(lr={LEARNING_RATE}), "
        f"{batch}, {first.steps} steps",
        "test acc: the saved file reloaded on the host; host→dev / dev→host: every byte the "
        "workflow moved (convert, data set once, evaluate, save, sync), from "
        "ms.track_transfers(); per step: bytes moved per training step",
    ]
    phases = first.phase_bytes
    notes.append(
        f"{first.mode}: host→dev = convert {format_bytes(phases['convert'][0])} + data set "
        f"{format_bytes(phases['data'][0])} (once); dev→host = save "
        f"{format_bytes(phases['save'][1])} + sync {format_bytes(phases['sync'][1])} + "
        f"predicted classes {format_bytes(phases['evaluate'][1])}")
    if first.ranks:
        notes.append(
            f"{ranks_text(first.ranks)} (one process each), DataParallel on shards of every global "
            "batch; across/step: gradient bytes each rank sent per step (one Allreduce), from "
            "the same ledger; the file is written once, by rank 0")
        if first.bytes_per_step:
            notes.append(
                f"per step on {first.device}: the gradients cross to the host and back for MPI "
                "(a simulated device, or GPUs without NCCL); on the host, or on GPUs with NCCL, "
                "it is 0")
    checks = all(r.synced and r.same_graph for r in rows)
    replicas = ", and every rank's replica is bitwise equal to rank 0's" if first.ranks else ""
    notes.append("sync: a host copy of the same graph synced from each trained model predicts "
                 f"exactly as the reloaded file{replicas}" if checks else
                 "sync: MISMATCH — a synced copy or a reloaded graph differs (see the rows)")
    if kept:
        notes.append(f"files: {', '.join(r.file for r in rows)}")
    else:
        notes.append("files: written to a temporary folder and removed; pass --out DIR to "
                     "keep them")
    return table_lines(rows) + [""] + notes
