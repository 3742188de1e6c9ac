"""The three workflows, run back to back under one mode, each phase measured.

1. convert and train: ``to_device(model, dev, mode)``, then training steps with Adam;
2. save back to host: save the trained model twice, reload it, compare;
3. keep two copies in step: a host copy of the same graph, brought up to date with the
   device model every few steps while training goes on.

The same timeline gives the plot: cumulative bytes moved after each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

import modelsync as ms

from .common import Data, adam, build_model, host_values, load, same_values, save, train_step
from .measure import Peak, Phase, measured


@attrs.define
class ModeRun:
    """Everything one mode's run measured (bytes are parameter + state + data bytes, all
    counted by ms.track_transfers())."""

    mode: str
    device: str
    param_bytes: int
    convert: Phase
    train: Phase
    steps: int
    original_after_training: str  # "updated", "unchanged" or "invalid: MovedError"
    original_detail: str
    save_first: Phase
    save_again: Phase
    file_bytes: int
    reload_equal: bool
    reload_same_graph: bool
    replica_setup: Phase
    syncs: list[Phase]
    sync_equal: bool
    peaks: dict[str, Peak]
    after: dict[str, dict[str, int]]
    timeline: list[tuple[float, int, str]]  # (step, cumulative bytes, event)

    @property
    def bytes_per_step(self) -> float:
        return self.train.bytes / self.steps

    @property
    def bytes_per_sync(self) -> float:
        return sum(s.bytes for s in self.syncs) / max(len(self.syncs), 1)

    @property
    def seconds_per_sync(self) -> float:
        return sum(s.seconds for s in self.syncs) / max(len(self.syncs), 1)


def run_mode(mode: str, dev: ms.Device, data: Data, folder: Path, *, steps: int,
             sync_every: int, seed: int = 0) -> ModeRun:
    """Workflows 1, 2 and 3 under ``mode`` on ``dev`` (see the module doc)."""
    timeline: list[tuple[float, int, str]] = [(0, 0, "start")]
    total = 0

    def mark(step: float, phase: Phase, event: str) -> None:
        nonlocal total
        total += phase.bytes
        timeline.append((step, total, event))

    # -- 1. convert and train ------------------------------------------------------------
    peak1 = Peak()
    original = build_model(seed)
    before_params = ms.params(original)
    before_values = host_values(original)
    peak1.sample([original])
    with measured("convert") as convert:
        model = ms.to_device(original, dev, mode=mode)
    mark(0, convert, "convert")
    peak1.sample([original, model])
    optimizer = adam(model)
    with measured("train") as train:
        for step in range(steps):
            train_step(model, optimizer, *data.batch(step))
    for step in range(1, steps + 1):  # nothing moved, so the curve is flat: one point a step
        timeline.append((step, total, "train"))
    peak1.sample([original, model], [optimizer])
    after1 = _live([original, model], [optimizer])

    # -- 2. save back to host -------------------------------------------------------------
    peak2 = Peak()
    path = folder / f"semantics-{mode}.safetensors"
    subject = original if mode == "wrap" else model  # what a user of each mode saves
    trained = host_values(model)
    with measured("save") as save_first:
        save(subject, path)
    mark(steps, save_first, "save")
    with measured("save again") as save_again:
        save(subject, path)
    mark(steps, save_again, "save again")
    reloaded = load(path)
    reload_equal = same_values(host_values(reloaded), trained)
    reload_same_graph = ms.graph_id(reloaded) == ms.graph_id(model)
    outcome, detail = _original_after(mode, original, model, before_params, before_values,
                                      trained)
    peak2.sample([original, model, reloaded], [optimizer])
    after2 = _live([original, model, reloaded], [optimizer])
    del reloaded

    # -- 3. keep two copies in step --------------------------------------------------------
    peak3 = Peak()
    with measured("host copy") as replica_setup:
        # wrap: the original *is* the host copy; copy and move make one of the same graph
        replica = original if mode == "wrap" else ms.to_host(model, mode="copy")
    mark(steps, replica_setup, "host copy")
    syncs: list[Phase] = []
    sync_equal = True
    for step in range(steps, 2 * steps):
        train_step(model, optimizer, *data.batch(step))
        if (step + 1 - steps) % sync_every == 0:
            with measured("sync") as phase:
                if mode == "wrap":
                    for p in ms.params(replica):  # just read it: a read pulls newer values
                        p.value  # noqa: B018
                else:
                    ms.sync(replica, model)
            replica(data.x_host)  # use the host copy (evaluate): it is current, nothing moves
            syncs.append(phase)
            mark(step + 1, phase, "sync")
            sync_equal &= same_values(host_values(replica), host_values(model))
        else:
            timeline.append((step + 1, total, "train"))
    with measured("evaluate") as evaluate:
        replica(data.x_host)
    sync_equal &= evaluate.bytes == 0
    peak3.sample([original, model, replica], [optimizer])
    after3 = _live([original, model, replica], [optimizer])
    return ModeRun(
        mode=mode, device=str(dev), param_bytes=sum(p.nbytes for p in ms.params(model)),
        convert=convert, train=train, steps=steps, original_after_training=outcome,
        original_detail=detail, save_first=save_first, save_again=save_again,
        file_bytes=path.stat().st_size, reload_equal=reload_equal,
        reload_same_graph=reload_same_graph,
        replica_setup=replica_setup, syncs=syncs, sync_equal=sync_equal,
        peaks={"train": peak1, "save": peak2, "sync": peak3},
        after={"train": after1, "save": after2, "sync": after3}, timeline=timeline)


def _live(models: list[Any], optimizers: list[Any]) -> dict[str, int]:
    from .measure import live_bytes

    return live_bytes(models, optimizers)


def _original_after(mode: str, original: Any, model: Any, before_params: list[Any],
                    before_values: list[Any], trained: list[Any]) -> tuple[str, str]:
    """What training the converted model did to the original, found by looking."""
    try:
        now = host_values(original)
    except ms.ModelSyncError as exc:
        same = all(a is b for a, b in zip(before_params, ms.params(model), strict=True))
        return (f"invalid: {type(exc).__name__}",
                "the converted model holds the very same Param objects"
                if same else "the converted model holds new Params")
    if same_values(now, trained):
        return "updated", "its values equal the trained model's"
    if same_values(now, before_values):
        return "unchanged", "its values are the initial ones"
    return "changed", "its values match neither the initial nor the trained ones"


def warm_up(dev: ms.Device, data: Data, folder: Path) -> None:
    """Run each operation once, unmeasured, so that first-call costs (imports, BLAS thread
    start-up) do not land on whichever mode happens to run first."""
    original = build_model(99)
    model = ms.to_device(original, dev, mode="copy")
    train_step(model, adam(model), *data.batch(0))
    save(model, folder / "warm-up.safetensors")
    load(folder / "warm-up.safetensors")(data.x_host)
    ms.sync(original, model)


def run_per_batch(dev: ms.Device, data: Data, *, steps: int, seed: int = 0
                  ) -> list[tuple[float, int, str]]:
    """The cost the original discussion feared for a wrapper that is always in step: the
    host model's weights pushed to the device before every batch and pulled back after it
    (a copy plus two syncs per step). Measured the same way, for the plot's reference line."""
    host = build_model(seed)
    with measured("convert") as convert:
        model = ms.to_device(host, dev, mode="copy")
    optimizer = adam(model)
    total = convert.bytes
    timeline: list[tuple[float, int, str]] = [(0, 0, "start"), (0, total, "convert")]
    for step in range(steps):
        with measured("step") as phase:
            ms.sync(model, host)
            train_step(model, optimizer, *data.batch(step))
            ms.sync(host, model)
        total += phase.bytes
        timeline.append((step + 1, total, "step"))
    return timeline
