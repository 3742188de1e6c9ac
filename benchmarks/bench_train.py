"""One training epoch of the demo's MLP in modelsync against the same in PyTorch on the CPU,
and the bytes a training step moves in each conversion mode.

The model, data and optimizer are the demo's (modelsync/demo.py): Dense(64, 128, relu) ->
Dense(128, 10) in float32, Adam(lr=3e-3), batches of 32 from the 1,437 digits training
images (45 steps). modelsync trains a model made by ``ms.to_device(model, "host")`` (as the
demo does on its device) with ``ms.train``; torch trains an ``nn.Sequential`` holding the
same initial values, with each Adam it has on the CPU. All are timed in turns; a row is the
median of the per-turn ratios to torch's fastest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    NO_TORCH,
    Row,
    Settings,
    compared,
    goal_of,
    in_turns,
    main,
    na_row,
    optional_torch,
)

import modelsync as ms  # noqa: E402
from modelsync import demo, losses, optim  # noqa: E402
from modelsync.datasets import load_digits  # noqa: E402

torch = optional_torch()


def batch_count(settings: Settings) -> int | None:
    """How many of the epoch's batches to run: all (None), or two for the smoke test."""
    return 2 if settings.tiny else None


def ms_epoch(dev: str, mode: str = "copy", steps: int | None = None
             ) -> tuple[Callable[[], list[float]], object]:
    """A function that trains one epoch of the demo on ``dev``, and the model it trains."""
    x, y, _, _ = load_digits()
    model = ms.to_device(demo.build_model(0), dev, mode=mode)
    batches = demo.device_batches(ms.to_device(x, dev), ms.to_device(y, dev),
                                  demo.BATCH_SIZE)[:steps]
    opt = optim.Adam(ms.params(model), lr=demo.LEARNING_RATE)
    return (lambda: ms.train(model, batches, losses.cross_entropy, opt, progress=False)), model


def torch_epochs(steps: int | None = None) -> dict[str, Callable[[], list[float]]]:
    """The same epoch in torch, with each Adam implementation torch has on the CPU."""
    x, y, _, _ = load_digits()
    host = demo.build_model(0)
    batches = [(torch.from_numpy(np.ascontiguousarray(bx)), torch.from_numpy(by))
               for bx, by in demo.device_batches(x, y, demo.BATCH_SIZE)[:steps]]
    loss_fn = torch.nn.CrossEntropyLoss()
    epochs = {}
    for label, extra in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
        net = torch.nn.Sequential(torch.nn.Linear(64, demo.HIDDEN), torch.nn.ReLU(),
                                  torch.nn.Linear(demo.HIDDEN, 10))
        with torch.no_grad():
            for linear, dense in ((net[0], host.layers[0]), (net[2], host.layers[1])):
                linear.weight.copy_(torch.from_numpy(np.asarray(dense.weight.value)))
                linear.bias.copy_(torch.from_numpy(np.asarray(dense.bias.value)))
        opt = torch.optim.Adam(net.parameters(), lr=demo.LEARNING_RATE, **extra)

        def epoch(net=net, opt=opt) -> list[float]:
            out = []
            for bx, by in batches:
                opt.zero_grad()
                loss = loss_fn(net(bx), by)
                loss.backward()
                opt.step()
                out.append(loss.item())
            return out

        epochs[f"torch Adam {label}"] = epoch
    return epochs


def first_epoch_losses_agree(steps: int | None) -> float:
    """The largest difference between modelsync's and torch's losses over a first epoch
    from the same initial values (a check that both train the same thing)."""
    ours = ms_epoch("host", steps=steps)[0]()
    theirs = torch_epochs(steps)["torch Adam foreach"]()
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))


def epoch_rows(settings: Settings) -> Iterator[Row]:
    steps = batch_count(settings)
    what = "demo training epoch (45 Adam steps), modelsync host"
    if torch is None:
        yield na_row(what + " vs torch Adam", goal_of(1.0), NO_TORCH)
        yield na_row("demo training epoch on sim:1 (array_api_strict) vs torch Adam",
                     goal_of(None), NO_TORCH)
        return
    diff = first_epoch_losses_agree(steps)
    timings = in_turns({**torch_epochs(steps), "modelsync host": ms_epoch("host", steps=steps)[0],
                        "modelsync sim:1": ms_epoch("sim:1", steps=steps)[0]}, settings)
    fastest = timings.fastest("torch ")
    others = timings.describe(*(n for n in timings.samples
                                if n not in ("modelsync host", fastest)))
    yield compared(f"{what} vs {fastest}", timings, "modelsync host", fastest, 1.0,
                   f"{others}; first-epoch losses differ by at most {diff:.1e}")
    yield compared(f"demo training epoch on sim:1 (array_api_strict) vs {fastest}", timings,
                   "modelsync sim:1", fastest, None)


def ledger_rows(settings: Settings) -> Iterator[Row]:
    """Parameter bytes moved per training step in each mode, from ms.track_transfers()."""
    steps = batch_count(settings)
    for dev in ("sim:1", "host"):
        for mode in ("copy", "move", "wrap"):
            epoch, _ = ms_epoch(dev, mode, steps)
            epoch()  # the first step makes the optimizer state: not a steady-state step
            with ms.track_transfers() as ledger:
                done = len(epoch())
            param = ledger.bytes_of("param") / done
            yield Row(f"training step, {mode} mode on {dev}: parameter bytes moved (ledger)",
                      param, "B", "0 B", "yes" if param == 0 else "NO",
                      f"all bytes: {ledger.bytes / done:g} B per step over {done} steps")


def rows(settings: Settings) -> Iterator[Row]:
    yield from epoch_rows(settings)
    yield from ledger_rows(settings)


if __name__ == "__main__":
    main(rows, __doc__)
