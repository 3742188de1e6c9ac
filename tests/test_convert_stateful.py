"""Model-based test of the conversion semantics: hypothesis drives random programs (convert in
each mode, train on either side with a real optimizer, read, assign, sync, detach, to_host)
against a plain host reference, and after every step checks that every live model reads what
the reference says, that moved models refuse use, that training moved 0 parameter bytes, and
that each optimizer's state is the reference optimizer's. Some optimizer steps run under
transfer_guard("disallow"): a refused one must leave every value, gradient and optimizer
state as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import modelsync as ms
from modelsync import layers, optim
from modelsync.transfers import copy_to

DEVICES = ["host", "sim:1", "sim:2"]
MODES = ["copy", "move", "wrap"]
LR = 0.05
#: The optimizers a model is trained with (the reference runs the same one on the host).
OPTIMIZERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=LR),
    "Momentum": lambda ps: optim.Momentum(ps, lr=LR, momentum=0.9),
    "Adam": lambda ps: optim.Adam(ps, lr=LR),
    "ClipNorm+WeightDecay+AdamW": lambda ps: optim.chain(
        optim.ClipNorm(ps, 1.0), optim.WeightDecay(ps, 1e-2), optim.AdamW(ps, lr=LR)),
}


def build(seed: int):
    return layers.Chain(layers.Dense(3, 4, "tanh", dtype="float64", seed=seed),
                        layers.Dense(4, 2, dtype="float64", seed=seed + 1))


def read(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


def assert_same_state(got, want, where="state_dict") -> None:
    """Two state_dicts alike: the same keys, types and step counts, arrays to 1e-12."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same_state(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=where)
    else:
        assert got == want, where


class Handle:
    """A model the program made, the reference cell it should read, its graph, and the
    optimizer bound to its Params with the state the reference optimizer has reached."""

    def __init__(self, model, cell: int, graph: int, rule: str, opt=None, ref_state=None
                 ) -> None:
        self.model, self.cell, self.graph = model, cell, graph
        self.rule = rule
        self.opt = opt if opt is not None else OPTIMIZERS[rule](ms.params(model))
        self.ref_state = ref_state  # the reference optimizer's state_dict (None: fresh)
        self.alive = True
        self.wrapper_of: Handle | None = None  # set on a wrapper: its original
        self.wrapped_by: Handle | None = None  # set on an original: its wrapper


class ConversionMachine(RuleBasedStateMachine):
    """Random programs over copy/move/wrap; the reference is one dict of arrays per cell."""

    @initialize()
    def start(self) -> None:
        self.cells: dict[int, dict[str, np.ndarray]] = {}
        self.handles: list[Handle] = []
        for graph, (seed, opt) in enumerate(((0, "Adam"), (10, "ClipNorm+WeightDecay+AdamW"))):
            model = build(seed)
            self.handles.append(Handle(model, self._new_cell(read(model)), graph, opt))
        self.batch_rng = np.random.default_rng(0)
        self._next_graph = 2
        # every program starts with one wrap, so steps on a stale side come up often
        first = self.handles[0]
        wrapper = Handle(ms.to_device(first.model, "sim:1", mode="wrap"), first.cell, 0,
                         "Momentum")
        wrapper.wrapper_of, first.wrapped_by = first, wrapper
        self.handles.append(wrapper)

    def _new_cell(self, values: dict[str, np.ndarray]) -> int:
        key = len(self.cells)
        self.cells[key] = {k: v.copy() for k, v in values.items()}
        return key

    def _pick(self, index: int) -> Handle:
        live = [h for h in self.handles if h.alive]
        return live[index % len(live)]

    def _linked(self, h: Handle) -> bool:
        return h.wrapper_of is not None or h.wrapped_by is not None

    @rule(index=st.integers(0, 50), where=st.sampled_from(DEVICES), mode=st.sampled_from(MODES),
          opt=st.sampled_from(sorted(OPTIMIZERS)))
    def convert(self, index: int, where: str, mode: str, opt: str) -> None:
        h = self._pick(index)
        if mode != "copy" and self._linked(h):
            with pytest.raises(ms.CoherenceError):
                ms.to_device(h.model, where, mode=mode)
            return
        with ms.track_transfers() as t:
            new = ms.to_device(h.model, where, mode=mode)
        moved_bytes = sum(p.nbytes for p in ms.params(new))
        assert t.bytes_of("param") <= moved_bytes  # (a move also carries the grads)
        if mode == "copy":
            self.handles.append(Handle(new, self._new_cell(self.cells[h.cell]), h.graph, opt))
        elif mode == "move":  # the same Params: the optimizer bound to them keeps working
            h.alive = False
            self.handles.append(Handle(new, h.cell, h.graph, h.rule, h.opt, h.ref_state))
        else:
            wrapper = Handle(new, h.cell, h.graph, opt)
            wrapper.wrapper_of, h.wrapped_by = h, wrapper
            self.handles.append(wrapper)

    def _reference_step(self, h: Handle, set_grads) -> None:
        """The same step on the host: a model with the cell's values, the same rule with the
        state the reference reached; then the cell and the reference state move on."""
        reference = build(0)  # same architecture; loaded with the cell's values
        for path, p in ms.named_params(reference).items():
            p.assign(self.cells[h.cell][path])
        opt = OPTIMIZERS[h.rule](ms.params(reference))
        if h.ref_state is not None:
            opt.load_state_dict(h.ref_state)
        set_grads(reference)
        opt.step()
        self.cells[h.cell] = read(reference)
        h.ref_state = opt.state_dict()
        assert_same_state(h.opt.state_dict(), h.ref_state)

    @rule(index=st.integers(0, 50))
    def train_step(self, index: int) -> None:
        h = self._pick(index)
        dev = ms.params(h.model)[0].device
        x = self.batch_rng.normal(size=(5, 3))
        y = self.batch_rng.integers(0, 2, size=5)
        xd, yd = ms.to_device(x, dev), ms.to_device(y, dev)
        with ms.track_transfers() as t:
            h.opt.zero_grad()
            ms.backprop(h.model, ms.losses.cross_entropy, xd, yd)
            h.opt.step()
        assert t.bytes_of("param") == 0, t.events
        self._reference_step(h, lambda ref: ms.backprop(ref, ms.losses.cross_entropy, x, y))

    def _step_by_hand(self, h: Handle, grads: dict[str, np.ndarray]) -> None:
        """Set ``grads`` (by path; the others None) on ``h``'s Params."""
        for path, p in ms.named_params(h.model).items():
            g = grads.get(path)
            p.grad = None if g is None else copy_to(g, p.device, reason="test", what="grad")

    @rule(index=st.integers(0, 50), seed=st.integers(0, 2**16), stale_first=st.booleans())
    def guarded_step(self, index: int, seed: int, stale_first: bool) -> None:
        """An optimizer step under transfer_guard("disallow") from gradients set by hand (a
        backward pass would read, and so pull, the values first): it needs a transfer when
        a wrap-mode side is stale or its state must follow a moved Param, and must then
        raise and change nothing; else it is an ordinary step. With ``stale_first`` the
        other side of a wrap first steps its last layer only, so this side is stale for
        some Params only (every invariant check reads, and so pulls, both sides)."""
        h = self._pick(index)
        rng = np.random.default_rng(seed)
        partner = h.wrapper_of or h.wrapped_by
        if stale_first and partner is not None:
            last = {path: rng.normal(size=p.shape)
                    for path, p in ms.named_params(partner.model).items()
                    if path.startswith("layers.1.")}
            self._step_by_hand(partner, last)
            partner.opt.step()
            self._reference_step(partner, lambda ref: self._set_reference_grads(ref, last))
        grads = {path: rng.normal(size=p.shape) for path, p in ms.named_params(h.model).items()}
        self._step_by_hand(h, grads)
        before = h.opt.state_dict()
        try:
            with ms.transfer_guard("disallow"):
                h.opt.step()
        except ms.TransferError:
            event("guarded step refused")
            for path, p in ms.named_params(h.model).items():
                np.testing.assert_array_equal(to_numpy(p.grad), grads[path], err_msg=path)
            assert_same_state(h.opt.state_dict(), before)
            return  # (the invariant checks that every value is as it was)
        event("guarded step done")
        self._reference_step(h, lambda ref: self._set_reference_grads(ref, grads))

    @staticmethod
    def _set_reference_grads(ref, grads: dict[str, np.ndarray]) -> None:
        for path, p in ms.named_params(ref).items():
            p.grad = grads[path].copy() if path in grads else None

    @rule(index=st.integers(0, 50), value=st.floats(-2, 2))
    def assign(self, index: int, value: float) -> None:
        h = self._pick(index)
        path, p = next(iter(ms.named_params(h.model).items()))
        p.assign(np.full(p.shape, value))
        self.cells[h.cell][path] = np.full(p.shape, value)

    @rule(dst_index=st.integers(0, 50), src_index=st.integers(0, 50),
          tau=st.sampled_from([1.0, 0.5]), by_structure=st.booleans())
    def sync(self, dst_index: int, src_index: int, tau: float, by_structure: bool) -> None:
        dst, src = self._pick(dst_index), self._pick(src_index)
        check = "structure" if by_structure else "graph"
        if dst is src:
            with pytest.raises(ValueError, match="same model"):
                ms.sync(dst.model, src.model, check=check, tau=tau)
            return
        if check == "graph" and dst.graph != src.graph:
            with pytest.raises(ms.GraphMismatchError):
                ms.sync(dst.model, src.model, check=check, tau=tau)
            return  # the invariant checks that nothing changed
        ms.sync(dst.model, src.model, check=check, tau=tau)
        source = self.cells[src.cell]
        self.cells[dst.cell] = {k: tau * source[k] + (1 - tau) * v
                                for k, v in self.cells[dst.cell].items()}

    @rule(index=st.integers(0, 50))
    def detach(self, index: int) -> None:
        h = self._pick(index)
        if h.wrapper_of is None:
            with pytest.raises(ValueError, match="not a wrapper"):
                ms.detach(h.model)
            return
        assert ms.detach(h.model) is h.model
        original = h.wrapper_of
        original.wrapped_by, h.wrapper_of = None, None
        h.cell = self._new_cell(self.cells[h.cell])

    @rule(index=st.integers(0, 50), seed=st.integers(0, 5))
    def replace_a_layer(self, index: int, seed: int) -> None:
        """Change the tree itself (what cached walks and sync plans must notice): the last
        layer becomes a new Dense on the same device, so the model is a graph of its own."""
        h = self._pick(index)
        if self._linked(h):
            return  # a wrap link is per Param: replacing linked Params is not this test's job
        dev = ms.params(h.model)[0].device
        fresh = ms.to_device(layers.Dense(4, 2, dtype="float64", seed=100 + seed), dev)
        ms.named_params(h.model)  # walked (and cached) after the new layer was made...
        h.model.layers[1] = fresh  # ...so only this change can tell the cache it is stale
        h.opt = OPTIMIZERS[h.rule](ms.params(h.model))  # bound to the Params it has now
        h.ref_state = None
        h.graph = self._next_graph
        self._next_graph += 1
        for name, p in ms.named_params(fresh).items():
            self.cells[h.cell][f"layers.1.{name}"] = to_numpy(p.value)

    @rule(index=st.integers(0, 50), opt=st.sampled_from(sorted(OPTIMIZERS)))
    def to_host(self, index: int, opt: str) -> None:
        h = self._pick(index)
        result = ms.to_host(h.model)
        if h.wrapper_of is not None:
            assert result is h.wrapper_of.model
        else:
            self.handles.append(Handle(result, self._new_cell(self.cells[h.cell]), h.graph,
                                       opt))

    @invariant()
    def every_live_model_reads_the_reference(self) -> None:
        if not hasattr(self, "handles"):
            return
        for h in self.handles:
            if h.alive:
                got = read(h.model)
                for path, expected in self.cells[h.cell].items():
                    np.testing.assert_allclose(got[path], expected, rtol=1e-12, atol=1e-12,
                                               err_msg=path)
            else:
                with pytest.raises(ms.MovedError):
                    ms.params(h.model)


# MS_PROGRAMS lowers the count for quick local runs; CI runs the full 2,000 programs.
ConversionMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MS_PROGRAMS", 2000)), stateful_step_count=8, deadline=None)
TestConversionPrograms = ConversionMachine.TestCase
