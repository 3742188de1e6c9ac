"""Saving and loading: round trips, ties, graph identity, devices, load_into's checks and
all-or-nothing writes, optimizer state and exact resume, atomic writes, inspect, argument errors."""

from __future__ import annotations

import collections
import enum
import json
import os
import stat

import attrs
import numpy as np
import pytest
import safetensors.numpy as stnp
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.inspect_file import inspect_text
from modelsync.io import atomic, load, load_into, load_optimizer, read_metadata, save
from modelsync.transfers import copy_to


def mlp(seed: int = 0, dtype: str = "float32") -> ms.layers.Chain:
    return layers.Chain(layers.Dense(3, 5, "tanh", dtype=dtype, seed=seed),
                        layers.Dense(5, 2, dtype=dtype, seed=seed + 1))


def tied(seed: int = 0) -> ms.layers.Chain:
    """Dense(4, 4) twice with one weight, and a layer used twice: two kinds of sharing."""
    a, b = layers.Dense(4, 4, "relu", seed=seed), layers.Dense(4, 4, seed=seed + 1)
    b.weight = a.weight
    shared = layers.Dense(4, 4, "tanh", seed=seed + 2)
    return layers.Chain(a, shared, b, shared)


def values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def assert_same_values(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for path in a:
        assert a[path].dtype == b[path].dtype, path
        assert a[path].tobytes() == b[path].tobytes(), path


@ms.layer
@attrs.define(eq=False)
class Configured:
    """A user layer whose configuration uses every kind of value the codec keeps apart."""

    inner: object
    sizes: tuple
    table: dict
    scale: float
    label: str | None
    flags: list


def configured() -> Configured:
    return Configured(layers.Dense(2, 2, seed=3), (1, (2, 3)), {"a": [1, 2.5], "__b": None,
                      "c": (True,)}, float("inf"), None, [np.float32(0.5), np.int64(7)])


# -- round trips -------------------------------------------------------------------------------
def test_round_trip_keeps_values_paths_and_graph_id(tmp_path):
    model = mlp()
    path = tmp_path / "m.safetensors"
    save(model, path)
    again = load(path)
    assert_same_values(values(model), values(again))
    assert ms.graph_id(again) == ms.graph_id(model)
    assert ms.graph_id(again) != ms.graph_id(mlp())
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(model(x), again(x))
    assert [p.origin for p in ms.params(again)] == [p.origin for p in ms.params(model)]
    assert [p.name for p in ms.params(again)] == [p.name for p in ms.params(model)]


def test_file_opens_with_safetensors_numpy_as_ordinary_tensors(tmp_path):
    model = tied()
    path = tmp_path / "m.safetensors"
    save(model, path, optimizer=optim.Adam(ms.params(model)))
    tensors = stnp.load_file(path)
    named = ms.named_params(model)
    assert set(tensors) == set(named)  # tied weights stored once; no state before a step
    for name, p in named.items():
        assert np.array_equal(tensors[name], p.value)


def test_metadata_is_text_with_format_graph_aliases_and_origins(tmp_path):
    model = tied()
    path = tmp_path / "m.safetensors"
    save(model, path, metadata={"note": "hello"})
    length = int.from_bytes(path.read_bytes()[:8], "little")
    meta = json.loads(path.read_bytes()[8:8 + length])["__metadata__"]
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["modelsync.format"] == "1"
    assert meta["modelsync.graph_id"] == ms.graph_id(model)
    assert json.loads(meta["modelsync.aliases"]) == {"layers.2.weight": "layers.0.weight",
                                                      "layers.3.weight": "layers.1.weight",
                                                      "layers.3.bias": "layers.1.bias"}
    table = json.loads(meta["modelsync.params"])
    assert {k: v["origin"] for k, v in table.items()} == {
        k: p.origin for k, p in ms.named_params(model).items()}
    assert meta["user.note"] == "hello"
    assert read_metadata(path) == {"note": "hello"}


def test_ties_and_shared_layers_come_back_shared(tmp_path):
    model = tied()
    save(model, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    assert again.layers[2].weight is again.layers[0].weight
    assert again.layers[3] is again.layers[1]
    assert again.layers[2].bias is not again.layers[0].bias
    assert ms.graph_id(again) == ms.graph_id(model)
    assert len(ms.params(again)) == len(ms.params(model))


def test_configuration_values_keep_their_types(tmp_path):
    model = configured()
    save(model, tmp_path / "c.safetensors")
    again = load(tmp_path / "c.safetensors")
    assert again.sizes == (1, (2, 3)) and isinstance(again.sizes[1], tuple)
    assert again.table == {"a": [1, 2.5], "__b": None, "c": (True,)}
    assert again.scale == float("inf") and again.label is None
    assert type(again.flags[0]) is np.float32 and type(again.flags[1]) is np.int64
    assert ms.graph_id(again) == ms.graph_id(model)


def test_unsavable_configuration_is_a_save_error_naming_the_field(tmp_path):
    model = configured()
    model.label = object()
    with pytest.raises(ms.SaveError, match="label"):
        save(model, tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


class Size(enum.IntEnum):
    SMALL = 1


Pair = collections.namedtuple("Pair", "first second")


@pytest.mark.parametrize("change", ["int enum", "namedtuple config", "namedtuple of layers"])
def test_values_that_would_not_come_back_as_themselves_are_refused(tmp_path, change):
    model = configured()
    if change == "int enum":
        model.scale = Size.SMALL
    elif change == "namedtuple config":
        model.sizes = Pair(1, 2)
    else:
        model.inner = Pair(layers.Dense(2, 2), layers.Dense(2, 2))
    with pytest.raises(ms.SaveError, match="scale|sizes|inner"):
        save(model, tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dtypes_round_trip(tmp_path, dtype):
    model = mlp(dtype=dtype)
    save(model, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    assert_same_values(values(model), values(again))
    assert again.layers[0].dtype == dtype


def test_every_built_in_layer_and_a_model_without_params_round_trip(tmp_path):
    model = layers.Chain(layers.Embedding(10, 4, seed=0), layers.LayerNorm(4, eps=1e-3),
                         layers.Dropout(0.5), "gelu", layers.Dense(4, 2, bias=False, seed=1))
    save(model, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    assert_same_values(values(model), values(again))
    assert ms.graph_id(again) == ms.graph_id(model)
    assert again.layers[4].bias is None and again.layers[1].eps == 1e-3
    empty = layers.Chain("relu", layers.Dropout(0.1))
    save(empty, tmp_path / "e.safetensors")
    assert ms.graph_id(load(tmp_path / "e.safetensors")) == ms.graph_id(empty)


# -- devices -------------------------------------------------------------------------------------
def test_load_on_a_device_counts_one_h2d_copy_per_param(tmp_path, dev):
    model = mlp()
    save(model, tmp_path / "m.safetensors")
    with ms.track_transfers() as t:
        again = load(tmp_path / "m.safetensors", device=dev)
    assert all(p.device == dev for p in ms.params(again))
    total = sum(p.nbytes for p in ms.params(model))
    assert t.h2d_bytes == (0 if dev == ms.device("host") else total)
    assert t.d2h_bytes == 0
    assert_same_values(values(model), values(again))
    assert ms.graph_id(again) == ms.graph_id(model)


def test_device_model_saves_its_current_values(tmp_path, dev):
    save(mlp(), tmp_path / "a.safetensors")
    model = load(tmp_path / "a.safetensors", device=dev)
    x = copy_to(np.ones((4, 3), np.float32), dev, reason="test", what="data")
    y = copy_to(np.zeros((4, 2), np.float32), dev, reason="test", what="data")
    opt = optim.SGD(ms.params(model), lr=0.1)
    ms.backprop(model, losses.mse, x, y)
    opt.step()
    with ms.track_transfers() as t:
        save(model, tmp_path / "b.safetensors")
    assert t.d2h_bytes == (0 if dev == ms.device("host") else
                           sum(p.nbytes for p in ms.params(model)))
    assert_same_values(values(model), values(load(tmp_path / "b.safetensors")))


def test_wrapper_and_original_both_save_the_latest_values(tmp_path):
    original = mlp()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    x = ms.to_device(np.ones((4, 3), np.float32), "sim:1")
    y = ms.to_device(np.zeros((4, 2), np.float32), "sim:1")
    opt = optim.Momentum(ms.params(wrapper), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        ms.backprop(wrapper, losses.mse, x, y)
        opt.step()
    expected = values(wrapper)
    save(original, tmp_path / "o.safetensors")
    save(wrapper, tmp_path / "w.safetensors")
    for name in ("o", "w"):
        again = load(tmp_path / f"{name}.safetensors")
        assert_same_values(expected, values(again))
        assert ms.graph_id(again) == ms.graph_id(original) == ms.graph_id(wrapper)


def test_moved_model_cannot_be_saved(tmp_path):
    model = mlp()
    ms.to_device(model, "sim:1", mode="move")
    with pytest.raises(ms.MovedError):
        save(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- load_into -------------------------------------------------------------------------------------
def test_load_into_same_graph_on_a_device(tmp_path, dev):
    model = mlp()
    save(model, tmp_path / "m.safetensors")
    target = load(tmp_path / "m.safetensors", device=dev)
    for p in ms.params(target):
        p.assign(np.zeros(p.shape, dtype=str(to_numpy(p.value).dtype)))
    assert load_into(target, tmp_path / "m.safetensors") is target
    assert_same_values(values(model), values(target))


def test_load_into_a_converted_copy_on_a_device(tmp_path):
    model = mlp()
    save(model, tmp_path / "m.safetensors")
    target = ms.to_device(model, "sim:1")
    for p in ms.params(target):
        p.assign(np.zeros(p.shape, np.float32))
    load_into(target, tmp_path / "m.safetensors")
    assert_same_values(values(model), values(target))


def test_load_into_separately_built_model_needs_structure_check(tmp_path):
    save(mlp(seed=0), tmp_path / "m.safetensors")
    other = mlp(seed=10)
    before = values(other)
    with pytest.raises(ms.GraphMismatchError, match="check='structure'"):
        load_into(other, tmp_path / "m.safetensors")
    assert_same_values(before, values(other))
    load_into(other, tmp_path / "m.safetensors", check="structure")
    assert_same_values(values(load(tmp_path / "m.safetensors")), values(other))


def test_load_into_shape_mismatch_names_the_path_and_changes_nothing(tmp_path):
    save(mlp(), tmp_path / "m.safetensors")
    other = layers.Chain(layers.Dense(3, 5, "tanh", seed=0), layers.Dense(5, 3, seed=1))
    before = values(other)
    for check in ("graph", "structure"):
        with pytest.raises(ms.GraphMismatchError,
                           match=r"layers\.1\.weight: model \(3, 5\) float32 vs file \(2, 5\)"):
            load_into(other, tmp_path / "m.safetensors", check=check)
    assert_same_values(before, values(other))


def test_load_into_accepts_a_foreign_safetensors_file_by_structure(tmp_path):
    model = mlp()
    arrays = {name: np.full(p.shape, 0.25, np.float32)
              for name, p in ms.named_params(model).items()}
    stnp.save_file(arrays, tmp_path / "foreign.safetensors", metadata={"format": "np"})
    with pytest.raises(ms.LoadError, match="check='structure'"):
        load_into(model, tmp_path / "foreign.safetensors")
    with pytest.raises(ms.LoadError, match="not a modelsync file"):
        load(tmp_path / "foreign.safetensors")
    load_into(model, tmp_path / "foreign.safetensors", check="structure")
    assert_same_values(arrays, values(model))
    arrays["extra"] = np.zeros(2, np.float32)
    stnp.save_file(arrays, tmp_path / "extra.safetensors")
    with pytest.raises(ms.GraphMismatchError, match="extra"):
        load_into(model, tmp_path / "extra.safetensors", check="structure")


def test_load_into_under_a_transfer_guard_changes_nothing(tmp_path):
    save(mlp(seed=0), tmp_path / "m.safetensors")
    target = load(tmp_path / "m.safetensors", device="sim:1")
    for p in ms.params(target):
        p.assign(np.full(p.shape, 3.0, np.float32))
    before = values(target)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        load_into(target, tmp_path / "m.safetensors")
    assert_same_values(before, values(target))


def test_load_into_a_wrapped_original_reaches_the_wrapper(tmp_path):
    save(mlp(seed=0), tmp_path / "m.safetensors")
    original = load(tmp_path / "m.safetensors")
    expected = values(original)
    for p in ms.params(original):
        p.assign(np.zeros(p.shape, np.float32))
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    load_into(original, tmp_path / "m.safetensors")
    assert_same_values(expected, values(wrapper))


def test_load_into_rejects_a_bad_check(tmp_path):
    save(mlp(), tmp_path / "m.safetensors")
    with pytest.raises(ms.ArgumentError, match="check='shape'"):
        load_into(mlp(), tmp_path / "m.safetensors", check="shape")


# -- optimizer state and resume --------------------------------------------------------------------
RULES = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.05),
    "Momentum": lambda ps: optim.Momentum(ps, lr=0.05, momentum=0.9),
    "Adam": lambda ps: optim.Adam(ps, lr=0.01),
}


def _batches(dev, dtype, count):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        x = rng.standard_normal((8, 3)).astype(dtype)
        y = rng.standard_normal((8, 2)).astype(dtype)
        out.append((copy_to(x, dev, reason="test", what="data"),
                    copy_to(y, dev, reason="test", what="data")))
    return out


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        ms.backprop(model, losses.mse, x, y)
        opt.step()


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_is_bit_exact(tmp_path, dev, dtype, rule):
    save(mlp(seed=4, dtype=dtype), tmp_path / "init.safetensors")
    batches = _batches(dev, dtype, 6)
    reference = load(tmp_path / "init.safetensors", device=dev)
    _train(reference, RULES[rule](ms.params(reference)), batches)

    first = load(tmp_path / "init.safetensors", device=dev)
    opt = RULES[rule](ms.params(first))
    _train(first, opt, batches[:3])
    save(first, tmp_path / "ckpt.safetensors", optimizer=opt)

    resumed = load(tmp_path / "ckpt.safetensors", device=dev)
    new_opt = optim.SGD(ms.params(resumed), lr=1.0) if rule == "SGD" else RULES[rule](
        ms.params(resumed))
    assert load_optimizer(tmp_path / "ckpt.safetensors", new_opt) is new_opt
    if rule == "SGD":
        assert new_opt.lr == 0.05  # hyperparameters come back too
    _train(resumed, new_opt, batches[3:])
    assert_same_values(values(reference), values(resumed))
    assert ms.graph_id(resumed) == ms.graph_id(reference)


def test_optimizer_state_is_stored_as_tensors_and_metadata(tmp_path):
    model = mlp()
    opt = optim.Adam(ms.params(model), lr=0.01, betas=(0.8, 0.9))
    _train(model, opt, _batches(ms.device("host"), "float32", 2))
    save(model, tmp_path / "m.safetensors", optimizer=opt)
    tensors = stnp.load_file(tmp_path / "m.safetensors")
    state = opt.state_dict()
    for path, entry in state["state"].items():
        for name, array in entry.items():
            if isinstance(array, np.ndarray):
                assert np.array_equal(tensors[f"__optim__/{path}/{name}"], array)
    assert "optimizer state: Adam" in inspect_text(tmp_path / "m.safetensors")


def test_load_optimizer_without_state_or_of_another_type_is_a_load_error(tmp_path):
    model = mlp()
    save(model, tmp_path / "plain.safetensors")
    with pytest.raises(ms.LoadError, match="no optimizer state"):
        load_optimizer(tmp_path / "plain.safetensors", optim.Adam(ms.params(model)))
    opt = optim.Adam(ms.params(model))
    _train(model, opt, _batches(ms.device("host"), "float32", 1))
    save(model, tmp_path / "adam.safetensors", optimizer=opt)
    with pytest.raises(ms.LoadError, match="Adam"):
        load_optimizer(tmp_path / "adam.safetensors", optim.Momentum(ms.params(model), lr=0.1))
    with pytest.raises(ms.ArgumentTypeError, match="optimizer"):
        load_optimizer(tmp_path / "adam.safetensors", object())
    with pytest.raises(ms.ArgumentTypeError, match="optimizer"):
        save(model, tmp_path / "x.safetensors", optimizer="adam")


# -- atomic writes -----------------------------------------------------------------------------
def _failing(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


class _BrokenFile:
    """A temp file whose write stores half the bytes and then reports a full disk."""

    def __init__(self, real):
        self._real = real

    def write(self, data):
        self._real.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


@pytest.mark.parametrize("step", ["write", "fsync", "chmod", "replace"])
def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, step):
    path = tmp_path / "model.safetensors"
    save(mlp(seed=0), path)
    old = path.read_bytes()
    if step == "write":
        monkeypatch.setattr(atomic, "open", lambda fd, mode: _BrokenFile(open(fd, mode)),
                            raising=False)
    else:
        monkeypatch.setattr(atomic.os, step, _failing(OSError(5, "Input/output error")))
    with pytest.raises(ms.SaveError, match="model.safetensors") as info:
        save(mlp(seed=1), path)
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_an_interrupted_save_leaves_the_old_file_and_propagates(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save(mlp(seed=0), path)
    old = path.read_bytes()
    monkeypatch.setattr(atomic.os, "fsync", _failing(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save(mlp(seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_a_new_file_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    save(mlp(), path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    os.chmod(path, 0o640)
    save(mlp(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- inspect ---------------------------------------------------------------------------------------
def test_inspect_shows_architecture_graph_params_sizes_and_ties(tmp_path):
    model = tied()
    save(model, tmp_path / "m.safetensors", metadata={"epoch": "3"})
    text = inspect_text(tmp_path / "m.safetensors")
    assert ms.graph_id(model) in text
    assert "Chain(" in text and "Dense(in_features=4, out_features=4, activation='relu'" in text
    assert "layers.0.weight" in text and "(4, 4)" in text and "float32" in text and "64 B" in text
    assert "layers.2.weight -> layers.0.weight (tied)" in text
    assert "the layer at layers.1 (shared)" in text
    assert "total: 5 params, 44 values, 176 B" in text
    assert "optimizer state: none" in text
    assert "epoch: 3" in text


def test_inspect_a_foreign_file_lists_its_tensors(tmp_path):
    stnp.save_file({"w": np.zeros((2, 3), np.float32)}, tmp_path / "f.safetensors")
    text = inspect_text(tmp_path / "f.safetensors")
    assert "not written by modelsync" in text and "(2, 3)" in text and "24 B" in text


# -- argument errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [None, 3, b"m.safetensors", ["m"], ""])
def test_bad_path_types_are_type_errors(bad):
    model = mlp()
    calls = [lambda: save(model, bad), lambda: load(bad), lambda: load_into(model, bad),
             lambda: load_optimizer(bad, optim.SGD(ms.params(model), lr=0.1)),
             lambda: inspect_text(bad)]
    for call in calls:
        with pytest.raises(ms.ArgumentTypeError, match="path"):
            call()


def test_directories_and_missing_folders_name_the_path(tmp_path):
    model = mlp()
    with pytest.raises(ms.SaveError, match="is a directory"):
        save(model, tmp_path)
    with pytest.raises(ms.SaveError, match="does not exist"):
        save(model, tmp_path / "nope" / "m.safetensors")
    with pytest.raises(ms.LoadError, match="is a directory"):
        load(tmp_path)
    with pytest.raises(ms.LoadError, match="no such file"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(ms.LoadError, match="does not exist"):
        load_into(model, tmp_path / "nope" / "m.safetensors")


def test_bad_arguments_name_themselves(tmp_path):
    model = mlp()
    with pytest.raises(ms.ArgumentTypeError, match="model"):
        save("model", tmp_path / "m.safetensors")
    with pytest.raises(ms.ArgumentTypeError, match=r"metadata\['n'\]"):
        save(model, tmp_path / "m.safetensors", metadata={"n": 3})
    with pytest.raises(ms.ArgumentTypeError, match="metadata"):
        save(model, tmp_path / "m.safetensors", metadata=["a"])
    save(model, tmp_path / "m.safetensors")
    with pytest.raises(ms.DeviceError):
        load(tmp_path / "m.safetensors", device="tpu")
    with pytest.raises(ms.ArgumentTypeError, match="model"):
        load_into(42, tmp_path / "m.safetensors")


# -- regressions found in review ----------------------------------------------------------------
@ms.layer
class IoTestScalar:
    s: ms.Param

    def forward(self, x, ctx):
        return x, lambda dy: dy


def test_a_zero_dimensional_param_round_trips(tmp_path):
    path = tmp_path / "scalar.safetensors"
    ms.save(IoTestScalar(ms.Param(np.float32(2.5))), path)
    loaded = ms.load(path)
    assert loaded.s.shape == () and float(loaded.s.value) == 2.5


def test_an_empty_chain_round_trips(tmp_path):
    path = tmp_path / "empty.safetensors"
    ms.save(ms.layers.Chain(), path)
    assert len(ms.load(path).layers) == 0


def test_optimizer_state_of_a_zero_dimensional_param_round_trips(tmp_path):
    model = IoTestScalar(ms.Param(np.float32(2.0)))
    opt = ms.optim.Adam(ms.params(model), lr=0.1)
    model.s.grad = np.ones((), np.float32)
    opt.step()
    path = tmp_path / "scalar.safetensors"
    ms.save(model, path, optimizer=opt)
    again = ms.optim.Adam(ms.params(ms.load(path)), lr=0.1)
    ms.load_optimizer(path, again)
    assert again.state_dict()["state"]["s"]["exp_avg"].shape == ()
