"""``chain(a, b, ...)``: optimizers and gradient transforms run one after another each step
(transforms, then a rule), as one optimizer: an `OptimizerChain`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ArgumentError, ArgumentTypeError
from . import statedict
from .bound import Bound
from .optimizer import Optimizer
from .transform import GradientTransform


class OptimizerChain(Bound):
    """Several optimizers and transforms as one: ``step`` prepares every part, then runs
    each part's update in order (so a refused transfer in any part changes nothing);
    ``zero_grad``, ``state_dict`` and ``load_state_dict`` go over the parts. Built by
    `chain`. (Not `layers.Chain`, which chains layers.)"""

    def __init__(self, *parts: Optimizer | GradientTransform | OptimizerChain) -> None:
        if not parts:
            raise ArgumentError(
                "chain() needs at least one optimizer, e.g. optim.chain(optim.ClipNorm(ps, 1.0), "
                "optim.Adam(ps))")
        for i, part in enumerate(parts):
            _check_part(i, part)
        self.parts: tuple[Bound, ...] = parts
        params, paths, seen = [], [], set()
        for part in parts:
            for p, path in zip(part.params, part.paths, strict=True):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
                    paths.append(path)
        super().__init__(params, paths=paths)
        self._owner = next((part._owner for part in parts if part._owner), None)

    @property
    def type_name(self) -> str:
        return "Chain"  # what state_dicts saved before the rename say

    def __repr__(self) -> str:
        return f"chain({', '.join(repr(p) for p in self.parts)})"

    def _step_name(self) -> str:
        return "optim.chain(...).step()"

    def _rebind_hint(self) -> str:
        return "build each part of the chain on ms.params(gpu_model)"

    def _prepare_step(self) -> Callable[[], None]:
        commits = [part._prepare_step() for part in self.parts]

        def commit() -> None:
            for run in commits:
                run()

        return commit

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    @property
    def state(self) -> dict[Any, dict[str, Any]]:
        """Each part's state, merged (a Param's entries from every part that keeps some)."""
        merged: dict[Any, dict[str, Any]] = {}
        for part in self.parts:
            for p, entry in part.state.items():
                merged.setdefault(p, {}).update(entry)
        return merged

    def state_dict(self) -> dict[str, Any]:
        """``{"type": "Chain", "hyper": {}, "state": {}, "parts": [each part's state_dict]}``."""
        return {"type": self.type_name, "hyper": {}, "state": {},
                "parts": [part.state_dict() for part in self.parts]}

    def _prepare_load(self, sd: Any, where: str = "state_dict") -> Callable[[], None]:
        sd = statedict.mapping(sd, where)
        statedict.exact_keys(sd, ("type", "hyper", "state", "parts"), where)
        statedict.check_type(sd["type"], self.type_name, where,
                             "load a state_dict saved from an optim.chain of the same parts")
        for key in ("hyper", "state"):
            if statedict.mapping(sd[key], f"{where}[{key!r}]"):
                raise ArgumentError(f"{where}[{key!r}] must be empty for a Chain")
        parts = sd["parts"]
        if isinstance(parts, (str, bytes, Mapping)) or not isinstance(parts, (list, tuple)):
            raise ArgumentError(f"{where}['parts'] is a {type(parts).__name__}; expected a list")
        if len(parts) != len(self.parts):
            raise ArgumentError(
                f"{where}['parts'] has {len(parts)} part(s) but this chain has "
                f"{len(self.parts)}: {self!r}")
        commits = [part._prepare_load(entry, f"{where}['parts'][{i}]")
                   for i, (part, entry) in enumerate(zip(self.parts, parts, strict=True))]

        def commit() -> None:
            for run in commits:
                run()

        return commit


def _check_part(index: int, part: Any) -> None:
    if isinstance(part, Bound):
        return
    if isinstance(part, type) and issubclass(part, Bound):
        raise ArgumentTypeError(
            f"chain part {index} is the class {part.__name__}, not an optimizer; build it with "
            f"its Params: optim.{part.__name__}(ms.params(model), ...)")
    if isinstance(part, (list, tuple)):
        raise ArgumentTypeError(
            f"chain part {index} is a {type(part).__name__}; pass the optimizers as separate "
            "arguments: optim.chain(a, b)")
    raise ArgumentTypeError(
        f"chain part {index} is a {type(part).__name__}; expected an optimizer such as "
        "optim.WeightDecay(ps, 1e-4) or optim.SGD(ps, lr=0.1)")


def chain(*parts: Optimizer | GradientTransform | OptimizerChain) -> OptimizerChain:
    """One optimizer that runs ``parts[0].step()``, then ``parts[1].step()``, ... each step.

    ``chain(WeightDecay(ps, 1e-4), Momentum(ps, lr=0.01, momentum=0.9))`` equals torch
    ``SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)``.
    """
    return OptimizerChain(*parts)
