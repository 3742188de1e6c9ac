"""Small experiments for the questions the workflows do not answer on their own: where the
optimizer state lives, which models can be synced, whether tied weights stay tied, and how
bad hyperparameters are refused."""

from __future__ import annotations

from typing import Any

import attrs

import modelsync as ms
from modelsync import layers
from modelsync.devices import device_of, is_array

from .common import Data, adam, build_model, train_step
from .measure import Phase, measured


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def state_devices(optimizer: Any) -> list[str]:
    """The devices the optimizer's state arrays are on."""
    found = {str(device_of(v)) for state in optimizer.state.values()
             for v in state.values() if is_array(v)}
    return sorted(found)


@attrs.frozen
class StateProbe:
    """Where optimizer state lives, per mode, and what a move does to it."""

    per_mode: dict[str, list[str]]  # mode -> devices of the converted model's Adam state
    before_move: list[str]  # a host-trained Adam's state devices
    after_move: list[str]  # the same optimizer object after to_device(mode="move") + 1 step
    move_step: Phase  # the first step after the move: the state follows, counted as "state"
    later_step: Phase  # the step after that
    state_dict_keys: list[str]
    state_dict_phase: Phase


def probe_state(modes: tuple[str, ...], dev: ms.Device, data: Data) -> StateProbe:
    per_mode = {}
    for mode in modes:
        model = ms.to_device(build_model(3), dev, mode=mode)
        opt = adam(model)
        train_step(model, opt, *data.batch(0))
        per_mode[mode] = state_devices(opt)
    host_model = build_model(4)
    opt = adam(host_model)
    x_host, y_host = data.x_host[:32], data.y_host[:32]
    train_step(host_model, opt, x_host, y_host)
    before = state_devices(opt)
    moved = ms.to_device(host_model, dev, mode="move")
    with measured("first step after move") as move_step:
        train_step(moved, opt, *data.batch(0))
    with measured("next step") as later_step:
        train_step(moved, opt, *data.batch(1))
    with measured("state_dict") as sd_phase:
        sd = opt.state_dict()
    return StateProbe(per_mode, before, state_devices(opt), move_step, later_step,
                      list(sd["state"]), sd_phase)


@attrs.frozen
class SyncProbe:
    """Which pairs of models ms.sync accepts."""

    same_graph: str  # "ok" or the error
    other_graph: str  # same architecture, built separately, check="graph"
    other_graph_structure: str  # the same with check="structure"
    other_shape: str  # a different width, check="structure"
    soft_update: str  # tau=0.5
    graph_ids_equal: dict[str, bool]  # mode -> graph_id(converted) == graph_id(original)


def _attempt(action: Any) -> str:
    try:
        with measured("sync") as phase:
            action()
    except ms.ModelSyncError as exc:
        return _one_line(exc)
    from .report import format_bytes

    return f"ok ({format_bytes(phase.bytes)} moved)"


def probe_sync(modes: tuple[str, ...], dev: ms.Device) -> SyncProbe:
    original = build_model(5)
    trained = ms.to_device(original, dev, mode="copy")
    stranger = build_model(5)  # same architecture and even the same seed, another graph
    narrow = build_model(5, hidden=64)
    ids = {}
    for mode in modes:
        base = build_model(6)
        gid = ms.graph_id(base)
        ids[mode] = ms.graph_id(ms.to_device(base, dev, mode=mode)) == gid
    return SyncProbe(
        same_graph=_attempt(lambda: ms.sync(original, trained)),
        other_graph=_attempt(lambda: ms.sync(stranger, trained)),
        other_graph_structure=_attempt(lambda: ms.sync(stranger, trained, check="structure")),
        other_shape=_attempt(lambda: ms.sync(narrow, trained, check="structure")),
        soft_update=_attempt(lambda: ms.sync(original, trained, tau=0.5)),
        graph_ids_equal=ids)


def probe_ties(modes: tuple[str, ...], dev: ms.Device) -> dict[str, bool]:
    """Per mode: does a model using one layer twice keep it shared after conversion?"""
    result = {}
    for mode in modes:
        shared = layers.Dense(16, 16, "tanh", seed=1)
        model = layers.Chain(layers.Dense(64, 16, seed=2), shared, shared,
                             layers.Dense(16, 10, seed=3))
        count = len(ms.params(model))
        converted = ms.to_device(model, dev, mode=mode)
        result[mode] = (converted.layers[1] is converted.layers[2]
                        and len(ms.params(converted)) == count)
    return result


def probe_ranges() -> list[str]:
    """The errors bad hyperparameters raise (the discussion's @restrict_range)."""
    from modelsync import optim

    ps = ms.params(build_model(0))
    found = []
    for kwargs in ({"lr": -0.1}, {"betas": (1.5, 0.999)}, {"eps": 0.0}):
        try:
            optim.Adam(ps, **kwargs)
        except (ValueError, TypeError) as exc:
            found.append(f"optim.Adam(ps, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
                         f" → {_one_line(exc)}")
        else:
            found.append(f"optim.Adam(ps, {kwargs}) was accepted")
    return found
