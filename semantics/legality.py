"""Which operations stay legal on the original and on the converted model, found by trying.

Every cell starts from a fresh setup (a small model, converted under the mode, one training
step on the converted model) and tries one operation on one side, recording "ok" with the
model bytes it moved (parameters, gradients, optimizer state; a batch moved for the
operation is not counted), or the class of the error it raised.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import modelsync as ms

from .common import Data, adam, build_model, save, train_step
from .measure import measured

SIDES = ("original", "converted")


@attrs.frozen
class Setup:
    """One fresh experiment: the two sides, a spare host model of the same graph, and where
    to put files."""

    original: Any
    converted: Any
    spare: Any
    dev: ms.Device
    data: Data
    folder: Path

    def side(self, name: str) -> Any:
        return self.original if name == "original" else self.converted

    def other(self, name: str) -> Any:
        return self.converted if name == "original" else self.original


def _call(s: Setup, side: str) -> None:
    model = s.side(side)
    model(s.data.input_for(model))


def _train(s: Setup, side: str) -> None:
    model = s.side(side)
    x = s.data.input_for(model)
    y = ms.to_device(s.data.y_host[: x.shape[0]], ms.params(model)[0].device)
    train_step(model, adam(model), x, y)


def _raw_write(s: Setup, side: str) -> None:
    value = ms.params(s.side(side))[0].value
    value[0, ...] = 0.0


OPERATIONS: list[tuple[str, str, Callable[[Setup, str], Any]]] = [
    ("call", "model(x)", _call),
    ("params", "ms.params(model)", lambda s, side: ms.params(s.side(side))),
    ("train step", "backprop + Adam step on its own Params", _train),
    ("save", "ms.save(model, path)", lambda s, side: save(s.side(side), s.folder / f"{side}.st")),
    ("sync into it", "ms.sync(model, other side)",
     lambda s, side: ms.sync(s.side(side), s.other(side))),
    ("sync from it", "ms.sync(host copy of the graph, model)",
     lambda s, side: ms.sync(s.spare, s.side(side))),
    ("to_device copy", "ms.to_device(model, dev, mode='copy')",
     lambda s, side: ms.to_device(s.side(side), s.dev, mode="copy")),
    ("to_device wrap", "ms.to_device(model, dev, mode='wrap')",
     lambda s, side: ms.to_device(s.side(side), s.dev, mode="wrap")),
    ("to_host", "ms.to_host(model)", lambda s, side: ms.to_host(s.side(side))),
    ("detach", "ms.detach(model)", lambda s, side: ms.detach(s.side(side))),
    ("raw write", "ms.params(model)[0].value[0] = 0", _raw_write),
]


@attrs.frozen
class Cell:
    ok: bool
    text: str  # "ok", "ok, 1.2 kB" or the error class name
    error: str = ""  # the error message, one line


def fresh(mode: str, dev: ms.Device, data: Data, folder: Path) -> Setup:
    original = build_model(seed=7, hidden=16)
    spare = ms.to_host(original, mode="copy")
    converted = ms.to_device(original, dev, mode=mode)
    x, y = data.batch(0)
    train_step(converted, adam(converted), x, y)
    return Setup(original, converted, spare, dev, data, folder)


def legality_matrix(modes: tuple[str, ...], dev: ms.Device, data: Data
                    ) -> dict[tuple[str, str], dict[str, Cell]]:
    """``{(mode, side): {operation: Cell}}`` for every mode, side and operation."""
    from .report import format_bytes

    matrix: dict[tuple[str, str], dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="semantics-") as tmp:
        for mode in modes:
            for side in SIDES:
                row: dict[str, Cell] = {}
                for name, _, operation in OPERATIONS:
                    setup = fresh(mode, dev, data, Path(tmp))
                    try:
                        with measured(name) as phase:
                            operation(setup, side)
                    except (ms.ModelSyncError, ValueError, TypeError) as exc:  # refusals
                        row[name] = Cell(False, type(exc).__name__, " ".join(str(exc).split()))
                    else:
                        model_bytes = phase.bytes - phase.by_what.get("data", 0)
                        moved = f", {format_bytes(model_bytes)}" if model_bytes else ""
                        row[name] = Cell(True, f"ok{moved}")
                matrix[(mode, side)] = row
    return matrix
