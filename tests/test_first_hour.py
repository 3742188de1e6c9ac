"""Issue 19, a user's first hour: no silent no-op step, a moved-from model that refuses every
use, a quiet command line on a broken pipe, and messages that say what a newcomer needs."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import modelsync as ms
from modelsync import layers, losses, optim


def mlp(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.Dense(3, 4, "relu", seed=seed), layers.Dense(4, 2, seed=seed + 1))


def batch(dev: ms.Device | str = "host"):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.integers(0, 2, 5)
    return ms.to_device(x, dev), ms.to_device(y, dev)


# -- 1. a step that would change nothing raises --------------------------------------------
@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.ClipNorm(ps, 1.0),
    lambda ps: optim.chain(optim.WeightDecay(ps, 1e-4), optim.Momentum(ps, lr=0.1)),
])
def test_an_optimizer_of_the_host_model_refuses_a_step_after_a_backprop_of_the_copy(make):
    model = mlp()
    opt = make(ms.params(model))  # made before the copy: the guide's loop, the classic slip
    gpu = ms.to_device(model, "sim:1")
    before = [p.value.copy() for p in ms.params(model)]
    opt.zero_grad()
    ms.backprop(gpu, losses.cross_entropy, *batch("sim:1"))
    with pytest.raises(ms.ArgumentError) as info:
        opt.step()
    message = str(info.value)
    assert "no" in message and "gradient" in message
    assert "Chain on host" in message  # which model its Params belong to
    assert "Params of its own" in message and "ms.params(gpu_model)" in message
    assert "layers.0.weight" in message
    for p, old in zip(ms.params(model), before, strict=True):
        np.testing.assert_array_equal(p.value, old)  # nothing changed


def test_a_step_with_no_backprop_at_all_raises_and_one_with_some_gradients_steps():
    model = mlp()
    opt = optim.SGD(ms.params(model), lr=0.1)
    opt.zero_grad()
    with pytest.raises(ms.ArgumentError, match="SGD.step"):
        opt.step()
    ps = ms.params(model)
    ps[2].grad = np.ones(ps[2].shape, np.float32)  # one Param with a gradient: torch's rule
    before = [p.value.copy() for p in ps]
    opt.step()
    np.testing.assert_array_equal(ps[0].value, before[0])  # skipped: no gradient
    np.testing.assert_allclose(ps[2].value, before[2] - 0.1)


def test_the_loop_bound_to_the_copy_trains():
    model = mlp()
    gpu = ms.to_device(model, "sim:1")
    opt = optim.SGD(ms.params(gpu), lr=0.1)
    opt.zero_grad()
    ms.backprop(gpu, losses.cross_entropy, *batch("sim:1"))
    opt.step()  # no error: its Params have gradients


# -- 2. a moved-from model refuses everything ---------------------------------------------
def test_a_moved_from_model_refuses_indexing_attributes_iteration_and_len():
    orig = mlp()
    inner = orig[0]  # a sublayer held before the move
    moved = ms.to_device(orig, "sim:1", mode="move")
    uses = {
        "index": lambda: orig[0],
        "weight.value": lambda: orig[0].weight.value,
        "assign": lambda: orig[0].weight.assign(np.zeros((4, 3), np.float32)),
        "layers": lambda: orig.layers,
        "iter": lambda: list(orig),
        "len": lambda: len(orig),
        "inner.weight": lambda: inner.weight,
        "inner.assign": lambda: inner.weight.assign(np.zeros((4, 3), np.float32)),
        "set": lambda: setattr(inner, "bias", None),
        "forward": lambda: inner.forward,
        "deepcopy": lambda: copy.deepcopy(orig),
    }
    for name, use in uses.items():
        with pytest.raises(ms.MovedError, match="moved to sim:1") as info:
            use()
        assert "to_device returned" in str(info.value), name
    assert "moved to sim:1" in repr(orig)  # repr still works (a debugger, a traceback)
    assert isinstance(orig, layers.Chain)
    # the moved Params themselves are the new model's, and stay valid
    assert ms.params(moved)[0].value.shape == (4, 3)
    ms.params(moved)[1].assign(np.ones(4, np.float32))
    x, _ = batch("sim:1")
    assert tuple(moved(x).shape) == (5, 2)


def test_moving_one_model_leaves_its_siblings_attributes_alone():
    a, b = mlp(), mlp()
    ms.to_device(a, "sim:1", mode="move")
    assert b[0].weight.shape == (4, 3) and len(b) == 2  # same classes, not moved
    assert type(b) is layers.Chain


# -- 4. the command line ---------------------------------------------------------------------
def saved_model(tmp_path) -> str:
    path = str(tmp_path / "model.safetensors")
    ms.save(mlp(), path)
    return path


@pytest.mark.parametrize("command", [["inspect", "FILE"],
                                     ["demo", "--device", "host", "--no-progress"]])
def test_a_closed_pipe_ends_the_command_quietly(tmp_path, command):
    """`modelsync inspect FILE | head -3`: the reader is gone before the output is written;
    the command ends with no message, with the status of a SIGPIPE (as `seq 1e9 | head`)."""
    import os
    import subprocess
    import sys

    argv = [saved_model(tmp_path) if a == "FILE" else a for a in command]
    read, write = os.pipe()
    os.close(read)  # (closed before the command starts: every write fails, no race)
    try:
        done = subprocess.run([sys.executable, "-m", "modelsync", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.stderr == ""  # not "modelsync: error: [Errno 32] Broken pipe"
    assert done.returncode == 128 + 13


def test_ranks_help_says_it_launches_mpiexec():
    from modelsync.cli import build_parser

    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    (ranks,) = [a for a in demo._actions if "--ranks" in a.option_strings]
    assert "launches mpiexec" in ranks.help and "yourself" not in ranks.help


def test_the_distributed_demo_says_1_rank_and_one_unit_system(capsys):
    from modelsync.cli import main

    assert main(["demo", "--mode", "copy", "--epochs", "1", "--device", "host",
                 "--no-progress", "--distributed"]) == 0
    out = capsys.readouterr().out
    assert "1 rank" in out and "1 ranks" not in out
    assert "bytes per step" not in out  # "0 B per step", as the table's "37.5 KiB"
    assert "0 B per step host/device" in out


# -- 5. messages -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["host", "sim:1"])
def test_cross_entropy_names_the_labels_dtype_as_host_does(spec):
    logits = ms.to_device(np.zeros((2, 3), np.float32), spec)
    labels = ms.to_device(np.zeros(2, np.float32), spec)
    with pytest.raises(ms.ArgumentError) as info:
        losses.cross_entropy(logits, labels)
    assert "labels have dtype float32," in str(info.value)
    assert "array_api_strict" not in str(info.value)


def test_to_host_names_itself_as_the_reason_of_its_transfers():
    gpu = ms.to_device(mlp(), "sim:1")
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError) as info:
        ms.to_host(gpu)
    assert "to_host(mode='copy')" in str(info.value)
    assert "to_device" not in str(info.value)
    with ms.track_transfers() as t:
        ms.to_host(gpu, mode="move")
    assert {e.reason for e in t.events} == {"to_host(mode='move')"}
    with ms.track_transfers() as t:
        ms.to_device(mlp(), "sim:1")
    assert {e.reason for e in t.events} == {"to_device(mode='copy')"}


def test_the_docs_stand_alone_without_shared_origin():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("docs/*.md"), root / "README.md", root / "semantics" / "modes.md"]:
        assert "shared/origin" not in path.read_text(encoding="utf-8"), path
    concepts = (root / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert "FluxML/Flux.jl pull request #26" in concepts
    assert "https://github.com/FluxML/Flux.jl/pull/26" in concepts
    assert "wrapper" in concepts and "deep copy" in concepts and "ownership" in concepts


# -- 6. a newcomer's typical mistakes: one clear error naming argument, value, expectation ---
def mistakes(tmp_path):
    model = mlp()
    opt = optim.SGD(ms.params(model), lr=0.1)
    path = saved_model(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    x, y = batch()
    return {
        "train(optimizer=model)": (lambda: ms.train(model, [(x, y)], losses.cross_entropy,
                                                    model),
                                   TypeError, ["optimizer is a model (Chain)",
                                               "optim.Adam(ms.params(model))"]),
        "train(model=optimizer)": (lambda: ms.train(opt, [(x, y)], losses.cross_entropy, opt),
                                   TypeError, ["model is an optimizer (SGD)",
                                               "pass the model itself"]),
        "params(optimizer)": (lambda: ms.params(opt), TypeError,
                              ["model is an optimizer (SGD)"]),
        "sync(dst, params)": (lambda: ms.sync(model, ms.params(model)), TypeError,
                              ["src is a list of Params", "pass the model itself"]),
        "save(optimizer=model)": (lambda: ms.save(model, str(tmp_path / "a.safetensors"),
                                                  optimizer=model),
                                  TypeError, ["optimizer is a model (Chain)"]),
        "load_optimizer(path, model)": (lambda: ms.load_optimizer(path, model), TypeError,
                                        ["optimizer is a model (Chain)"]),
        "load_optimizer(opt, path)": (lambda: ms.load_optimizer(opt, path), TypeError,
                                      ["optimizer is a str",
                                       "ms.load_optimizer(path, optimizer)"]),
        "save(path, model)": (lambda: ms.save(path, model), TypeError,
                              ["path is a model (Chain)", "ms.save(model, path)"]),
        "load(model)": (lambda: ms.load(model), TypeError, ["path is a model (Chain)"]),
        "to_device([models])": (lambda: ms.to_device([model, mlp()], "sim:1"), TypeError,
                                ["model is a list of models", "one model at a time"]),
        "save(directory)": (lambda: ms.save(model, str(folder)), ms.SaveError,
                            [str(folder), "is a directory"]),
        "load(directory)": (lambda: ms.load(str(folder)), ms.LoadError,
                            [str(folder), "is a directory"]),
        "load_into(directory)": (lambda: ms.load_into(model, str(folder)), ms.LoadError,
                                 ["is a directory"]),
        "to_device(wrong device)": (lambda: ms.to_device(model, "gpu"), ms.DeviceError,
                                    ["'gpu'", "Available"]),
        "model(x on another device)": (lambda: model(batch("sim:1")[0]),
                                       ms.DeviceMismatchError, ["sim:1", "host", "layers.0"]),
        "batches(model)": (lambda: ms.batches(model, batch_size=2), TypeError,
                           ["arrays[0] is a Chain"]),
    }


def test_every_typical_mistake_is_one_clear_error(tmp_path):
    for name, (call, error, words) in mistakes(tmp_path).items():
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, ms.ModelSyncError), name
        message = str(info.value)
        for word in words:
            assert word in message, (name, message)
        assert "Chain(layers=[" not in message, (name, message)  # no model repr as a "value"
