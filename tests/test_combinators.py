"""SkipConnection and Parallel: values, gradients (finite differences on host and every device,
torch parity), errors naming the path, nesting with Chain, ties, and every tree operation
(params order, graph id, to_device copy/move/wrap, sync, save/load). Also: a child whose
forward does not return (y, pullback) is named by its path at any depth."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses
from modelsync.layers.base import Context

CONNECTIONS = ["add", "mul", "concat", "concat_channels"]
F32 = {"rtol": 1e-5, "atol": 1e-6}  # float32 forward/gradient tolerances against float64/torch


def data(shape, seed=0, dtype="float32"):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def values(model) -> dict[str, np.ndarray]:
    return {k: to_numpy(p.value) for k, p in ms.named_params(model).items()}


def grads(model) -> dict[str, np.ndarray]:
    return {k: to_numpy(p.grad) for k, p in ms.named_params(model).items()}


def forward_backward(model, x, dy_seed=7):
    """y, dx and every Param's gradient for the cotangent ``dy`` drawn from ``dy_seed``."""
    for p in ms.params(model):
        p.grad = None
    y, back = model.forward(x, Context(train=True))
    dy = data(tuple(y.shape), dy_seed, str(to_numpy(y).dtype))
    if not isinstance(y, np.ndarray):
        dy = ms.to_device(dy, ms.devices.device_of(y))
    dx = back(dy)
    return to_numpy(y), to_numpy(dx), grads(model), dy


def resnet_block(width=4, hidden=6, seed=0):
    return layers.SkipConnection(layers.Chain(
        layers.Dense(width, hidden, seed=seed), layers.relu, layers.Dense(hidden, width,
                                                                          seed=seed + 1)))


def branches(connection, width=4, seed=0):
    """A Parallel of a Dense, a Chain and a SkipConnection, for ``connection``."""
    return layers.Parallel(
        connection,
        layers.Dense(width, width, "tanh", seed=seed),
        layers.Chain(layers.Dense(width, 3, seed=seed + 1), layers.Dense(3, width, seed=seed + 2)),
        layers.SkipConnection(layers.Dense(width, width, seed=seed + 3)))


# -- forward values ----------------------------------------------------------------------------
@pytest.mark.parametrize("connection", ["add", "mul", "concat"])
def test_skip_connection_forward_is_the_connection_of_layer_and_input(connection):
    inner = layers.Dense(4, 4, "tanh", dtype="float64", seed=1)
    x = data((3, 4), dtype="float64")
    fx = inner(x)
    expected = {"add": fx + x, "mul": fx * x, "concat": np.concatenate([fx, x], axis=-1)}
    np.testing.assert_allclose(layers.SkipConnection(inner, connection)(x),
                               expected[connection], rtol=1e-14)


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_parallel_forward_joins_the_branches(connection):
    model = branches(connection)
    x = data((2, 4, 4))  # (N, C, L): concat_channels joins axis 1
    a, b, c = (branch(x) for branch in model.layers)
    expected = {"add": a + b + c, "mul": a * b * c,
                "concat": np.concatenate([a, b, c], axis=-1),
                "concat_channels": np.concatenate([a, b, c], axis=1)}[connection]
    y = model(x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **F32)


def test_concat_widths_may_differ_and_one_branch_is_that_branch():
    model = layers.Parallel("concat", layers.Dense(4, 2, seed=0), layers.Dense(4, 5, seed=1))
    x = data((3, 4))
    assert model(x).shape == (3, 7)
    only = layers.Parallel("mul", layers.Dense(4, 2, seed=0))
    np.testing.assert_array_equal(only(x), only[0](x))
    assert len(model) == 2 and model[1] is model.layers[1]


def test_skip_of_a_float64_batch_into_a_float32_layer_keeps_both_dtypes():
    model = layers.SkipConnection(layers.Dense(3, 3, seed=0))
    x = data((2, 3), dtype="float64")
    y, dx, g, _ = forward_backward(model, x)
    assert y.dtype == np.float32 and dx.dtype == np.float64
    assert g["layer.weight"].dtype == np.float32


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("connection", ["add", "mul", "concat"])
def test_skip_connection_gradients(connection):
    ms.check_gradients(layers.SkipConnection(layers.Dense(4, 4, "tanh", seed=2), connection),
                       data((3, 4)))
    ms.check_gradients(layers.SkipConnection(layers.Dense(4, 4, seed=2), connection),
                       data((1, 4), 1))


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_parallel_gradients(connection):
    ms.check_gradients(branches(connection), data((2, 4, 4)))
    ms.check_gradients(branches(connection), data((1, 3, 4), 1))


def test_skip_connection_of_concat_channels_gradients():
    model = layers.SkipConnection(layers.Dense(4, 4, seed=0), "concat_channels")
    x = data((2, 3, 4))
    assert model(x).shape == (2, 6, 4)
    ms.check_gradients(model, x)


def test_resnet_block_and_nested_branches_gradients():
    x = data((3, 4))
    ms.check_gradients(resnet_block(), x)
    deep = layers.Chain(
        resnet_block(seed=0),
        layers.Parallel("concat", resnet_block(seed=2),
                        layers.SkipConnection(layers.Parallel("mul", layers.Dense(4, 4, seed=4),
                                                              resnet_block(seed=5)))),
        layers.Dense(8, 2, seed=7))
    ms.check_gradients(deep, x)


def test_gradients_route_exactly():
    """dx of a skip is layer_back(dy) + dy; dx of a Parallel is the sum of the branches' dx."""
    inner = layers.Dense(3, 3, dtype="float64", seed=0)
    x = data((2, 3), dtype="float64")
    dy = data((2, 3), 9, "float64")
    _, back = inner.forward(x, Context())
    inner.weight.grad = None
    np.testing.assert_allclose(layers.SkipConnection(inner).forward(x, Context())[1](dy),
                               back(dy) + dy, rtol=1e-14)
    a, b = layers.Dense(3, 3, dtype="float64", seed=1), layers.Dense(3, 3, dtype="float64", seed=2)
    dx = layers.Parallel("add", a, b).forward(x, Context())[1](dy)
    np.testing.assert_allclose(dx, dy @ a.weight.value + dy @ b.weight.value, rtol=1e-14)


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_device_forward_and_gradients_match_host(dev, connection):
    model = layers.Chain(resnet_block(), branches(connection))
    x = data((2, 4, 4))
    y, dx, g, _ = forward_backward(model, x)
    on_dev = ms.to_device(model, dev)
    y_dev, dx_dev, g_dev, _ = forward_backward(on_dev, ms.to_device(x, dev))
    np.testing.assert_allclose(y_dev, y, **F32)
    np.testing.assert_allclose(dx_dev, dx, **F32)
    assert list(g_dev) == list(g)
    for k in g:
        np.testing.assert_allclose(g_dev[k], g[k], **F32)
    ms.check_gradients(on_dev, ms.to_device(x, dev))


def test_residual_mlp_matches_torch():
    torch = pytest.importorskip("torch")
    model = layers.Chain(layers.Dense(5, 8, seed=0), resnet_block(8, 16, seed=1),
                         resnet_block(8, 16, seed=3), layers.Dense(8, 3, seed=5))

    class Residual(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x) + x

    def linear(d):
        t = torch.nn.Linear(d.in_features, d.out_features)
        with torch.no_grad():
            t.weight.copy_(torch.from_numpy(d.weight.value))
            t.bias.copy_(torch.from_numpy(d.bias.value))
        return t

    def block(b):
        first, _, second = b.layer.layers
        return Residual(torch.nn.Sequential(linear(first), torch.nn.ReLU(), linear(second)))

    reference = torch.nn.Sequential(linear(model[0]), block(model[1]), block(model[2]),
                                    linear(model[3]))
    x = data((6, 5))
    y, dx, g, dy = forward_backward(model, x)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = reference(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    torch_grads = [p.grad.numpy() for p in reference.parameters()]
    assert len(torch_grads) == len(g)
    for (path, ours), theirs in zip(g.items(), torch_grads, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=path)


def test_branches_of_embeddings_give_no_input_gradient_and_train_both_tables():
    tokens, positions = layers.Embedding(5, 3, seed=0), layers.Embedding(5, 3, seed=1)
    model = layers.Chain(layers.Parallel("add", tokens, positions), layers.Dense(3, 2, seed=2))
    idx = np.array([[0, 4], [2, 2]])
    expected = tokens.weight.value[idx] + positions.weight.value[idx]
    np.testing.assert_allclose(model[0](idx), expected, rtol=1e-6)
    y, back = model.forward(idx, Context(train=True))
    assert back(np.ones(y.shape, np.float32)) is None
    assert np.any(tokens.weight.grad != 0)
    np.testing.assert_array_equal(tokens.weight.grad, positions.weight.grad)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["sum", "Add", None, 3, layers.Dense(2, 2)])
def test_unknown_connection_names_argument_value_and_choices(bad):
    for make in (lambda: layers.SkipConnection(layers.Dense(2, 2), bad),
                 lambda: layers.Parallel(bad, layers.Dense(2, 2))):
        with pytest.raises(ms.ArgumentError, match=r"connection=.* expected one of \['add', "
                                                   r"'mul', 'concat', 'concat_channels'\]"):
            make()
    model = layers.SkipConnection(layers.Dense(2, 2))
    with pytest.raises(ms.ArgumentError, match="connection="):
        model.connection = bad
    assert model.connection == "add"


def test_parallel_needs_layers_and_children_must_be_layers():
    with pytest.raises(ms.ArgumentError, match="Parallel.layers is empty"):
        layers.Parallel("add")
    with pytest.raises(ms.ArgumentTypeError, match="Parallel layer 1 is a int"):
        layers.Parallel("add", layers.Dense(2, 2), 5)
    with pytest.raises(ms.ArgumentTypeError, match="SkipConnection.layer is a list"):
        layers.SkipConnection([layers.Dense(2, 2)])
    assert isinstance(layers.SkipConnection("tanh").layer, layers.Activation)
    with pytest.raises(ms.ArgumentTypeError, match="^model: input is a list"):
        layers.SkipConnection("tanh")([[1.0, 2.0]])


def test_shape_mismatch_names_path_and_both_shapes():
    model = layers.Chain(layers.Dense(4, 4, seed=0),
                         layers.Parallel("add", layers.Dense(4, 3), layers.Dense(4, 5)))
    with pytest.raises(ms.ArgumentError, match=r"^layers\.1: connection='add' .* layers\.1\."
                                               r"layers\.0 gave shape \(2, 3\) and layers\.1\."
                                               r"layers\.1 gave shape \(2, 5\)"):
        model(data((2, 4)))
    skip = layers.Chain(layers.SkipConnection(layers.Dense(4, 3)))
    with pytest.raises(ms.ArgumentError, match=r"layers\.0\.layer gave shape \(2, 3\) and the "
                                               r"skip \(the input\) gave shape \(2, 4\)"):
        skip(data((2, 4)))
    cat = layers.Parallel("concat_channels", layers.Dense(4, 3), layers.Dense(4, 3))
    with pytest.raises(ms.ArgumentError, match=r"needs \(N, C, \.\.\.\) outputs .* shape \(3,\)"):
        cat(data((4,)))
    rows = layers.Parallel("concat", layers.Dense(4, 3), layers.Dense(4, 3))
    with pytest.raises(ms.ArgumentError, match=r"joins the last axis and needs every other axis "
                                               r"equal, but layers\.0 gave shape \(2, 3, 3\)"):
        layers.Parallel("concat", layers.Dense(4, 3), layers.Chain(
            layers.Dense(4, 3), layers.Parallel("concat_channels", layers.relu, layers.relu)))(
                data((2, 3, 4)))
    assert rows(data((2, 4))).shape == (2, 6)


# -- a child whose forward returns no pullback -----------------------------------------------------
@ms.layer
class CombinatorsTestForgetful:
    """A user layer that forgot the pullback: forward returns y alone."""

    def forward(self, x, ctx):
        return x * 2.0


def nested_cases():
    bad = CombinatorsTestForgetful
    dense = lambda: layers.Dense(3, 3, seed=0)  # noqa: E731
    return [
        (layers.Chain(dense(), bad()), "layers.1"),
        (layers.Chain(dense(), layers.Chain(bad(), dense())), "layers.1.layers.0"),
        (layers.SkipConnection(bad()), "layer"),
        (layers.SkipConnection(layers.Chain(dense(), bad())), "layer.layers.1"),
        (layers.Parallel("mul", layers.Chain(bad())), "layers.0.layers.0"),
        (layers.Chain(layers.SkipConnection(layers.Chain(dense(), bad()))),
         "layers.0.layer.layers.1"),
        (layers.Parallel("add", dense(), bad()), "layers.1"),
        (layers.Chain(dense(), layers.Parallel("concat", dense(), layers.Chain(bad()))),
         "layers.1.layers.1.layers.0"),
    ]


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("case", range(8))
def test_a_child_without_pullback_is_named_by_its_path(case, batch):
    model, path = nested_cases()[case]
    x = data((batch, 3))
    for use in (lambda: model(x), lambda: ms.backprop(model, losses.mse, x, x)):
        with pytest.raises(ms.ArgumentTypeError,
                           match="^" + re.escape(path) + r": CombinatorsTestForgetful.forward "
                                 r"returned a ndarray; a layer's forward\(x, ctx\) must return "
                                 r"\(y, pullback\)"):
            use()


# -- tree operations ----------------------------------------------------------------------------
def tied_model():
    """A Chain holding a Parallel whose branches share one Dense and, elsewhere, one Param."""
    shared = layers.Dense(4, 4, "tanh", dtype="float64", seed=0)
    other = layers.Dense(4, 4, dtype="float64", seed=1)
    third = layers.Dense(4, 4, dtype="float64", seed=2)
    third.weight = other.weight
    return layers.Chain(
        layers.SkipConnection(layers.Parallel("add", shared, layers.Chain(shared, other))),
        layers.Parallel("concat", third, layers.SkipConnection(other, "mul")))


def test_params_depth_first_and_ties_listed_once():
    model = tied_model()
    assert list(ms.named_params(model)) == [
        "layers.0.layer.layers.0.weight", "layers.0.layer.layers.0.bias",
        "layers.0.layer.layers.1.layers.1.weight", "layers.0.layer.layers.1.layers.1.bias",
        "layers.1.layers.0.bias"]
    shared = model[0].layer[0]
    assert ms.params(model)[0] is shared.weight
    assert len(ms.params(model)) == 5


def test_tied_gradients_accumulate_from_every_use():
    model = tied_model()
    x = data((3, 4), dtype="float64")
    ms.check_gradients(model, x, rtol=1e-6)
    # the same model with every use given its own Params: the tied gradient is their sum
    _, _, tied, dy = forward_backward(model, x)
    untied = ms.to_device(model, "host")
    s = untied[0].layer
    first = s.layers[0]
    second_copy = layers.Dense(4, 4, "tanh", dtype="float64", seed=0)
    s.layers[1].layers[0] = second_copy
    np.testing.assert_array_equal(second_copy.weight.value, first.weight.value)
    third = untied[1].layers[0]
    third.weight = ms.Param(third.weight.value.copy())
    _, _, g, _ = forward_backward(untied, x)
    np.testing.assert_allclose(
        tied["layers.0.layer.layers.0.weight"],
        g["layers.0.layer.layers.0.weight"] + g["layers.0.layer.layers.1.layers.0.weight"],
        rtol=1e-12)
    np.testing.assert_allclose(
        tied["layers.0.layer.layers.1.layers.1.weight"],
        g["layers.0.layer.layers.1.layers.1.weight"] + g["layers.1.layers.0.weight"],
        rtol=1e-12)
    assert not np.allclose(tied["layers.0.layer.layers.0.weight"],
                           g["layers.0.layer.layers.0.weight"])


def test_graph_id_copy_move_wrap_and_sync_keep_the_structure():
    model = tied_model()
    x = data((3, 4), dtype="float64")
    expected = model(x)
    gid = ms.graph_id(model)
    copy = ms.to_device(model, "sim:1")
    assert ms.graph_id(copy) == gid
    assert copy[0].layer[0] is copy[0].layer[1][0]  # the shared layer stays shared
    assert copy[1][0].weight is copy[1][1].layer.weight  # the tied Param stays tied
    np.testing.assert_allclose(to_numpy(copy(ms.to_device(x, "sim:1"))), expected, rtol=1e-12)

    wrapper = ms.to_device(model, "sim:1", mode="wrap")
    assert ms.graph_id(wrapper) == gid
    np.testing.assert_allclose(to_numpy(wrapper(ms.to_device(x, "sim:1"))), expected,
                               rtol=1e-12)
    xs = ms.to_device(x, "sim:1")
    ms.backprop(wrapper, losses.mse, xs, ms.to_device(np.zeros((3, 8)), "sim:1"))
    for p in ms.params(wrapper):  # a training step on the wrapper: the original observes it
        data_ = p.writable()
        data_[...] = data_ - 0.1 * p.grad
    trained = values(wrapper)
    assert list(values(model)) == list(trained)
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, trained[k])
    ms.detach(wrapper)
    expected = model(x)

    other = tied_model()  # another model of the same shape: sync copies values across devices
    for p in ms.params(copy):
        p.assign(ms.to_device(np.zeros(p.shape), "sim:1"))
    ms.sync(copy, model, check="structure")
    np.testing.assert_allclose(to_numpy(copy(ms.to_device(x, "sim:1"))), expected, rtol=1e-12)
    ms.sync(other, model, check="structure")
    assert ms.graph_id(other) != gid

    kept = ms.params(model)
    moved = ms.to_device(model, "sim:1", mode="move")
    assert [id(p) for p in ms.params(moved)] == [id(p) for p in kept]
    np.testing.assert_allclose(to_numpy(moved(ms.to_device(x, "sim:1"))), expected, rtol=1e-12)
    with pytest.raises(ms.MovedError):
        model(x)


def test_save_and_load_rebuild_combinators(tmp_path):
    model = tied_model()
    x = data((3, 4), dtype="float64")
    path = tmp_path / "m.safetensors"
    ms.save(model, path)
    again = ms.load(path)
    assert type(again[0]) is layers.SkipConnection and type(again[0].layer) is layers.Parallel
    assert again[0].layer.connection == "add" and again[1][1].connection == "mul"
    assert type(again[0].layer.layers).__name__ == "TrackedList"
    assert ms.graph_id(again) == ms.graph_id(model)
    assert again[0].layer[0] is again[0].layer[1][0]
    assert again[1][0].weight is again[1][1].layer.weight
    np.testing.assert_array_equal(again(x), model(x))
    on_sim = ms.load(path, device="sim:1")
    np.testing.assert_allclose(to_numpy(on_sim(ms.to_device(x, "sim:1"))), model(x),
                               rtol=1e-12)


def test_changing_a_branch_list_changes_the_params():
    model = layers.Parallel("add", layers.Dense(2, 2, seed=0))
    assert len(ms.params(model)) == 2
    model.layers.append(layers.Dense(2, 2, seed=1))
    assert len(ms.params(model)) == 4
    model.layers = [layers.Dense(2, 2, seed=2)]
    assert type(model.layers).__name__ == "TrackedList" and len(ms.params(model)) == 2
    with pytest.raises(ms.ArgumentError, match="empty"):
        model.layers = []


@pytest.mark.parametrize("edit,message", [
    (lambda a: a["config"].update(connection="sum"), r"connection='sum' is not a connection"),
    (lambda a: a["children"].update(layers={"list": []}), "Parallel.layers is empty"),
    (lambda a: a["children"].update(layers={"list": [{"value": 3}]}),
     "Parallel layer 0 is a int"),
])
def test_a_stored_architecture_is_checked_by_the_combinators_converters(edit, message):
    """ms.load rebuilds a combinator through its converters: an edited file cannot hold an
    unknown connection or an empty or non-layer branch list."""
    from modelsync.io.architecture import build, encode_model, read_plan

    model = layers.Parallel("add", layers.Dense(2, 2, seed=0))
    paths = {id(p): k for k, p in ms.named_params(model).items()}
    architecture = encode_model(model, paths)
    stored = ms.named_params(model)
    rebuilt = build(read_plan(architecture, set(paths.values())), stored.__getitem__)
    assert type(rebuilt) is layers.Parallel and rebuilt.connection == "add"
    edit(architecture)
    with pytest.raises(ms.LoadError, match=message):
        build(read_plan(architecture, set(paths.values())), stored.__getitem__)
