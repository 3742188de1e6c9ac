"""Interoperability: load_into from a mapping of arrays or a foreign file by name, state_dict
out, the PyTorch nn.Sequential name map, and a torch-trained model round-tripping through
modelsync (host, sim and, with a GPU, cuda) predicting what torch predicts.

The tests that need PyTorch skip without it; the ``test`` extra installs it, so CI runs them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def mirror(seed: int = 0) -> layers.Chain:
    """The modelsync twin of ``torch_mlp``: the Dense carries the ReLU torch holds apart."""
    return layers.Chain(layers.Embedding(12, 8, seed=seed), layers.Dense(8, 16, "relu", seed=seed),
                        layers.LayerNorm(16), layers.Dense(16, 3, seed=seed + 1))


def torch_mlp(torch, seed: int = 0):
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Embedding(12, 8), nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16),
                         nn.Linear(16, 3))


TORCH_KEYS = ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias"]


def trained_torch_mlp(torch):
    """A torch MLP after a few Adam steps, so no value is left at its initialisation (the
    LayerNorm's ones and zeros included)."""
    net = torch_mlp(torch)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 12, (64,), generator=gen)
    y = torch.randint(0, 3, (64,), generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(idx), y).backward()
        opt.step()
    return net


def host_values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def assert_unchanged(before: dict, model) -> None:
    after = host_values(model)
    assert list(before) == list(after)
    for path in before:
        assert before[path].tobytes() == after[path].tobytes(), path


def predict(model, x) -> np.ndarray:
    dev = ms.named_params(model)["layers.0.weight"].device
    return to_numpy(model(ms.to_device(x, dev)))


def small(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.Dense(3, 4, "tanh", seed=seed), layers.Dense(4, 2, seed=seed + 1))


def numpy_state(model, fill: float) -> dict[str, np.ndarray]:
    return {path: np.full(p.shape, fill, np.float32) for path, p in ms.named_params(model).items()}


# -- the done-when: a torch-trained model, through modelsync and back ------------------------
def test_a_torch_trained_mlp_round_trips_and_predicts_the_same(torch, dev):
    net = trained_torch_mlp(torch)
    idx = np.arange(12, dtype=np.int64)
    model = ms.to_device(mirror(seed=5), dev)
    names = ms.interop.torch_sequential_names(model)
    assert ms.load_into(model, net.state_dict(), check="structure", names=names) is model
    with torch.no_grad():
        expected = net(torch.from_numpy(idx)).numpy()
    np.testing.assert_allclose(predict(model, idx), expected, rtol=1e-5, atol=1e-5)
    state = net.state_dict()
    for path, key in names.items():
        assert to_numpy(ms.named_params(model)[path].value).tobytes() == \
            state[key].numpy().tobytes(), path

    # fine-tune here, hand the weights back: torch predicts what modelsync predicts
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 12, 48), rng.integers(0, 3, 48)
    ms.train(model, [(x, y)], losses.cross_entropy, optim.Adam(ms.params(model), lr=0.05),
             epochs=3, progress=False)
    tuned = predict(model, idx)
    assert not np.allclose(tuned, expected, atol=1e-3)  # training changed something
    back = ms.state_dict(model, names=names)
    assert list(back) == TORCH_KEYS
    assert all(type(v) is np.ndarray for v in back.values())
    fresh = torch_mlp(torch, seed=9)
    fresh.load_state_dict({key: torch.from_numpy(v) for key, v in back.items()})
    with torch.no_grad():
        np.testing.assert_allclose(fresh(torch.from_numpy(idx)).numpy(), tuned,
                                   rtol=1e-5, atol=1e-5)


def test_a_safetensors_torch_file_loads_by_name(torch, tmp_path, dev):
    from safetensors.torch import save_file

    net = trained_torch_mlp(torch)
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    model = ms.to_device(mirror(seed=3), dev)
    before = host_values(model)
    with pytest.raises(ms.GraphMismatchError,
                       match=r"layers\.0\.weight: .*no tensor of that name.*'0\.weight'.*"
                             r"torch_sequential_names"):
        ms.load_into(model, tmp_path / "net.safetensors", check="structure")
    assert_unchanged(before, model)
    ms.load_into(model, tmp_path / "net.safetensors", check="structure",
                 names=ms.interop.torch_sequential_names(model))
    idx = np.arange(12, dtype=np.int64)
    with torch.no_grad():
        expected = net(torch.from_numpy(idx)).numpy()
    np.testing.assert_allclose(predict(model, idx), expected, rtol=1e-5, atol=1e-5)


def test_torch_tensors_that_require_grad_or_are_views_load(torch):
    model = small()
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4).t().requires_grad_()  # (4, 3)
    state = {"layers.0.weight": weight, "layers.0.bias": torch.nn.Parameter(torch.ones(4)),
             "layers.1.weight": torch.zeros(2, 4), "layers.1.bias": torch.full((2,), 2.0)}
    ms.load_into(model, state, check="structure")
    np.testing.assert_array_equal(model[0].weight.value, weight.detach().numpy())
    np.testing.assert_array_equal(model[1].bias.value, [2.0, 2.0])


def test_bfloat16_is_refused_by_name_and_changes_nothing(torch):
    model = small()
    before = host_values(model)
    state = {path: torch.zeros(p.shape) for path, p in ms.named_params(model).items()}
    state["layers.1.weight"] = state["layers.1.weight"].bfloat16()
    with pytest.raises(ms.ArgumentTypeError, match=r"source\['layers\.1\.weight'\].*bfloat16"):
        ms.load_into(model, state, check="structure")
    assert_unchanged(before, model)


# -- mappings of arrays ----------------------------------------------------------------------
def test_a_mapping_of_numpy_arrays_loads_on_every_device(dev):
    model = ms.to_device(small(), dev)
    state = {path: np.random.default_rng(1).standard_normal(p.shape).astype(np.float32)
             for path, p in ms.named_params(model).items()}
    ms.load_into(model, state, check="structure")
    for path, value in host_values(model).items():
        assert value.tobytes() == state[path].tobytes(), path
    state["layers.0.bias"][...] = 7  # the model holds copies, not the caller's arrays
    assert not (host_values(model)["layers.0.bias"] == 7).any()


def test_a_mapping_of_device_arrays_is_staged_from_where_it_lives():
    model = ms.to_device(small(), "sim:1")
    state = {path: ms.to_device(v, "sim:1") for path, v in numpy_state(model, 0.5).items()}
    with ms.track_transfers() as ledger:
        ms.load_into(model, state, check="structure")
    assert ledger.events == []  # sim to sim: local copies, nothing crosses
    assert all((v == 0.5).all() for v in host_values(model).values())
    host = small()
    with ms.track_transfers() as ledger:
        ms.load_into(host, state, check="structure")
    assert {e.kind for e in ledger.events} == {"d2h"}
    assert all((v == 0.5).all() for v in host_values(host).values())


class OnlyArray:
    """An array-like known only by ``__array__``."""

    def __init__(self, array):
        self.array = array

    def __array__(self, dtype=None, copy=None):
        return self.array


class OnlyDLPack:
    """An array-like known only by the DLPack protocol."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@pytest.mark.parametrize("wrap", [OnlyArray, OnlyDLPack])
def test_anything_with_array_or_dlpack_loads(wrap):
    model = small()
    state = {k: wrap(v) for k, v in numpy_state(model, 1.5).items()}
    ms.load_into(model, state, check="structure")
    assert all((v == 1.5).all() for v in host_values(model).values())


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], 3.0, "weights", None, OnlyArray(np.array(["a"]))])
def test_a_value_that_is_not_an_array_is_named(bad):
    model = small()
    before = host_values(model)
    state = numpy_state(model, 0.0)
    state["layers.1.bias"] = bad
    with pytest.raises(ms.ArgumentTypeError, match=r"source\['layers\.1\.bias'\]"):
        ms.load_into(model, state, check="structure")
    assert_unchanged(before, model)


def test_a_mapping_needs_the_structure_check():
    model = small()
    before = host_values(model)
    with pytest.raises(ms.ArgumentError, match="check='structure'"):
        ms.load_into(model, numpy_state(model, 0.0))
    assert_unchanged(before, model)


# -- all or nothing: strict, extra, missing, shapes, dtypes -------------------------------------
def test_an_extra_key_is_an_error_unless_strict_is_false(dev):
    model = ms.to_device(small(), dev)
    before = host_values(model)
    state = numpy_state(model, 0.25)
    state["head.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ms.GraphMismatchError, match=r"head\.extra: .*strict=False"):
        ms.load_into(model, state, check="structure")
    assert_unchanged(before, model)
    state["running_mean"] = "never read when strict=False"
    ms.load_into(model, state, check="structure", strict=False)
    assert all((v == 0.25).all() for v in host_values(model).values())


@pytest.mark.parametrize("strict", [True, False])
def test_a_missing_key_is_always_an_error(dev, strict):
    model = ms.to_device(small(), dev)
    before = host_values(model)
    state = numpy_state(model, 0.25)
    del state["layers.1.weight"]
    with pytest.raises(ms.GraphMismatchError,
                       match=r"layers\.1\.weight: the model has this Param but the source has no"):
        ms.load_into(model, state, check="structure", strict=strict)
    assert_unchanged(before, model)


def test_a_shape_mismatch_names_path_key_and_both_sides(dev):
    model = ms.to_device(small(), dev)
    before = host_values(model)
    state = {f"k{i}": v for i, v in enumerate(numpy_state(model, 0.25).values())}
    names = {path: f"k{i}" for i, path in enumerate(ms.named_params(model))}
    state["k2"] = np.zeros((4, 2), np.float32)  # layers.1.weight is (2, 4)
    with pytest.raises(ms.GraphMismatchError,
                       match=r"layers\.1\.weight: model \(2, 4\) float32 vs source 'k2' "
                             r"\(4, 2\) float32"):
        ms.load_into(model, state, check="structure", names=names)
    assert_unchanged(before, model)


def test_a_dtype_mismatch_is_named_not_cast(dev):
    model = ms.to_device(small(), dev)
    before = host_values(model)
    state = numpy_state(model, 0.25)
    state["layers.0.bias"] = state["layers.0.bias"].astype(np.float64)
    with pytest.raises(ms.GraphMismatchError,
                       match=r"layers\.0\.bias: model \(4,\) float32 vs source \(4,\) float64"):
        ms.load_into(model, state, check="structure")
    assert_unchanged(before, model)


def test_a_refused_transfer_changes_nothing():
    model = ms.to_device(small(), "sim:1")
    before = host_values(model)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.load_into(model, numpy_state(model, 0.25), check="structure")
    assert_unchanged(before, model)


def test_a_foreign_file_with_extra_tensors_loads_with_strict_false(tmp_path):
    from safetensors.numpy import save_file

    model = small()
    state = numpy_state(model, 0.75)
    state["num_batches_tracked"] = np.zeros((), np.int64)
    save_file(state, tmp_path / "f.safetensors")
    with pytest.raises(ms.GraphMismatchError, match="num_batches_tracked"):
        ms.load_into(model, tmp_path / "f.safetensors", check="structure")
    ms.load_into(model, tmp_path / "f.safetensors", check="structure", strict=False)
    assert all((v == 0.75).all() for v in host_values(model).values())


def test_a_modelsync_file_loads_under_other_names(tmp_path):
    ms.save(small(seed=4), tmp_path / "m.safetensors")
    outer = layers.Chain(layers.Chain(layers.Dense(3, 4, "tanh"), layers.Dense(4, 2)))
    names = {path: path.removeprefix("layers.0.") for path in ms.named_params(outer)}
    ms.load_into(outer, tmp_path / "m.safetensors", check="structure", names=names)
    assert host_values(outer)["layers.0.layers.1.bias"].tobytes() == \
        host_values(small(seed=4))["layers.1.bias"].tobytes()


# -- names ------------------------------------------------------------------------------------
def test_names_as_a_dict_and_as_a_function(dev):
    model = ms.to_device(small(), dev)
    state = {"enc." + path: v for path, v in numpy_state(model, 2.0).items()}
    ms.load_into(model, state, check="structure", names=lambda path: "enc." + path)
    assert all((v == 2.0).all() for v in host_values(model).values())
    # a dict renames the paths it lists; the others keep their own
    state = numpy_state(model, 3.0)
    state["w0"] = state.pop("layers.0.weight")
    ms.load_into(model, state, check="structure", names={"layers.0.weight": "w0"})
    assert all((v == 3.0).all() for v in host_values(model).values())
    assert list(ms.state_dict(model, names={"layers.0.weight": "w0"})) == \
        ["w0", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert list(ms.state_dict(model, names=lambda p: p.upper())) == \
        ["LAYERS.0.WEIGHT", "LAYERS.0.BIAS", "LAYERS.1.WEIGHT", "LAYERS.1.BIAS"]


def test_bad_names_are_refused_before_anything_is_written():
    model = small()
    before = host_values(model)
    state = numpy_state(model, 0.0)
    cases = [
        (ms.ArgumentError, r"names\['layer\.0\.weight'\]: the model has no Param",
         {"layer.0.weight": "x"}),
        (ms.ArgumentTypeError, r"names\['layers\.0\.weight'\] = 3", {"layers.0.weight": 3}),
        (ms.ArgumentTypeError, r"names\('layers\.0\.weight'\) returned None", lambda p: None),
        (ms.ArgumentTypeError, "names=", ["layers.0.weight"]),
    ]
    for error, message, names in cases:
        with pytest.raises(error, match=message):
            ms.load_into(model, state, check="structure", names=names)
        with pytest.raises(error, match=message):
            ms.state_dict(model, names=names)
    assert_unchanged(before, model)


def test_argument_errors_name_the_argument(tmp_path):
    model = small()
    ms.save(model, tmp_path / "m.safetensors")
    with pytest.raises(ms.ArgumentError, match="names=.*check='structure'"):
        ms.load_into(model, tmp_path / "m.safetensors", names={})
    with pytest.raises(ms.ArgumentTypeError, match="strict=1"):
        ms.load_into(model, tmp_path / "m.safetensors", strict=1)
    with pytest.raises(ms.ArgumentTypeError, match="source=3"):
        ms.load_into(model, 3)
    with pytest.raises(ms.ArgumentTypeError, match="model"):
        ms.state_dict("model")


# -- state_dict -------------------------------------------------------------------------------
def test_state_dict_is_host_copies_counted_from_a_device(dev):
    model = ms.to_device(small(), dev)
    with ms.track_transfers() as ledger:
        state = ms.state_dict(model)
    assert list(state) == list(ms.named_params(model))
    for path, value in host_values(model).items():
        assert type(state[path]) is np.ndarray and state[path].flags.c_contiguous
        assert state[path].tobytes() == value.tobytes()
    assert sum(e.bytes for e in ledger.events) == (
        0 if dev == ms.device("host") else sum(v.nbytes for v in state.values()))
    state["layers.0.bias"][...] = 9  # a copy: the model is untouched
    assert not (host_values(model)["layers.0.bias"] == 9).any()


def test_state_dict_under_a_disallowing_guard_raises():
    model = ms.to_device(small(), "sim:1")
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError):
        ms.state_dict(model)


def test_state_dict_of_a_wrapper_has_the_latest_values():
    original = small()
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    ms.load_into(wrapper, numpy_state(wrapper, 4.0), check="structure")
    assert all((v == 4.0).all() for v in ms.state_dict(original).values())  # reaches the original
    ms.load_into(original, numpy_state(original, 5.0), check="structure")
    assert all((v == 5.0).all() for v in ms.state_dict(wrapper).values())


def test_a_moved_model_is_refused():
    model = small()
    ms.to_device(model, "sim:1", mode="move")
    with pytest.raises(ms.MovedError):
        ms.state_dict(model)
    with pytest.raises(ms.MovedError):
        ms.load_into(model, {}, check="structure")


def test_state_dict_names_must_not_merge_two_params():
    model = small()
    with pytest.raises(ms.ArgumentError,
                       match="both layers.0.weight and layers.1.weight to 'weight'"):
        ms.state_dict(model, names=lambda p: p.rsplit(".", 1)[1])


# -- ties -------------------------------------------------------------------------------------
def tied() -> layers.Chain:
    a, b = layers.Dense(4, 4, "relu", seed=0), layers.Dense(4, 4, seed=1)
    b.weight = a.weight
    return layers.Chain(a, b)


def test_a_tied_param_is_listed_at_every_place_as_torch_does():
    model = tied()
    state = ms.state_dict(model)
    assert list(state) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                           "layers.1.bias"]
    assert state["layers.0.weight"] is state["layers.1.weight"]
    other = tied()
    ms.load_into(other, state, check="structure")  # both keys present and equal: accepted
    assert_unchanged(host_values(model), other)


def test_a_tied_param_loads_from_any_one_of_its_keys():
    model = tied()
    state = numpy_state(model, 1.0)  # named_params: the tie once, at layers.0.weight
    ms.load_into(model, state, check="structure")
    state["layers.1.weight"] = state.pop("layers.0.weight")  # the other place's name only
    ms.load_into(model, state, check="structure")
    assert (model[1].weight.value == 1.0).all() and model[0].weight is model[1].weight


def test_a_tied_param_with_two_different_values_is_refused():
    model = tied()
    before = host_values(model)
    state = numpy_state(model, 1.0)
    state["layers.1.weight"] = np.full((4, 4), 2.0, np.float32)
    with pytest.raises(ms.GraphMismatchError,
                       match="layers.0.weight and layers.1.weight: the model ties them"):
        ms.load_into(model, state, check="structure")
    assert_unchanged(before, model)


# -- torch_sequential_names -------------------------------------------------------------------
def test_torch_sequential_names_counts_parameterless_modules():
    model = layers.Chain(
        layers.Dense(6, 8, "relu"),                          # 0 Linear, 1 ReLU
        layers.Dropout(0.1),                                 # 2
        layers.Chain(layers.LayerNorm(8), layers.ReLU(),     # 3: 3.0, 3.1
                     layers.Dense(8, 8, bias=False)),        #    3.2
        layers.Dense(8, 4),                                  # 4
        layers.Embedding(4, 2))                              # 5
    assert ms.interop.torch_sequential_names(model) == {
        "layers.0.weight": "0.weight", "layers.0.bias": "0.bias",
        "layers.2.layers.0.weight": "3.0.weight", "layers.2.layers.0.bias": "3.0.bias",
        "layers.2.layers.2.weight": "3.2.weight",
        "layers.3.weight": "4.weight", "layers.3.bias": "4.bias",
        "layers.4.weight": "5.weight"}


def test_torch_sequential_names_matches_torch(torch):
    nn = torch.nn
    net = nn.Sequential(nn.Linear(6, 8), nn.GELU(approximate="tanh"), nn.Dropout(0.1),
                        nn.Sequential(nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8, bias=False)),
                        nn.Linear(8, 4), nn.Softmax(dim=-1))
    model = layers.Chain(layers.Dense(6, 8, "gelu"), layers.Dropout(0.1),
                         layers.Chain(layers.LayerNorm(8), layers.Tanh(),
                                      layers.Dense(8, 8, bias=False)),
                         layers.Dense(8, 4, "softmax"))
    names = ms.interop.torch_sequential_names(model)
    assert sorted(names.values()) == sorted(net.state_dict())
    ms.load_into(model, net.state_dict(), check="structure", names=names)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), net.eval()(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_torch_sequential_names_of_single_layers_and_refusals():
    assert ms.interop.torch_sequential_names(layers.Dense(2, 3)) == {"weight": "weight",
                                                                      "bias": "bias"}
    assert ms.interop.torch_sequential_names(layers.LayerNorm(3)) == {"weight": "weight",
                                                                       "bias": "bias"}

    @ms.layer(name="ScaleForInterop")  # a name no docs block registers
    class Scale:
        s: ms.Param

        def forward(self, x, ctx):
            return x * self.s.value, lambda dy: dy

    with pytest.raises(ms.ArgumentError, match=r"layers\.1 is a ScaleForInterop with Params"):
        ms.interop.torch_sequential_names(
            layers.Chain(layers.Dense(2, 2), Scale(ms.Param(np.ones(2, np.float32)))))
    with pytest.raises(ms.ArgumentTypeError, match="model is a ScaleForInterop"):
        ms.interop.torch_sequential_names(Scale(ms.Param(np.ones(2, np.float32))))
    with pytest.raises(ms.ArgumentTypeError, match="model"):
        ms.interop.torch_sequential_names({"weight": 1})


# -- torch stays optional ---------------------------------------------------------------------
def test_torch_is_not_imported_unless_a_tensor_is_passed():
    code = ("import sys, numpy as np, modelsync as ms\n"
            "from modelsync import layers\n"
            "m = layers.Chain(layers.Dense(2, 3, 'relu'), layers.Dense(3, 1))\n"
            "names = ms.interop.torch_sequential_names(m)\n"
            "state = ms.state_dict(m, names=names)\n"
            "ms.load_into(m, state, check='structure', names=names)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
