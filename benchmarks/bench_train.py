"""One training epoch of the demo's MLP in modelsync against the same in PyTorch on the CPU,
and the bytes a training step moves in each conversion mode.

The model, data and optimizer are the demo's (modelsync/demo.py): Dense(64, 128, relu) ->
Dense(128, 10) in float32, Adam(lr=3e-3), batches of 32 from the 1,437 digits training
images (45 steps). modelsync trains a model made by ``ms.to_device(model, "host")`` (as the
demo does on its device) with ``ms.train``; torch trains an ``nn.Sequential`` holding the
same initial values, with its fastest Adam. Both are timed in alternation, best of N.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from common import row

import modelsync as ms
from modelsync import demo, kernels, losses, optim
from modelsync.datasets import load_digits


def ms_epoch(dev: str, mode: str = "copy") -> tuple[Callable[[], list[float]], object]:
    """A function that trains one epoch of the demo on ``dev``, and the model it trains."""
    x, y, _, _ = load_digits()
    model = ms.to_device(demo.build_model(0), dev, mode=mode)
    batches = demo.device_batches(ms.to_device(x, dev), ms.to_device(y, dev), demo.BATCH_SIZE)
    opt = optim.Adam(ms.params(model), lr=demo.LEARNING_RATE)
    return (lambda: ms.train(model, batches, losses.cross_entropy, opt, progress=False)), model


def torch_epochs() -> dict[str, Callable[[], list[float]]]:
    """The same epoch in torch, with each Adam implementation torch has on the CPU."""
    x, y, _, _ = load_digits()
    host = demo.build_model(0)
    batches = [(torch.from_numpy(np.ascontiguousarray(bx)), torch.from_numpy(by))
               for bx, by in demo.device_batches(x, y, demo.BATCH_SIZE)]
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


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best seconds per call of each function, timed in turns, each turn after one untimed
    call (so the other library's OpenMP threads have stopped spinning)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def first_epoch_losses_agree() -> float:
    """The largest difference between modelsync's and torch's losses over a first epoch
    from the same initial values (a check that both train the same thing)."""
    ours = ms_epoch("host")[0]()
    theirs = torch_epochs()["torch Adam foreach"]()
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))


def ledger_rows() -> list[str]:
    """Bytes moved per training step in each mode, from ms.track_transfers()."""
    lines = []
    for dev in ("sim:1", "host"):
        for mode in ("copy", "move", "wrap"):
            epoch, model = ms_epoch(dev, mode)
            epoch()  # the first step makes the optimizer state: not a steady-state step
            steps = 45
            with ms.track_transfers() as ledger:
                epoch()
            param = ledger.bytes_of("param")
            lines.append(f"| training step, {mode} mode on {dev}: parameter bytes moved "
                         f"(ledger) | {param / steps:g} B | 0 B | all bytes: "
                         f"{ledger.bytes / steps:g} B per step over {steps} steps |")
    return lines


def run(repeat: int) -> list[str]:
    host_epoch, _ = ms_epoch("host")
    sim_epoch, _ = ms_epoch("sim:1")
    fns = {"modelsync host": host_epoch, "modelsync sim:1": sim_epoch, **torch_epochs()}
    times = interleaved(fns, repeat)
    fastest = min((n for n in times if n.startswith("torch")), key=times.__getitem__)
    detail = ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in times.items())
    diff = first_epoch_losses_agree()
    return [
        row(f"demo training epoch (45 Adam steps), modelsync host vs {fastest}",
            times["modelsync host"] / times[fastest], "≤ 1.0×",
            f"{detail}; first-epoch losses differ by at most {diff:.1e}"),
        row(f"demo training epoch on sim:1 (array_api_strict) vs {fastest}",
            times["modelsync sim:1"] / times[fastest], "info", ""),
        *ledger_rows(),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"host kernels: {kernels.backend()}")
    print("| what | ratio | goal | details |")
    print("| --- | --- | --- | --- |")
    for line in run(args.repeat):
        print(line, flush=True)


if __name__ == "__main__":
    main()
