"""The semantics exploration: each used-by workflow under each conversion mode, measured.

Workflows (convert and train; save back to host; keep two copies in step) run under copy,
move and wrap on one device; the transfer ledger counts every byte, live bytes are counted
per device, every operation's legality afterwards is found by trying it, and the results
answer the original design discussion's questions in ``docs/semantics.md`` (with a PNG
plot when matplotlib is installed). Run it as ``modelsync explore`` or ``python -m semantics``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelsync as ms

__all__ = ["MODES", "run"]

MODES = ("wrap", "copy", "move")
STEPS = 45  # one pass over the 1,437 training images in batches of 32
SYNC_EVERY = 15


def run(out: str | Path = "docs/semantics.md", *, device: ms.Device | str = "auto",
        progress: bool = True, log: Callable[[str], None] | None = None,
        steps: int = STEPS, sync_every: int = SYNC_EVERY) -> Path:
    """Run every experiment on ``device`` and write the report to ``out`` (the plot goes next
    to it as ``<stem>-bytes.png``). Returns the report's path.

    The output folder is checked writable before anything runs.
    """
    from modelsync.demo import check_writable_dir, resolve_device

    from .buffers import probe_buffers
    from .common import Data
    from .legality import legality_matrix
    from .probes import probe_ranges, probe_state, probe_sync, probe_ties
    from .report import Results, plot, write_report
    from .workflows import run_mode, run_per_batch, warm_up

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ms.ArgumentError(f"steps={steps!r} is outside [1, ∞)")
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise ms.ArgumentError(f"sync_every={sync_every!r} is outside [1, ∞)")
    out = Path(out)
    if out.is_dir():
        raise ms.ArgumentError(f"--out {str(out)!r} is a folder; expected the report's file "
                               "name, e.g. docs/semantics.md")
    check_writable_dir(out.parent, label="--out's folder")
    dev, device_line = resolve_device(device)
    if dev.kind == "host":
        raise ms.ArgumentError(
            "--device host: the exploration measures what crosses between the host and a "
            "device, so it needs one; pass sim:1 (simulated) or cuda:N")
    say = log or (lambda _line: None)
    say(device_line)
    started = time.perf_counter()
    data = Data(dev)
    tasks = [f"workflows ({m})" for m in MODES] + ["per-batch reference", "legality",
                                                    "probes"]
    from tqdm.auto import tqdm

    runs: dict[str, Any] = {}
    with tqdm(total=len(tasks), disable=True if not progress else None, desc="explore",
              unit="experiment", leave=False) as bar, \
            tempfile.TemporaryDirectory(prefix="semantics-") as tmp:
        warm_up(dev, data, Path(tmp))
        for mode in MODES:
            bar.set_postfix_str(mode)
            runs[mode] = run_mode(mode, dev, data, Path(tmp), steps=steps,
                                  sync_every=sync_every)
            say(f"{mode}: {runs[mode].bytes_per_step:g} bytes per step, "
                f"{runs[mode].bytes_per_sync:g} bytes per sync")
            bar.update(1)
        per_batch = run_per_batch(dev, data, steps=2 * steps)
        bar.update(1)
        matrix = legality_matrix(MODES, dev, data)
        bar.update(1)
        results = Results(
            device=str(dev), device_note=_device_note(dev), runs=runs, per_batch=per_batch,
            matrix=matrix, state=probe_state(MODES, dev, data), sync=probe_sync(MODES, dev),
            ties=probe_ties(MODES, dev), ranges=probe_ranges(), steps=steps,
            sync_every=sync_every, buffers=probe_buffers(MODES, dev, data))
        bar.update(1)
    png = out.with_name(f"{out.stem}-bytes.png")
    results.plot_note = plot(results, png) or ""
    results.plot_file = None if results.plot_note else png.name
    results.seconds = time.perf_counter() - started
    write_report(results, out)
    if results.plot_note:
        say(f"no plot: {results.plot_note}")
    return out


def _device_note(dev: ms.Device) -> str:
    if dev.kind == "sim":
        return ("the simulated accelerator: array_api_strict arrays on a separate device, which "
                "refuse to mix with host arrays as CuPy's do, so every transfer is explicit and "
                "counted exactly as on a GPU")
    if dev.kind == "cuda":
        return "a CUDA GPU through CuPy"
    return "the host itself: nothing crosses a device boundary, so every transfer is 0 bytes"
