"""The transformer layers: MultiHeadAttention, RMSNorm, PositionalEmbedding and Unembed.

Each is gradient-checked (ms.check_gradients, float64 central differences), matched with
its torch.nn equivalent on the same weights (forward, input gradient and every Param's
gradient, on host and sim:1), and refuses bad input naming the layer path. The Unembed's
tie to its Embedding is followed through every conversion, sync and save/load.

float32 tolerances against torch: rtol 1e-4 and atol 1e-5 (outputs and gradients are O(1);
the two sides sum the same products in different orders, about 1e-6 apart here).
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.devices import device_of
from modelsync.layers.base import Context
from modelsync.transfers import copy_to

torch = pytest.importorskip("torch")
F32 = {"rtol": 1e-4, "atol": 1e-5}


def to_dev(array: np.ndarray, dev: ms.Device):
    return copy_to(array, dev, reason="test", what="data")


def on(model, dev: ms.Device):
    return model if dev == ms.device("host") else ms.to_device(model, dev)


def randn(*shape: int, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward_and_back(model, x, dy, **kwargs):
    """(y, dx, {path: grad}) on the model's device, all brought to host NumPy."""
    for p in ms.params(model):
        p.grad = None
    y, back = model.forward(x, Context(train=True), **kwargs)
    dx = back(dy)
    grads = {path: to_numpy(p.grad) for path, p in ms.named_params(model).items()}
    return to_numpy(y), None if dx is None else to_numpy(dx), grads


def torch_module_like(module, model):
    """``module`` holding ``model``'s values, loaded by torch's own state_dict names."""
    sd = {k: torch.from_numpy(v) for k, v in ms.state_dict(model).items()}
    module.load_state_dict(sd, strict=True)
    return module


def torch_forward_and_back(fn, module, x: np.ndarray, dy: np.ndarray):
    xt = torch.from_numpy(x).requires_grad_()
    y = fn(xt)
    y.backward(torch.from_numpy(dy))
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads


def assert_close(ours, theirs, what: str) -> None:
    np.testing.assert_allclose(ours, theirs, err_msg=what, **F32)


# -- gradient checks --------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_gradients(causal, bias):
    model = layers.MultiHeadAttention(6, 3, bias=bias, causal=causal, seed=1)
    ms.check_gradients(model, randn(2, 5, 6), directions=3)


def test_rmsnorm_positional_and_unembed_gradients():
    ms.check_gradients(layers.RMSNorm(5, eps=1e-3), randn(2, 3, 5), directions=3)
    ms.check_gradients(layers.PositionalEmbedding(7, 4, seed=0), randn(2, 5, 4), directions=3)
    ms.check_gradients(layers.PositionalEmbedding(5, 4, seed=0), randn(5, 4), directions=3)
    ms.check_gradients(layers.Unembed(layers.Embedding(9, 4, seed=0)), randn(2, 3, 4),
                       directions=3)


def lm_chain(seed: int = 0, causal: bool = True):
    embed = layers.Embedding(11, 8, seed=seed)
    return layers.Chain(embed, layers.PositionalEmbedding(6, 8, seed=seed + 1),
                        layers.MultiHeadAttention(8, 2, causal=causal, seed=seed + 2),
                        layers.RMSNorm(8), layers.Unembed(embed))


@pytest.mark.parametrize("causal", [False, True])
def test_a_tied_language_model_chain_is_gradient_checked(causal):
    model = lm_chain(causal=causal)
    assert len(ms.params(model)) == 7  # the embedding's weight once
    tokens = np.random.default_rng(0).integers(0, 11, size=(3, 5))
    ms.check_gradients(model, tokens, directions=3)


# -- torch parity -------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_torch(dev, causal, bias):
    model = layers.MultiHeadAttention(8, 2, bias=bias, causal=causal, seed=3)
    module = torch_module_like(
        torch.nn.MultiheadAttention(8, 2, bias=bias, batch_first=True), model)
    x, dy = randn(3, 7, 8, seed=1), randn(3, 7, 8, seed=2)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7) if causal else None

    def run(xt):
        return module(xt, xt, xt, need_weights=False, attn_mask=mask)[0]

    want_y, want_dx, want_grads = torch_forward_and_back(run, module, x, dy)
    model = on(model, dev)
    y, dx, grads = forward_and_back(model, to_dev(x, dev), to_dev(dy, dev))
    assert_close(y, want_y, "y")
    assert_close(dx, want_dx, "dx")
    assert sorted(grads) == sorted(want_grads)
    for path in grads:
        assert_close(grads[path], want_grads[path], path)


def test_a_boolean_mask_matches_torch_attn_mask(dev):
    model = layers.MultiHeadAttention(8, 4, causal=True, seed=0)
    module = torch_module_like(torch.nn.MultiheadAttention(8, 4, batch_first=True), model)
    x, dy = randn(2, 5, 8, seed=1), randn(2, 5, 8, seed=2)
    blocked = np.zeros((5, 5), dtype=bool)
    blocked[:, 0] = True  # nobody may look at the first position, except itself:
    blocked[0, 0] = False  # (a row with every key masked is NaN, in torch as here)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5) == -math.inf
    torch_mask = torch.from_numpy(blocked) | causal

    def run(xt):
        return module(xt, xt, xt, need_weights=False, attn_mask=torch_mask)[0]

    want_y, want_dx, _ = torch_forward_and_back(run, module, x, dy)
    model = on(model, dev)
    y, dx, _ = forward_and_back(model, to_dev(x, dev), to_dev(dy, dev),
                                mask=to_dev(blocked, dev))
    assert_close(y, want_y, "y")
    assert_close(dx, want_dx, "dx")
    per_sample = to_dev(np.broadcast_to(blocked, (2, 5, 5)).copy(), dev)
    assert_close(to_numpy(model(to_dev(x, dev), mask=per_sample)), want_y, "(N, T, T) mask")
    assert not np.allclose(to_numpy(model(to_dev(x, dev))), want_y)  # the mask mattered


def test_causal_output_at_t_ignores_later_positions():
    model = layers.MultiHeadAttention(4, 2, causal=True, seed=0)
    x = randn(1, 6, 4)
    changed = x.copy()
    changed[:, 4:] += 10.0
    y, y2 = model(x), model(changed)
    np.testing.assert_array_equal(y[:, :4], y2[:, :4])
    assert not np.allclose(y[:, 4:], y2[:, 4:])


def test_rmsnorm_matches_torch(dev):
    model = layers.RMSNorm(6, eps=1e-5)
    model.weight.assign(randn(6, seed=5))
    module = torch_module_like(torch.nn.RMSNorm(6, eps=1e-5), model)
    x, dy = randn(4, 3, 6, seed=1) * 3, randn(4, 3, 6, seed=2)
    want_y, want_dx, want_grads = torch_forward_and_back(module, module, x, dy)
    y, dx, grads = forward_and_back(on(model, dev), to_dev(x, dev), to_dev(dy, dev))
    assert_close(y, want_y, "y")
    assert_close(dx, want_dx, "dx")
    assert_close(grads["weight"], want_grads["weight"], "weight")


def test_tied_embedding_and_unembed_match_torch_linear_with_the_tied_weight(dev):
    embed = layers.Embedding(10, 4, seed=0)
    model = layers.Chain(embed, layers.RMSNorm(4), layers.Unembed(embed))
    tokens = np.random.default_rng(0).integers(0, 10, size=(3, 5))
    dy = randn(3, 5, 10, seed=1)
    t_embed = torch.nn.Embedding(10, 4)
    t_norm = torch.nn.RMSNorm(4, eps=1e-6)
    with torch.no_grad():
        t_embed.weight.copy_(torch.from_numpy(to_numpy(embed.weight.value)))
    logits = torch.nn.functional.linear(t_norm(t_embed(torch.from_numpy(tokens))),
                                        t_embed.weight)
    logits.backward(torch.from_numpy(dy))
    model = on(model, dev)
    y, _, grads = forward_and_back(model, to_dev(tokens, dev), to_dev(dy, dev))
    assert_close(y, logits.detach().numpy(), "logits")
    assert list(grads) == ["layers.0.weight", "layers.1.weight"]
    assert_close(grads["layers.0.weight"], t_embed.weight.grad.numpy(), "tied weight")
    # Both uses add into the one gradient: the Unembed's share alone differs from it.
    x = to_dev(randn(3, 5, 4), dev)
    unembed = model.layers[2]
    unembed.embedding.weight.grad = None
    unembed.forward(x, Context(train=True))[1](to_dev(dy, dev))
    assert not np.allclose(to_numpy(unembed.embedding.weight.grad), grads["layers.0.weight"])


def test_positional_embedding_adds_the_first_rows(dev):
    model = layers.PositionalEmbedding(8, 3, seed=0)
    table = to_numpy(model.weight.value)
    x = randn(2, 5, 3)
    dy = randn(2, 5, 3, seed=1)
    y, dx, grads = forward_and_back(on(model, dev), to_dev(x, dev), to_dev(dy, dev))
    np.testing.assert_array_equal(y, x + table[:5])
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(grads["weight"][:5], dy.sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(grads["weight"][5:], 0)


def test_sim_and_host_attention_agree_in_forward_and_every_gradient():
    """The array-API core (sim:1) against the NumPy fast path (host, checked above)."""
    model = layers.MultiHeadAttention(8, 2, causal=True, dtype="float64", seed=0)
    x, dy = randn(2, 4, 8, dtype="float64"), randn(2, 4, 8, seed=1, dtype="float64")
    host = forward_and_back(model, x, dy)
    sim = ms.device("sim:1")
    other = forward_and_back(ms.to_device(model, sim), to_dev(x, sim), to_dev(dy, sim))
    for a, b in zip(host[:2], other[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    for path in host[2]:
        np.testing.assert_allclose(host[2][path], other[2][path], rtol=1e-12, atol=1e-13)


# -- initialisation -------------------------------------------------------------------------------
def test_attention_initialises_as_torch_does():
    dim = 64
    model = layers.MultiHeadAttention(dim, 8, seed=0)
    shapes = {path: p.shape for path, p in ms.named_params(model).items()}
    assert shapes == {"in_proj_weight": (3 * dim, dim), "in_proj_bias": (3 * dim,),
                      "out_proj.weight": (dim, dim), "out_proj.bias": (dim,)}
    w = model.in_proj_weight.value
    xavier = math.sqrt(6 / (dim + 3 * dim))
    assert np.abs(w).max() <= xavier and np.abs(w).max() > 0.95 * xavier
    linear = 1 / math.sqrt(dim)
    out = model.out_proj.weight.value
    assert np.abs(out).max() <= linear and np.abs(out).max() > 0.95 * linear
    assert not np.any(model.in_proj_bias.value) and not np.any(model.out_proj.bias.value)
    assert model.in_proj_weight.dtype == np.float32
    again = layers.MultiHeadAttention(dim, 8, seed=0)
    for a, b in zip(ms.params(model), ms.params(again), strict=True):
        np.testing.assert_array_equal(a.value, b.value)
    plain = layers.MultiHeadAttention(dim, 8, bias=False, dtype="float64", seed=0)
    assert plain.in_proj_bias is None and plain.out_proj.bias is None
    assert list(ms.named_params(plain)) == ["in_proj_weight", "out_proj.weight"]
    assert plain.out_proj.weight.dtype == np.float64


def test_rmsnorm_and_positional_init():
    norm = layers.RMSNorm(5)
    assert norm.eps == 1e-6 and np.array_equal(norm.weight.value, np.ones(5, np.float32))
    pos = layers.PositionalEmbedding(200, 50, seed=0)
    w = pos.weight.value
    assert w.shape == (200, 50) and w.dtype == np.float32
    assert abs(w.mean()) < 0.05 and abs(w.std() - 1) < 0.05
    np.testing.assert_array_equal(w, layers.PositionalEmbedding(200, 50, seed=0).weight.value)


# -- ties through every operation --------------------------------------------------------------
@ms.layer
@attrs.define(eq=False)
class TinyLM:
    """A tied language model with named fields (the test's ``model.embed``/``.unembed``)."""

    embed: layers.Embedding
    pos: layers.PositionalEmbedding
    attn: layers.MultiHeadAttention
    norm: layers.RMSNorm
    unembed: layers.Unembed

    def forward(self, tokens, ctx):
        x, back_e = self.embed.forward(tokens, ctx.child("embed"))
        backs = [back_e]
        for name in ("pos", "attn", "norm", "unembed"):
            x, back = getattr(self, name).forward(x, ctx.child(name))
            backs.append(back)

        def pullback(dy):
            for back in reversed(backs):
                dy = back(dy)
            return dy

        return x, pullback


def tiny_lm(seed: int = 0) -> TinyLM:
    embed = layers.Embedding(12, 8, seed=seed)
    return TinyLM(embed, layers.PositionalEmbedding(6, 8, seed=seed + 1),
                  layers.MultiHeadAttention(8, 2, causal=True, seed=seed + 2),
                  layers.RMSNorm(8), layers.Unembed(embed))


def assert_tied(model) -> None:
    assert model.unembed.embedding is model.embed
    assert model.unembed.weight is model.embed.weight
    assert model.unembed.embedding.weight is model.embed.weight
    assert len(ms.params(model)) == 7
    assert ms.named_params(model)["embed.weight"] is model.embed.weight


def lm_batch(dev: ms.Device, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 12, size=(4, 6))
    targets = rng.standard_normal((4, 6, 12)).astype(np.float32)
    return to_dev(tokens, dev), to_dev(targets, dev)


def values(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


@pytest.mark.parametrize("mode", ["copy", "move", "wrap"])
def test_the_tie_survives_to_device(mode):
    original = tiny_lm()
    before = values(original)
    converted = ms.to_device(original, "sim:1", mode=mode)
    assert_tied(converted)
    assert ms.graph_id(converted) == ms.graph_id(ms.to_host(converted))
    assert values(converted).keys() == before.keys()
    for path, value in values(converted).items():
        np.testing.assert_array_equal(value, before[path])
    # One training step updates the one tied weight (the sum of both uses' gradients).
    sim = ms.device("sim:1")
    tokens, targets = lm_batch(sim)
    opt = optim.SGD(ms.params(converted), lr=0.5)
    ms.backprop(converted, losses.mse, tokens, targets)
    opt.step()
    assert_tied(converted)
    assert not np.array_equal(to_numpy(converted.embed.weight.value), before["embed.weight"])
    back = ms.to_host(converted)
    assert_tied(back)


def test_the_tie_survives_sync_and_save_load(tmp_path):
    dst = ms.to_device(tiny_lm(seed=0), "sim:1")
    src_host = ms.to_host(dst)  # same graph, to be trained on the host
    tokens, targets = lm_batch(ms.device("host"))
    opt = optim.SGD(ms.params(src_host), lr=0.5)
    ms.backprop(src_host, losses.mse, tokens, targets)
    opt.step()
    ms.sync(dst, src_host)
    assert_tied(dst)
    trained = values(src_host)
    for path, value in values(dst).items():
        np.testing.assert_array_equal(value, trained[path])
    ms.sync(dst, src_host, tau=0.5)
    assert_tied(dst)

    ms.save(dst, tmp_path / "lm.safetensors")
    for device in ("host", "sim:1"):
        again = ms.load(tmp_path / "lm.safetensors", device)
        assert_tied(again)
        assert ms.graph_id(again) == ms.graph_id(dst)
        for path, value in values(again).items():
            np.testing.assert_array_equal(value, trained[path])


def test_a_training_step_moves_no_parameter_bytes(dev):
    model = ms.to_device(tiny_lm(), dev)
    tokens, targets = lm_batch(dev)
    opt = optim.Adam(ms.params(model), lr=1e-2)
    ms.backprop(model, losses.mse, tokens, targets)
    opt.step()  # the first step makes the optimizer's state
    with ms.track_transfers() as ledger:
        for _ in range(2):
            opt.zero_grad()
            ms.backprop(model, losses.mse, tokens, targets)
            opt.step()
    assert ledger.bytes_of("param") == 0
    assert device_of(model.embed.weight.grad) == dev


# -- bad input ------------------------------------------------------------------------------------
def test_num_heads_must_divide_dim():
    with pytest.raises(ms.ArgumentError, match=r"num_heads=3 does not divide dim=8"):
        layers.MultiHeadAttention(8, 3)
    model = layers.MultiHeadAttention(8, 4)
    with pytest.raises(ms.ArgumentError, match="num_heads=5"):
        model.num_heads = 5
    assert model.num_heads == 4
    with pytest.raises(ms.ArgumentError, match="num_heads=0 is outside"):
        layers.MultiHeadAttention(8, 0)
    with pytest.raises(ms.ArgumentTypeError, match="causal=1 is a int"):
        layers.MultiHeadAttention(8, 2, causal=1)


def test_a_sequence_longer_than_max_len_names_path_length_and_max_len():
    model = layers.Chain(layers.Dense(3, 3), layers.PositionalEmbedding(4, 3))
    with pytest.raises(ms.ArgumentError, match=r"layers\.1: the sequence length T=5 .*"
                                               r"exceeds max_len=4"):
        model(randn(2, 5, 3))
    assert model(randn(2, 4, 3)).shape == (2, 4, 3)


@pytest.mark.parametrize("make,shape,expected", [
    (lambda: layers.MultiHeadAttention(8, 2), (2, 3, 6), r"expected \(N, T, dim=8\)"),
    (lambda: layers.MultiHeadAttention(8, 2), (3, 8), r"expected \(N, T, dim=8\)"),
    (lambda: layers.RMSNorm(8), (2, 6), "expected last axis dim=8"),
    (lambda: layers.PositionalEmbedding(4, 8), (2, 3, 6), "expected last axis dim=8"),
    (lambda: layers.PositionalEmbedding(4, 8), (8,), r"expected \(N, T, dim=8\)"),
    (lambda: layers.Unembed(layers.Embedding(5, 8)), (2, 6), "expected last axis dim=8"),
])
def test_a_wrong_width_names_the_path_and_the_shapes(make, shape, expected):
    model = layers.Chain(make())
    with pytest.raises(ms.ArgumentError, match=rf"layers\.0: input has shape .*{expected}"):
        model(np.zeros(shape, dtype=np.float32))


def test_a_bad_mask_is_named_before_anything_runs():
    model = layers.MultiHeadAttention(4, 2, seed=0)
    x = randn(2, 3, 4)
    for bad in (np.zeros((3, 4), dtype=bool), np.zeros((3, 3, 3), dtype=bool),
                np.zeros((3, 3), dtype=np.float32)):
        with pytest.raises(ms.ArgumentError, match=r"mask has shape .* expected a bool array "
                                                   r"of shape \(T, T\)=\(3, 3\)"):
            model(x, mask=bad)
    with pytest.raises(ms.ArgumentTypeError, match="mask is a list"):
        model(x, mask=[[True]])
    sim = ms.device("sim:1")
    with pytest.raises(ms.DeviceMismatchError, match="mask is on sim:1"):
        model(x, mask=to_dev(np.zeros((3, 3), dtype=bool), sim))


def test_unembed_needs_an_embedding_and_out_proj_a_square_dense():
    with pytest.raises(ms.ArgumentTypeError, match="expected a layers.Embedding"):
        layers.Unembed(layers.Dense(3, 3))
    model = layers.MultiHeadAttention(4, 2)
    with pytest.raises(ms.ArgumentTypeError, match=r"out_proj holds Dense\(4, 3"):
        model.out_proj = layers.Dense(4, 3)
    with pytest.raises(ms.ArgumentError, match="eps=0 is outside"):
        layers.RMSNorm(4, eps=0)
    with pytest.raises(ms.ArgumentError, match="max_len=0 is outside"):
        layers.PositionalEmbedding(0, 4)


def test_float64_inputs_feed_float32_layers_and_get_float64_gradients():
    model = layers.Chain(layers.PositionalEmbedding(5, 4, seed=0),
                         layers.MultiHeadAttention(4, 2, seed=0), layers.RMSNorm(4))
    x = randn(2, 5, 4, dtype="float64")
    y, back = model.forward(x, Context(train=True))
    assert y.dtype == np.float32
    dx = back(np.ones(y.shape, dtype=np.float32))
    assert dx.dtype == np.float64
    assert all(p.grad.dtype == np.float32 for p in ms.params(model))


def test_gelu_and_its_pullback_match_torch_and_warn_nothing_at_extremes():
    """The block's MLP activation (its pullback reuses the forward's exponential)."""
    x = randn(50, 40) * 4
    x[0, :4] = [1e4, -1e4, 30.0, -30.0]
    dy = randn(50, 40, seed=1)
    xt = torch.from_numpy(x).requires_grad_()
    want = torch.nn.functional.gelu(xt, approximate="tanh")
    want.backward(torch.from_numpy(dy))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, back = layers.activations.activate("gelu", x)
        dx = back(dy)
    assert_close(y, want.detach().numpy(), "gelu")
    assert_close(dx, xt.grad.numpy(), "gelu pullback")


def test_a_pre_norm_block_with_skip_connections_is_checked_and_matches_torch(dev):
    """The benchmark's block (benchmarks/bench_transformer.py) at toy sizes, causal."""
    attn = layers.MultiHeadAttention(8, 2, causal=True, seed=0)
    block = layers.Chain(
        layers.SkipConnection(layers.Chain(layers.RMSNorm(8), attn)),
        layers.SkipConnection(layers.Chain(layers.LayerNorm(8), layers.Dense(8, 16, "gelu", seed=1),
                                           layers.Dense(16, 8, seed=2))))
    x, dy = randn(2, 5, 8), randn(2, 5, 8, seed=1)
    ms.check_gradients(block, x, directions=2)
    t_attn = torch_module_like(torch.nn.MultiheadAttention(8, 2, batch_first=True), attn)
    norm1, norm2 = torch.nn.RMSNorm(8, eps=1e-6), torch.nn.LayerNorm(8)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(16, 8))
    mlp_part = block.layers[1].layer
    mlp[0].load_state_dict({k: torch.from_numpy(v)
                            for k, v in ms.state_dict(mlp_part.layers[1]).items()})
    mlp[2].load_state_dict({k: torch.from_numpy(v)
                            for k, v in ms.state_dict(mlp_part.layers[2]).items()})
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5)

    def run(xt):
        h = norm1(xt)
        xt = xt + t_attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return xt + mlp(norm2(xt))

    want_y, want_dx, _ = torch_forward_and_back(run, t_attn, x, dy)
    y, dx, grads = forward_and_back(on(block, dev), to_dev(x, dev), to_dev(dy, dev))
    assert_close(y, want_y, "y")
    assert_close(dx, want_dx, "dx")
    assert_close(grads["layers.0.layer.layers.1.in_proj_weight"],
                 t_attn.in_proj_weight.grad.numpy(), "in_proj_weight")
    assert_close(grads["layers.1.layer.layers.1.weight"], mlp[0].weight.grad.numpy(), "mlp")


@pytest.mark.parametrize("bias", [True, False])
def test_attention_comes_back_from_a_file_with_its_configuration(tmp_path, bias):
    model = layers.MultiHeadAttention(8, 4, bias=bias, causal=True, seed=0)
    ms.save(model, tmp_path / "attn.safetensors")
    again = ms.load(tmp_path / "attn.safetensors", "sim:1")
    assert (again.dim, again.num_heads, again.causal) == (8, 4, True)
    assert isinstance(again.out_proj, layers.Dense)
    assert list(ms.named_params(again)) == list(ms.named_params(model))
    x = randn(2, 5, 8)
    np.testing.assert_array_equal(to_numpy(again(to_dev(x, ms.device("sim:1")))),
                                  to_numpy(ms.to_device(model, "sim:1")(
                                      to_dev(x, ms.device("sim:1")))))
