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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tqdm.auto import tqdm

from .batching import batches
from .convert import MODES, sync, to_device, to_host
from .devices import HOST, Device, cuda_status, device
from .errors import ArgumentError, ArgumentTypeError
from .layers.base import param_device
from .train import backprop
from .transfers import TransferLedger, copy_to, track_transfers
from .tree import graph_id, params
from .update_bn import update_bn
from .workloads import CONTEXT, WORKLOADS, Workload, build_mlp, decode, encode, workload
from .workloads import HIDDEN as HIDDEN
from .xp import namespace

#: The order the demo runs the modes in: the wrapper first, as the original discussion did.
DEMO_MODES = ("wrap", "copy", "move")
DEFAULT_EPOCHS = WORKLOADS["mlp"].epochs
BATCH_SIZE = WORKLOADS["mlp"].batch_size
LEARNING_RATE = WORKLOADS["mlp"].lr
EMA_TAU = 0.05  # the EMA copy's soft-sync rate after each step
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
    model: str = "mlp"  # the workload (modelsync.workloads)
    metric: str = "test acc"  # what ``accuracy`` measures ("val acc": per next character)
    ema_accuracy: float = float("nan")  # the EMA copy's, buffers copied by each soft sync
    ema_bn_accuracy: float = float("nan")  # the EMA copy's after ms.update_bn (BatchNorm)
    valid_loss: float = float("nan")  # the reloaded file's mean loss on the held-out data
    sample: str = ""  # a language model's generated text


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
    """The demo's default classifier (the MLP), on the host."""
    return build_mlp(seed)


def device_batches(x: Any, y: Any, batch_size: int) -> list[tuple[Any, Any]]:
    """Minibatches as slices of arrays already on the device (``ms.batches`` in order, made
    once): no per-step transfer."""
    return list(batches(x, y, batch_size=batch_size))


def predictions(model: Any, x: Any) -> np.ndarray:
    """The classes ``model`` predicts for ``x`` (on the model's device), as host ints: only
    the predicted classes (not the logits) come back, through the counted door."""
    logits = model(x)
    classes = namespace(logits).argmax(logits, axis=-1)
    return np.asarray(copy_to(classes, HOST, reason="evaluate", what="data"))


def accuracy(model: Any, x: Any, labels: np.ndarray) -> float:
    """Fraction of ``x`` (on the model's device) classified as ``labels`` (host ints); for a
    language model, the fraction of next characters predicted."""
    return float(np.mean(predictions(model, x) == labels))


def run_demo(*, dev: Device | str = "auto", modes: str | Sequence[str] = "all",
             epochs: int | None = None, out: str | os.PathLike[str] | None = None,
             progress: bool = True, seed: int = 0, model: str = "mlp",
             log: Callable[[str], None] | None = None) -> list[DemoRow]:
    """Run the demo of ``model`` (``"mlp"``, ``"cnn"`` or ``"lm"``) for each of ``modes`` on
    ``dev`` and return one `DemoRow` per mode.

    ``epochs`` defaults to the model's own (`modelsync.workloads`). ``out`` is the folder for
    the saved ``.safetensors`` files (checked writable before any training; default: a
    temporary folder, removed afterwards). ``log`` receives progress lines.
    """
    target = device(dev)
    chosen = check_modes(modes)
    work = workload(model)
    epochs = work.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ArgumentError(f"epochs={epochs!r} is outside [1, ∞)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(f"seed={seed!r} is a {type(seed).__name__}; expected an int")
    data = work.data()
    say = log or (lambda _line: None)
    with _out_folder(out) as folder:
        rows = []
        for mode in chosen:
            row = run_mode(mode, target, data, epochs=epochs, folder=folder,
                           progress=progress, seed=seed, work=work)
            say(f"{mode}: {row.steps} steps in {row.train_seconds:.2f} s, {row.metric} "
                f"{row.accuracy:.3f} (EMA copy {row.ema_accuracy:.3f}), "
                f"{format_bytes(row.bytes_per_step)} per step")
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


def train_with_ema(model: Any, ema: Any, batches: Sequence[tuple[Any, Any]], loss_fn: Any,
                   optimizer: Any, *, epochs: int, progress: bool) -> list[float]:
    """The guide's loop (zero_grad, backprop, step) with an EMA copy of the same graph kept in
    step after every step by ``ms.sync(ema, model, tau=EMA_TAU)`` on the same device: no byte
    crosses to the host."""
    step_losses: list[float] = []
    with tqdm(total=len(batches) * epochs, disable=True if not progress else None,
              file=sys.stderr, desc="train", unit="step", leave=False) as bar:
        for _ in range(epochs):
            for x, y in batches:
                optimizer.zero_grad()
                step_losses.append(backprop(model, loss_fn, x, y))
                optimizer.step()
                sync(ema, model, tau=EMA_TAU)
                bar.update(1)
    return step_losses


def run_mode(mode: str, dev: Device, data: tuple[np.ndarray, ...], *, epochs: int,
             folder: Path, progress: bool, seed: int, work: Workload | None = None) -> DemoRow:
    """One mode's workflow: convert, train (with an EMA copy), save back to host, reload and
    check, sync."""
    from .io import load, save
    from .optim import Adam

    work = work or workload("mlp")
    x_train, y_train, x_test, y_test = data
    ledgers = PhaseLedgers()
    phase = ledgers.track

    original = work.build(seed)
    twin = to_host(original, mode="copy")  # a second copy of the same graph, for sync
    ema = to_device(original, dev, mode="copy")  # the EMA copy, made before a move
    with phase("convert"):
        model = to_device(original, dev, mode=mode)
    with phase("data"):
        batches = device_batches(to_device(x_train, dev), to_device(y_train, dev),
                                 work.batch_size)
        x_test_dev = to_device(x_test, dev)
    optimizer = Adam(params(model), lr=work.lr)
    with phase("train"):
        start = time.perf_counter()
        step_losses = train_with_ema(model, ema, batches, work.loss, optimizer, epochs=epochs,
                                     progress=progress)
        seconds = time.perf_counter() - start
    with phase("evaluate"):
        device_acc = accuracy(model, x_test_dev, y_test)
        ema_acc = accuracy(ema, x_test_dev, y_test)
        if work.batchnorm:  # the EMA's statistics recomputed for its own weights
            refreshed = to_device(ema, dev, mode="copy")
            update_bn(refreshed, [x for x, _ in batches])
            ema_bn_acc = accuracy(refreshed, x_test_dev, y_test)
        else:
            ema_bn_acc = float("nan")
        sample = generate(model, "def ", 80, seed=seed) if work.language else ""
    path = folder / f"{work.file_stem}-{mode}.safetensors"
    with phase("save"):
        # wrap: the original is the host model, and reading it pulls the trained values once;
        # copy and move: the device model is saved from its current values.
        save(original if mode == "wrap" else model, path)
    with phase("load"):
        reloaded = load(path, device="host")
    host_acc = accuracy(reloaded, x_test, y_test)
    valid_loss = float(work.loss(reloaded(x_test), y_test))
    with phase("sync"):
        sync(twin, model)
    synced = bool(np.array_equal(np.argmax(twin(x_test), axis=-1),
                                 np.argmax(reloaded(x_test), axis=-1)))
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
        phase_bytes=per_phase, model=work.name, global_batch=work.batch_size,
        metric="val acc" if work.language else "test acc", ema_accuracy=ema_acc,
        ema_bn_accuracy=ema_bn_acc, valid_loss=valid_loss, sample=sample)


def generate(model: Any, prompt: str, length: int, *, seed: int = 0,
             temperature: float = 0.8) -> str:
    """``length`` characters sampled from a language model after ``prompt``, on the model's
    device (each step sends its context there and brings back one row of logits, as data)."""
    dev = param_device(model)
    rng = np.random.default_rng(seed)
    tokens = list(encode(prompt))
    for _ in range(length):
        context = np.asarray(tokens[-CONTEXT:], dtype=np.int64)[None, :]
        logits = model(copy_to(context, dev, reason="generate", what="data"))
        last = np.asarray(copy_to(logits[0, -1, ...], HOST, reason="generate", what="data"),
                          dtype=np.float64) / temperature
        probs = np.exp(last - last.max())
        tokens.append(int(rng.choice(len(probs), p=probs / probs.sum())))
    return decode(tokens)


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


TABLE_HEADER = ("mode", "test acc", "EMA acc", "train s", "host→dev", "dev→host", "per step",
                "file size")


def table_lines(rows: Sequence[DemoRow]) -> list[str]:
    """The summary table, one line per mode, aligned, with a header and rule (a distributed
    run adds a column of bytes per step across processes; a BatchNorm model the EMA copy's
    accuracy after ``ms.update_bn``; a language model its validation loss)."""
    across = any(r.ranks for r in rows)
    batchnorm = any(r.ema_bn_accuracy == r.ema_bn_accuracy for r in rows)  # (not NaN)
    language = rows[0].metric == "val acc"
    header = (("mode", rows[0].metric, "EMA " + rows[0].metric.split()[-1])
              + (("EMA+update_bn",) if batchnorm else ()) + (("val loss",) if language else ())
              + TABLE_HEADER[3:] + (("across/step",) if across else ()))
    cells = [header] + [
        (r.mode, f"{r.accuracy:.3f}", f"{r.ema_accuracy:.3f}")
        + ((f"{r.ema_bn_accuracy:.3f}",) if batchnorm else ())
        + ((f"{r.valid_loss:.3f}",) if language else ())
        + (f"{r.train_seconds:.2f}", format_bytes(r.h2d_bytes),
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
    work = workload(first.model)
    batch = (f"global batch {first.global_batch} ({first.global_batch // first.ranks} per "
             f"rank)" if first.ranks else f"batch {first.global_batch}")
    scored = ("val acc: next characters predicted by the saved file reloaded on the host "
              "(held-out text)" if work.language else
              "test acc: the saved file reloaded on the host")
    notes = [
        f"data: {work.citation}",
        f"model: {work.description}, {format_bytes(first.param_bytes)} of parameters; "
        f"Adam(lr={work.lr}), {batch}, {first.steps} steps",
        f"{scored}; EMA: a copy of the same graph on the device, ms.sync(ema, model, "
        f"tau={EMA_TAU}) after every step (0 bytes: same device)"
        + ("; EMA+update_bn: that copy's BatchNorm statistics recomputed by ms.update_bn "
           "(sync copies the trained model's statistics by default, buffers=\"copy\")"
           if work.batchnorm else ""),
        "host→dev / dev→host: every byte the workflow moved (convert, data set once, "
        "evaluate, save, sync), from ms.track_transfers(); per step: bytes moved per "
        "training step",
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
    if first.sample:
        notes.append("sample (" + first.mode + "): " + repr(first.sample))
    if kept:
        notes.append(f"files: {', '.join(r.file for r in rows)}")
    else:
        notes.append("files: written to a temporary folder and removed; pass --out DIR to "
                     "keep them")
    return table_lines(rows) + [""] + notes
