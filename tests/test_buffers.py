"""Buffers (state that is not trained) and the rule each operation follows for them
(SPEC "State that is not trained (buffers)"), on host and sim:1 (and cuda:0 with a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, optim
from modelsync.devices import dtype_name
from modelsync.tree import structure


def net(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.Dense(4, 3, seed=seed), layers.BatchNorm(3), layers.ReLU(),
                        layers.Dense(3, 2, seed=seed + 1))


def batch(rng, n: int = 8):
    return (rng.normal(size=(n, 4)).astype(np.float32) * 2 + 1,
            rng.integers(0, 2, size=n))


def train_steps(model, rng, dev, steps: int = 2) -> None:
    opt = optim.SGD(ms.params(model), lr=0.1)
    for _ in range(steps):
        x, y = batch(rng)
        opt.zero_grad()
        ms.backprop(model, ms.losses.cross_entropy, ms.to_device(x, dev), ms.to_device(y, dev))
        opt.step()


def host_buffers(model) -> dict[str, np.ndarray]:
    return {k: to_numpy(b.value) for k, b in ms.named_buffers(model).items()}


# -- the core ---------------------------------------------------------------------------------
def test_buffers_are_listed_apart_from_params_and_no_optimizer_sees_them():
    model = net()
    assert list(ms.named_buffers(model)) == [
        "layers.1.running_mean", "layers.1.running_var", "layers.1.num_batches_tracked"]
    assert all(isinstance(b, ms.Buffer) for b in ms.buffers(model))
    assert not any(isinstance(p, ms.Buffer) for p in ms.params(model))
    assert "layers.1.weight" in ms.named_params(model)
    assert ms.named_buffers(model)["layers.1.num_batches_tracked"].dtype == np.int64
    assert ms.named_buffers(model)["layers.1.num_batches_tracked"].is_counter


def test_a_training_step_updates_the_buffers_and_the_optimizer_leaves_them(rng):
    model = net()
    before = host_buffers(model)
    train_steps(model, rng, "host", steps=3)
    after = host_buffers(model)
    assert int(after["layers.1.num_batches_tracked"]) == 3
    assert not np.array_equal(before["layers.1.running_mean"], after["layers.1.running_mean"])
    with pytest.raises(ms.ArgumentTypeError, match="not trained"):
        ms.buffers(model)[0].accumulate_grad(np.zeros(3, np.float32))
    assert ms.buffers(model)[0].grad is None


def test_buffer_field_refuses_a_param_and_param_field_refuses_a_buffer():
    bn = layers.BatchNorm(3)
    with pytest.raises(ms.ArgumentTypeError, match="running_mean"):
        bn.running_mean = ms.Param(np.zeros(3, np.float32))
    with pytest.raises(ms.ArgumentTypeError, match="weight"):
        bn.weight = ms.Buffer(np.ones(3, np.float32))


@pytest.mark.parametrize("value, error, words", [
    (np.zeros(4, np.float32), ms.ArgumentError, "shape \\(4,\\)"),
    (np.zeros(3, np.float64), ms.ArgumentError, "dtype float64"),
    ("zeros", ms.ArgumentTypeError, "str"),
])
def test_assigning_a_wrong_array_to_a_buffer_names_the_path_and_changes_nothing(
        value, error, words):
    bn = layers.BatchNorm(3)
    with pytest.raises(error, match=words) as info:
        bn.running_mean = value
    assert "BatchNorm.running_mean" in str(info.value)
    assert np.array_equal(bn.running_mean.value, np.zeros(3))


def test_a_counter_given_floats_is_refused_naming_it():
    bn = layers.BatchNorm(3)
    with pytest.raises(ms.ArgumentTypeError, match="num_batches_tracked.*counter.*float64"):
        bn.num_batches_tracked = np.asarray(2.0)
    bn.num_batches_tracked = np.asarray(5, dtype=np.int64)  # in place, same Buffer
    assert int(bn.num_batches_tracked.value) == 5


def test_a_buffer_on_another_device_is_refused():
    bn = ms.to_device(layers.BatchNorm(3), "sim:1")
    with pytest.raises(ms.DeviceMismatchError, match="running_var.*host.*sim:1"):
        bn.running_var = np.ones(3, np.float32)


def test_a_buffer_assigned_in_place_keeps_its_identity():
    bn = layers.BatchNorm(3)
    held = bn.running_var
    bn.running_var = np.full(3, 2.0, np.float32)
    assert bn.running_var is held and np.all(held.value == 2.0)


# -- conversions --------------------------------------------------------------------------------
def test_copy_copies_buffers_exactly_and_independently(dev, rng):
    model = net()
    train_steps(model, rng, "host")
    copy = ms.to_device(model, dev)
    assert {k: b.device for k, b in ms.named_buffers(copy).items()} == {
        k: dev for k in ms.named_buffers(model)}
    got = host_buffers(copy)
    for k, v in host_buffers(model).items():
        assert np.array_equal(got[k], v) and got[k].dtype == v.dtype
    train_steps(copy, rng, dev)
    assert int(host_buffers(model)["layers.1.num_batches_tracked"]) == 2
    assert int(host_buffers(copy)["layers.1.num_batches_tracked"]) == 4
    assert ms.graph_id(copy) == ms.graph_id(model)


def test_copy_of_buffers_is_one_transfer_per_dtype(dev):
    model = layers.Chain(layers.BatchNorm(3), layers.BatchNorm(5))
    with ms.track_transfers() as t:
        ms.to_device(model, dev)
    # float32 Params, float32 Buffers, int64 counters: one transfer each (none on the host)
    assert t.count == (0 if dev.kind == "host" else 3)
    assert t.bytes == (0 if dev.kind == "host" else 4 * 16 + 4 * 16 + 8 * 2)


def test_move_takes_the_buffers_along(dev, rng):
    model = net()
    train_steps(model, rng, "host")
    held = ms.buffers(model)
    values = host_buffers(model)
    moved = ms.to_device(model, dev, mode="move")
    assert ms.buffers(moved) == held  # the same Buffer objects, re-homed
    assert all(b.device == dev for b in held)
    for k, v in host_buffers(moved).items():
        assert np.array_equal(v, values[k])
    with pytest.raises(ms.MovedError):
        ms.named_buffers(model)


def test_to_host_and_detach_treat_buffers_as_params(dev, rng):
    model = ms.to_device(net(), dev)
    train_steps(model, rng, dev)
    back = ms.to_host(model)
    assert all(b.device == ms.device("host") for b in ms.buffers(back))
    assert host_buffers(back) .keys() == host_buffers(model).keys()
    for k, v in host_buffers(model).items():
        assert np.array_equal(host_buffers(back)[k], v)


def test_a_wrapper_trains_its_buffers_moving_nothing_and_the_original_reads_them(dev, rng):
    original = net()
    wrapper = ms.to_device(original, dev, mode="wrap")
    opt = optim.SGD(ms.params(wrapper), lr=0.1)
    data = [tuple(ms.to_device(a, dev) for a in batch(rng)) for _ in range(3)]
    with ms.track_transfers() as t:
        for x, y in data:
            opt.zero_grad()
            ms.backprop(wrapper, ms.losses.cross_entropy, x, y)
            opt.step()
    assert t.bytes == 0
    want = host_buffers(wrapper)
    assert int(want["layers.1.num_batches_tracked"]) == 3
    with ms.track_transfers() as t:
        got = {k: np.array(b.value) for k, b in ms.named_buffers(original).items()}
        again = {k: np.array(b.value) for k, b in ms.named_buffers(original).items()}
    for k in want:
        assert np.array_equal(got[k], want[k]) and np.array_equal(again[k], want[k])
    if dev.kind != "host":
        assert t.count == 3  # each buffer pulled once, lazily
    with pytest.raises(ValueError, match="read-only"):
        ms.buffers(original)[0].value[...] = 0
    ms.detach(wrapper)
    assert np.array_equal(to_numpy(ms.buffers(original)[0].value), want["layers.1.running_mean"])
    ms.buffers(original)[0].value[...] = 0  # writable again


def test_to_host_of_a_wrapper_brings_the_buffers_back(dev, rng):
    original = net()
    wrapper = ms.to_device(original, dev, mode="wrap")
    train_steps(wrapper, rng, dev)
    assert ms.to_host(wrapper) is original
    assert int(ms.named_buffers(original)["layers.1.num_batches_tracked"].value) == 2


# -- sync ---------------------------------------------------------------------------------------
def pair(dev, rng):
    src = net()
    train_steps(src, rng, "host", steps=3)
    dst = ms.to_device(src, dev)
    train_steps(dst, rng, dev, steps=1)
    return dst, src


def test_hard_sync_copies_buffers_with_the_params(dev, rng):
    dst, src = pair(dev, rng)
    ms.sync(dst, src)
    for k, v in host_buffers(src).items():
        assert np.array_equal(host_buffers(dst)[k], v)


def test_soft_sync_copies_statistics_by_default(dev, rng):
    dst, src = pair(dev, rng)
    w_before = to_numpy(ms.params(dst)[0].value)
    ms.sync(dst, src, tau=0.5)
    for k, v in host_buffers(src).items():
        assert np.array_equal(host_buffers(dst)[k], v)
    w = 0.5 * to_numpy(ms.params(src)[0].value) + 0.5 * w_before
    np.testing.assert_allclose(to_numpy(ms.params(dst)[0].value), w, rtol=1e-6)


def test_soft_sync_lerp_blends_floating_buffers_and_copies_counters(dev, rng):
    dst, src = pair(dev, rng)
    before = host_buffers(dst)
    ms.sync(dst, src, tau=0.25, buffers="lerp")
    got, theirs = host_buffers(dst), host_buffers(src)
    for k in ("layers.1.running_mean", "layers.1.running_var"):
        np.testing.assert_allclose(got[k], 0.25 * theirs[k] + 0.75 * before[k], rtol=1e-6)
    assert int(got["layers.1.num_batches_tracked"]) == 3


def test_soft_sync_keep_leaves_the_buffers(dev, rng):
    dst, src = pair(dev, rng)
    before = host_buffers(dst)
    ms.sync(dst, src, tau=0.5, buffers="keep")
    for k, v in before.items():
        assert np.array_equal(host_buffers(dst)[k], v)


def test_sync_buffers_rule_is_checked_naming_it(rng):
    dst, src = pair("host", rng)
    before = host_buffers(dst)
    with pytest.raises(ms.ArgumentError, match="buffers='average'"):
        ms.sync(dst, src, tau=0.5, buffers="average")
    assert host_buffers(dst)["layers.1.running_mean"].tolist() == before[
        "layers.1.running_mean"].tolist()


def test_sync_into_a_wrapper_hands_the_buffers_over(dev, rng):
    original = net()
    wrapper = ms.to_device(original, dev, mode="wrap")
    src = net(seed=5)
    train_steps(src, rng, "host", steps=4)
    ms.sync(original, src, check="structure")
    assert int(ms.named_buffers(wrapper)["layers.1.num_batches_tracked"].value) == 4
    ms.detach(wrapper)


@pytest.mark.parametrize("other, words", [
    (lambda: layers.Chain(layers.Dense(4, 3), layers.BatchNorm(3, track_running_stats=False),
                          layers.ReLU(), layers.Dense(3, 2)),
     "layers.1.running_mean: only dst has this buffer"),
    (lambda: layers.Chain(layers.Dense(4, 3), layers.BatchNorm(3, dtype="float64"),
                          layers.ReLU(), layers.Dense(3, 2)),
     "layers.1.running_mean: dst buffer \\(3,\\) float32 vs src buffer \\(3,\\) float64"),
])
def test_sync_with_a_missing_or_different_buffer_is_a_named_mismatch(other, words, rng):
    dst = net()
    before = {k: np.array(p.value) for k, p in ms.named_params(dst).items()}
    with pytest.raises(ms.GraphMismatchError, match=words):
        ms.sync(dst, other(), check="structure")
    for k, v in before.items():
        assert np.array_equal(ms.named_params(dst)[k].value, v)


def test_buffers_are_part_of_the_structure_and_the_graph_id():
    assert ("layers.1.num_batches_tracked", (), "int64") in structure(net())
    a = layers.BatchNorm(3)
    b = layers.BatchNorm(3, track_running_stats=False)
    assert ms.graph_id(a) != ms.graph_id(b)
    assert ms.graph_id(ms.to_device(a, "sim:1")) == ms.graph_id(a)


# -- save, load, inspect ------------------------------------------------------------------------
def test_save_and_load_restore_buffers_exactly(dev, rng, tmp_path):
    model = ms.to_device(net(), dev)
    train_steps(model, rng, dev, steps=3)
    path = tmp_path / "m.safetensors"
    ms.save(model, path)
    back = ms.load(path, device=dev)
    assert ms.graph_id(back) == ms.graph_id(model)
    assert all(b.device == dev for b in ms.buffers(back))
    want = host_buffers(model)
    for k, v in host_buffers(back).items():
        assert np.array_equal(v, want[k]) and v.dtype == want[k].dtype
    x = ms.to_device(batch(rng)[0], dev)
    assert np.array_equal(to_numpy(back(x)), to_numpy(model(x)))  # evaluation reads them


def test_the_file_opens_as_ordinary_tensors_with_the_buffers(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "m.safetensors"
    ms.save(net(), path)
    tensors = load_file(str(path))
    assert tensors["layers.1.num_batches_tracked"].dtype == np.int64
    assert tensors["layers.1.running_var"].tolist() == [1.0, 1.0, 1.0]


def test_inspect_lists_buffers_apart_from_params(tmp_path):
    from modelsync.inspect_file import inspect_text

    path = tmp_path / "m.safetensors"
    ms.save(net(), path)
    text = inspect_text(path)
    params, buffers = text.split("buffers (not trained):")
    assert "layers.1.weight" in params and "running_mean" not in params.split("params:")[1]
    assert "layers.1.num_batches_tracked  ()     int64" in buffers
    assert "total: 3 buffers" in buffers


def test_a_model_saved_without_batchnorm_has_no_buffer_table(tmp_path):
    from modelsync.io.files import read

    path = tmp_path / "m.safetensors"
    ms.save(layers.Dense(2, 2), path)
    assert "modelsync.buffers" not in read(path, header_only=True).metadata


def _edit(path, change):
    """Rewrite the file at ``path`` with ``change(tensors, metadata)`` applied, as a file
    edited by hand: without any checksum entry (files without one still load), so what the
    test changed is what the loader finds."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in meta.items()
            if not any(word in k.lower() for word in ("checksum", "digest", "hash", "crc"))}
    change(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _rewrite(path, change):
    """``_edit`` of the file's Buffer table: ``change(tensors, table)``."""
    import json

    def edit(tensors, meta):
        table = json.loads(meta["modelsync.buffers"])
        change(tensors, table)
        meta["modelsync.buffers"] = json.dumps(table)

    _edit(path, edit)


@pytest.mark.parametrize("change, words", [
    (lambda t, table: t.pop("layers.1.running_var"),
     "Buffer 'layers.1.running_var' of the architecture has no tensor"),
    (lambda t, table: t.update(extra=np.zeros(2, np.float32)),
     "tensor 'extra' is neither a Param nor a Buffer"),
    (lambda t, table: t.update({"layers.1.running_mean": np.zeros(4, np.float32)}),
     "Buffer tensor 'layers.1.running_mean' is \\(4,\\)"),
    (lambda t, table: (t.update({"layers.1.running_mean": np.zeros(4, np.float32)}),
                       table["layers.1.running_mean"].update(shape=[4])),
     "Buffer 'running_mean' is \\(4,\\) float32 but the layer's configuration needs \\(3,\\)"),
    (lambda t, table: (t.pop("layers.1.num_batches_tracked"),
                       table.pop("layers.1.num_batches_tracked")),
     "refers to Buffer 'layers.1.num_batches_tracked', which the file does not list"),
])
def test_a_file_whose_buffers_are_missing_extra_or_misshaped_is_a_named_load_error(
        change, words, tmp_path):
    path = tmp_path / "m.safetensors"
    ms.save(net(), path)
    _rewrite(path, change)
    with pytest.raises(ms.LoadError, match=words):
        ms.load(path)


# -- load_into and state_dict -------------------------------------------------------------------
def test_load_into_from_a_file_restores_buffers_all_or_nothing(dev, rng, tmp_path):
    src = net()
    train_steps(src, rng, "host", steps=2)
    path = tmp_path / "m.safetensors"
    ms.save(src, path)
    dst = ms.to_device(src, dev)
    train_steps(dst, rng, dev, steps=3)
    ms.load_into(dst, path)
    for k, v in host_buffers(src).items():
        assert np.array_equal(host_buffers(dst)[k], v)
    state = ms.state_dict(src)
    state["layers.1.running_var"] = np.zeros(5, np.float32)
    before = host_buffers(dst)
    with pytest.raises(ms.GraphMismatchError, match="layers.1.running_var"):
        ms.load_into(dst, state, check="structure")
    for k, v in before.items():
        assert np.array_equal(host_buffers(dst)[k], v)


def test_state_dict_holds_buffers_by_torch_names_both_ways_with_a_sequential(rng):
    import torch

    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
                                 torch.nn.ReLU(), torch.nn.Linear(3, 2))
    for _ in range(3):
        theirs(torch.tensor(rng.normal(size=(8, 4)), dtype=torch.float32))
    ours = net()
    names = ms.interop.torch_sequential_names(ours)
    assert names["layers.1.num_batches_tracked"] == "1.num_batches_tracked"
    ms.load_into(ours, theirs.state_dict(), check="structure", names=names)
    assert int(ours.layers[1].num_batches_tracked.value) == 3
    sd = ms.state_dict(ours, names=names)
    assert set(sd) == set(theirs.state_dict())
    again = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
                                torch.nn.ReLU(), torch.nn.Linear(3, 2))
    again.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    theirs.eval()
    again.eval()
    x = torch.tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    assert torch.equal(again(x), theirs(x))
    np.testing.assert_allclose(ours(x.numpy()), theirs(x).detach().numpy(), atol=1e-5)


def test_load_into_with_check_graph_names_a_missing_buffer(tmp_path):
    other = layers.Chain(layers.Dense(4, 3), layers.BatchNorm(3, track_running_stats=False),
                         layers.ReLU(), layers.Dense(3, 2))
    path = tmp_path / "m.safetensors"
    ms.save(other, path)
    with pytest.raises(ms.GraphMismatchError, match="layers.1.running_mean: only the model") \
            as info:
        ms.load_into(net(), path)
    assert isinstance(info.value, ms.LoadError)  # a file whose buffers are missing
    with pytest.raises(ms.LoadError, match="layers.1.running_mean: the model has this Param"):
        ms.load_into(net(), path, check="structure")


def test_load_into_a_file_with_misshaped_buffers_is_a_load_error(tmp_path):
    path = tmp_path / "m.safetensors"
    ms.save(layers.BatchNorm(4, affine=False), path)
    with pytest.raises(ms.LoadError, match="running_mean: model \\(3,\\) float32 vs file "
                       "\\(4,\\) float32"):
        ms.load_into(layers.BatchNorm(3, affine=False), path, check="structure")
    with pytest.raises(ms.LoadError, match="running_mean"):
        ms.load_into(layers.BatchNorm(3, affine=False), path)


# -- update_bn ----------------------------------------------------------------------------------
def test_update_bn_recomputes_running_stats_as_torch_swa_utils_does(dev, rng):
    import torch
    from torch.optim.swa_utils import update_bn as torch_update_bn

    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, momentum=0.3),
                                 torch.nn.ReLU(), torch.nn.Linear(3, 2))
    ours = net()
    ours.layers[1].momentum = 0.3
    names = ms.interop.torch_sequential_names(ours)
    ms.load_into(ours, theirs.state_dict(), check="structure", names=names)
    ours = ms.to_device(ours, dev)
    data = [rng.normal(size=(8, 4)).astype(np.float32) * 3 for _ in range(4)]
    torch_update_bn([torch.from_numpy(x) for x in data], theirs)
    before = {k: to_numpy(p.value) for k, p in ms.named_params(ours).items()}
    assert ms.update_bn(ours, [(ms.to_device(x, dev), None) for x in data]) is ours
    bn = ours.layers[1]
    np.testing.assert_allclose(to_numpy(bn.running_mean.value),
                               theirs[1].running_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(to_numpy(bn.running_var.value),
                               theirs[1].running_var.numpy(), atol=1e-4)
    assert int(to_numpy(bn.num_batches_tracked.value)) == 4
    assert bn.momentum == 0.3  # restored
    for k, p in ms.named_params(ours).items():
        assert np.array_equal(to_numpy(p.value), before[k])


def test_update_bn_forgets_the_old_statistics(rng):
    model = net()
    train_steps(model, rng, "host", steps=5)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    ms.update_bn(model, [x])
    h = model.layers[0](x)
    np.testing.assert_allclose(model.layers[1].running_mean.value, h.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(model.layers[1].running_var.value, h.var(axis=0, ddof=1),
                               rtol=1e-5)


def test_update_bn_without_batchnorm_is_an_argument_error():
    with pytest.raises(ms.ArgumentError, match="no BatchNorm"):
        ms.update_bn(layers.Chain(layers.Dense(2, 2)), [np.zeros((2, 2), np.float32)])
    with pytest.raises(ms.ArgumentError, match="no BatchNorm"):
        ms.update_bn(layers.BatchNorm(2, track_running_stats=False),
                     [np.zeros((2, 2), np.float32)])


def test_update_bn_is_all_or_nothing_when_a_batch_fails(dev, rng):
    model = ms.to_device(net(), dev)
    train_steps(model, rng, dev, steps=2)
    before = host_buffers(model)
    good = ms.to_device(rng.normal(size=(8, 4)).astype(np.float32), dev)
    bad = ms.to_device(np.zeros((3, 5), np.float32), dev)
    with pytest.raises(ms.ArgumentError):
        ms.update_bn(model, [good, bad])
    assert model.layers[1].momentum == 0.1
    for k, v in host_buffers(model).items():
        assert np.array_equal(v, before[k])


def test_check_gradients_of_a_wrapper_changes_neither_side(rng):
    original = layers.BatchNorm(3)
    original(rng.normal(size=(6, 3)).astype(np.float32), train=True)
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    ms.check_gradients(wrapper, rng.normal(size=(6, 3)).astype(np.float32))
    for model in (original, wrapper):
        assert [dtype_name(b.dtype) for b in ms.buffers(model)] == [
            "float32", "float32", "int64"]
        assert all(dtype_name(p.dtype) == "float32" for p in ms.params(model))
    assert ms.buffers(wrapper)[0].device == ms.device("sim:1")
    assert int(ms.named_buffers(original)["num_batches_tracked"].value) == 1
    ms.detach(wrapper)


def test_no_optimizer_can_be_bound_to_a_buffer():
    model = net()
    with pytest.raises(ms.ArgumentTypeError, match="params\\[0\\] is a Buffer"):
        optim.Adam(ms.buffers(model), lr=1e-3)
    with pytest.raises(ms.ArgumentTypeError, match="is a Buffer"):
        optim.SGD([*ms.params(model), ms.buffers(model)[0]], lr=0.1)


def test_deepcopy_and_pickle_keep_buffers_as_buffers(rng):
    import copy
    import pickle

    model = net()
    train_steps(model, rng, "host")
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(type(b) is ms.Buffer for b in ms.buffers(twin))
        assert ms.graph_id(twin) == ms.graph_id(model)
        for k, v in host_buffers(model).items():
            assert np.array_equal(host_buffers(twin)[k], v)
        assert ms.buffers(twin)[0] is not ms.buffers(model)[0]


def test_a_model_without_buffers_keeps_its_graph_id_and_file_format(tmp_path):
    model = layers.Chain(layers.Dense(3, 2, seed=0))
    assert ms.named_buffers(model) == {} and ms.buffers(model) == []
    ms.save(model, tmp_path / "m.safetensors")
    assert ms.graph_id(ms.load(tmp_path / "m.safetensors")) == ms.graph_id(model)


def test_a_refused_buffer_transfer_leaves_every_model_as_it_was(rng):
    src = net()
    train_steps(src, rng, "host", steps=2)
    dst = ms.to_device(net(), "sim:1")
    dst_params = {k: to_numpy(p.value) for k, p in ms.named_params(dst).items()}
    before = host_buffers(dst)
    with ms.transfer_guard("disallow"):
        with pytest.raises(ms.TransferError):
            ms.sync(dst, src, check="structure")
        with pytest.raises(ms.TransferError):
            ms.to_device(src, "sim:1")
    for k, v in before.items():
        assert np.array_equal(host_buffers(dst)[k], v)
    for k, v in dst_params.items():
        assert np.array_equal(to_numpy(ms.named_params(dst)[k].value), v)


@pytest.mark.parametrize("table, words", [
    ({"layers.1.running_mean": {"shape": [3], "dtype": "int8", "origin": "x", "name": None}},
     "dtype 'int8' is not one of"),
    ([1, 2], "must be a JSON object"),
])
def test_a_malformed_buffer_table_is_a_load_error(table, words, tmp_path):
    import json

    path = tmp_path / "m.safetensors"
    ms.save(net(), path)
    _edit(path, lambda tensors, meta: meta.update({"modelsync.buffers": json.dumps(table)}))
    with pytest.raises(ms.LoadError, match=words):
        ms.load(path)


def test_a_name_listed_as_both_param_and_buffer_is_a_load_error(tmp_path):
    import json

    path = tmp_path / "m.safetensors"
    ms.save(net(), path)

    def edit(tensors, meta):
        table = json.loads(meta["modelsync.buffers"])
        table["layers.1.weight"] = json.loads(meta["modelsync.params"])["layers.1.weight"]
        meta["modelsync.buffers"] = json.dumps(table)

    _edit(path, edit)
    with pytest.raises(ms.LoadError, match="'layers.1.weight' is listed both"):
        ms.load(path)


def test_a_buffer_changed_after_the_save_fails_its_checksum(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    ms.save(net(), path)
    with safe_open(str(path), "np") as f:
        assert "modelsync.checksums" in f.metadata()
    import json
    import struct

    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    start, _ = json.loads(data[8:8 + size])["layers.1.running_var"]["data_offsets"]
    at = 8 + size + start
    data[at:at + 4] = np.float32(2.0).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ms.LoadError, match="running_var"):
        ms.load(path)
    loaded = ms.load(path, verify=False)
    assert float(ms.named_buffers(loaded)["layers.1.running_var"].value[0]) == 2.0
