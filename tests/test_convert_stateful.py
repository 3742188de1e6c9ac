"""Model-based test of the conversion semantics: hypothesis drives random programs (convert in
each mode, train on either side, read, assign, sync, detach, to_host) against a plain host
reference, and after every step checks that every live model reads what the reference says,
that moved models refuse use, and that training moved 0 parameter bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import sgd_step, to_numpy
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import modelsync as ms
from modelsync import layers

DEVICES = ["host", "sim:1", "sim:2"]
MODES = ["copy", "move", "wrap"]
LR = 0.05


def build(seed: int):
    return layers.Chain(layers.Dense(3, 4, "tanh", dtype="float64", seed=seed),
                        layers.Dense(4, 2, dtype="float64", seed=seed + 1))


def read(model) -> dict[str, np.ndarray]:
    return {path: to_numpy(p.value) for path, p in ms.named_params(model).items()}


class Handle:
    """A model the program made, the reference cell it should read, and its graph."""

    def __init__(self, model, cell: int, graph: int) -> None:
        self.model, self.cell, self.graph = model, cell, graph
        self.alive = True
        self.wrapper_of: Handle | None = None  # set on a wrapper: its original
        self.wrapped_by: Handle | None = None  # set on an original: its wrapper


class ConversionMachine(RuleBasedStateMachine):
    """Random programs over copy/move/wrap; the reference is one dict of arrays per cell."""

    @initialize()
    def start(self) -> None:
        self.cells: dict[int, dict[str, np.ndarray]] = {}
        self.handles: list[Handle] = []
        for graph, seed in enumerate((0, 10)):
            model = build(seed)
            self.handles.append(Handle(model, self._new_cell(read(model)), graph))
        self.batch_rng = np.random.default_rng(0)
        self._next_graph = 2

    def _new_cell(self, values: dict[str, np.ndarray]) -> int:
        key = len(self.cells)
        self.cells[key] = {k: v.copy() for k, v in values.items()}
        return key

    def _pick(self, index: int) -> Handle:
        live = [h for h in self.handles if h.alive]
        return live[index % len(live)]

    def _linked(self, h: Handle) -> bool:
        return h.wrapper_of is not None or h.wrapped_by is not None

    @rule(index=st.integers(0, 50), where=st.sampled_from(DEVICES), mode=st.sampled_from(MODES))
    def convert(self, index: int, where: str, mode: str) -> None:
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
            self.handles.append(Handle(new, self._new_cell(self.cells[h.cell]), h.graph))
        elif mode == "move":
            h.alive = False
            self.handles.append(Handle(new, h.cell, h.graph))
        else:
            wrapper = Handle(new, h.cell, h.graph)
            wrapper.wrapper_of, h.wrapped_by = h, wrapper
            self.handles.append(wrapper)

    @rule(index=st.integers(0, 50))
    def train_step(self, index: int) -> None:
        h = self._pick(index)
        dev = ms.params(h.model)[0].device
        x = self.batch_rng.normal(size=(5, 3))
        y = self.batch_rng.integers(0, 2, size=5)
        xd, yd = ms.to_device(x, dev), ms.to_device(y, dev)
        reference = build(0)  # same architecture; loaded with the cell's values
        for path, p in ms.named_params(reference).items():
            p.assign(self.cells[h.cell][path])
        with ms.track_transfers() as t:
            sgd_step(h.model, xd, yd, LR)
        assert t.bytes_of("param") == 0, t.events
        sgd_step(reference, x, y, LR)
        self.cells[h.cell] = read(reference)

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
        h.graph = self._next_graph
        self._next_graph += 1
        for name, p in ms.named_params(fresh).items():
            self.cells[h.cell][f"layers.1.{name}"] = to_numpy(p.value)

    @rule(index=st.integers(0, 50))
    def to_host(self, index: int) -> None:
        h = self._pick(index)
        result = ms.to_host(h.model)
        if h.wrapper_of is not None:
            assert result is h.wrapper_of.model
        else:
            self.handles.append(Handle(result, self._new_cell(self.cells[h.cell]), h.graph))

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
