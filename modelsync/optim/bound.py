"""What every optimizer, gradient transform and chain shares: the Params it is bound to, its
hyperparameters, ``step()`` as prepare-then-commit, ``zero_grad()`` and the state_dict
protocol. Rules build on `Optimizer`, transforms on `GradientTransform`.

A step is two phases so that it does all it says or nothing (SPEC: a refused transfer
changes nothing). ``_prepare_step()`` does everything that can fail (wrap-mode pulls, state
that follows a moved Param, the transfer guard) and changes no value, gradient or state;
the commit it returns does the arithmetic. A chain prepares every part before it commits
any.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .. import interrupts
from ..checks import as_float
from ..errors import ArgumentError, ArgumentTypeError
from ..params import Param
from ..xp import namespace
from . import statedict
from .binding import bind_params
from .kernel import Scalars, scale_in_place
from .ranges import restrict_range


class Bound:
    """Bound to Params at construction; ``step()`` / ``zero_grad()`` / ``state_dict()``.

    ``params`` is any iterable of Params (``ms.params(model)``); a Param listed twice is
    bound once. The hyperparameters are the class's `restrict_range` attributes, in the
    order they are declared (a subclass's after its base's), set from ``hyper``.
    """

    hyper_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "hyper_names" in vars(cls):  # declared by hand: kept as declared
            return
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names += [n for n, v in vars(klass).items()
                      if isinstance(v, restrict_range) and n not in names]
        cls.hyper_names = tuple(names)

    def __init__(self, params: Iterable[Param], *, paths: Sequence[str] | None = None,
                 **hyper: Any) -> None:
        if set(hyper) != set(self.hyper_names):
            raise ArgumentTypeError(
                f"{type(self).__name__} passes hyperparameters {sorted(hyper)} to "
                f"Optimizer.__init__; its restrict_range attributes are {list(self.hyper_names)}")
        for name in self.hyper_names:  # checked first, as torch checks them
            setattr(self, name, hyper[name])
        self._params, self._paths = bind_params(params, paths)
        #: the layer name of the model the Params came from (ms.params(model)), for messages
        self._owner: str | None = getattr(params, "owner", None)
        self._scalars = Scalars(self.scalars)

    # -- what it is bound to ---------------------------------------------------------------
    @property
    def params(self) -> tuple[Param, ...]:
        """The bound Params, each once, in the order given."""
        return tuple(self._params)

    @property
    def paths(self) -> tuple[str, ...]:
        """Each bound Param's key in state_dict: its model path, or its index as a string."""
        return tuple(self._paths)

    @property
    def type_name(self) -> str:
        """The name state_dict stores (and load_state_dict expects)."""
        return type(self).__name__

    @property
    def hyper(self) -> dict[str, Any]:
        """The hyperparameters, JSON-able (tuples become lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self.hyper_names}

    @property
    def state(self) -> dict[Param, dict[str, Any]]:
        """Per-Param state keyed by Param (identity); none here."""
        return {}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyper_names)
        sep = ", " if hyper else ""
        return f"{self.type_name}({hyper}{sep}params={len(self._params)})"

    # -- the training-step API ---------------------------------------------------------------
    def step(self, *, grad_scale: float | None = None) -> None:
        """Apply one update to every bound Param that has a gradient; a step that cannot be
        done (a transfer the guard refuses) raises and changes nothing; a Ctrl-C during the
        update is delivered right after it. A step that finds no gradient on any bound Param
        raises ArgumentError: it would silently do nothing (torch skips such Params one by
        one; when all are skipped it is almost always an optimizer bound to another copy of
        the model).

        ``grad_scale``: multiply every gradient the step reads by it first, in place (after
        the step ``p.grad`` holds the scaled gradient, exactly as ``p.grad *= grad_scale``
        then ``step()`` would leave it). A rule's compiled host loop does it in the pass over
        memory it makes anyway: `DataParallel` divides summed gradients by the ranks so."""
        scale = None if grad_scale is None else _check_grad_scale(grad_scale)
        for p in self._params:  # (the first Param has a gradient in any real step: O(1))
            if p.grad is not None:
                break
        else:
            raise self._no_gradients()
        if scale is None:
            interrupts.call(self._prepare_step())
            return
        interrupts.call(self._prepare_scaled_step(scale))

    def _prepare_scaled_step(self, scale: float) -> Callable[[], None]:
        """`_prepare_step` for ``step(grad_scale=scale)``: by default every gradient is
        scaled in place, once, before the commit runs (a rule fuses it into its kernels)."""
        params = self._params
        self.check_writable(params, Param.grads_of(params))
        commit = self._prepare_step()

        def scaled_commit() -> None:
            seen: set[int] = set()
            for grad in Param.grads_of(params):
                if grad is not None and id(grad) not in seen:
                    seen.add(id(grad))
                    scale_in_place(grad, scale)
            commit()

        return scaled_commit

    def check_writable(self, params: Sequence[Param], grads: Sequence[Any]) -> None:
        """A scaled step writes the gradients: a read-only one is refused before anything
        changes."""
        for p, grad in zip(params, grads, strict=True):
            if isinstance(grad, np.ndarray) and not grad.flags.writeable:
                paths = dict(zip(map(id, self._params), self._paths, strict=True))
                path = paths.get(id(p), "a Param")
                raise ArgumentError(
                    f"{self._step_name()}: grad_scale scales each gradient in place, but "
                    f"{path}'s .grad is a read-only array; set p.grad to a writable copy "
                    "(np.array(g)) or scale it yourself and call step()")

    def _no_gradients(self) -> ArgumentError:
        first = self._params[0]
        owner = f"the {self._owner} on {first.device}" if self._owner else (
            f"the model on {first.device}")
        shown = ", ".join(self._paths[:3]) + (", ..." if len(self._paths) > 3 else "")
        return ArgumentError(
            f"{self._step_name()}: none of the {len(self._params)} Params it is bound to "
            f"({shown}) has a gradient, so the step would change nothing. They are the Params "
            f"of {owner} it was built from; a copy made by ms.to_device(model, ...) (mode "
            "'copy' or 'wrap') has Params of its own, and a backprop through the copy leaves "
            f"these without gradients: bind the optimizer to the copy, "
            f"{self._rebind_hint()}. Otherwise run ms.backprop (or set p.grad) before step()")

    def _step_name(self) -> str:
        return f"{self.type_name}.step()"

    def _rebind_hint(self) -> str:
        return f"optim.{self.type_name}(ms.params(gpu_model), ...)"

    def _prepare_step(self) -> Callable[[], None]:
        """Do what may fail and change nothing; return the commit that does the rest."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Forget every bound Param's gradient (``.grad = None``, PyTorch's default); a flat
        store's gradient buffer is kept for the next backward pass to write into."""
        Param.clear_grads(self._params)

    # -- the maths' per-step numbers and default forms ---------------------------------------
    def scalars(self, step: int) -> tuple[Any, ...]:
        """The numbers every form of the maths takes at step ``step`` (1, 2, ...), computed
        once per step on the host, in the order the compiled ``loop`` takes them."""
        return ()

    def update_host(self, data: Any, grad: Any, state: list[Any], s: tuple[Any, ...],
                    scratch: tuple[Any, ...]) -> None:
        """NumPy in place; by default the array-API form, with any new state array it makes
        copied back into the old one (flat state is views of one buffer: they must stay)."""
        before = list(state)
        self.update_xp(data, grad, state, s, np)
        for i, (old, new) in enumerate(zip(before, state, strict=True)):
            if new is not old:
                old[...] = new
                state[i] = old

    def update_cuda(self, data: Any, grad: Any, state: list[Any], s: tuple[Any, ...]) -> None:
        """One fused CuPy kernel; by default the array-API form."""
        self.update_xp(data, grad, state, s, namespace(grad))

    def update_xp(self, data: Any, grad: Any, state: list[Any], s: tuple[Any, ...],
                  xp: Any) -> None:
        """The array-API form: the reference, and what the simulated device runs."""
        raise NotImplementedError

    # -- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"type", "hyper", "state": {path: {"step": int, name: host array}}}``; Params that
        have no state yet are left out (as in torch)."""
        return {"type": self.type_name, "hyper": self.hyper, "state": self._state_entries()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state from `state_dict`, each state array on its
        Param's device. Everything is checked first: a bad dict raises ArgumentError naming
        the first problem and changes nothing."""
        interrupts.call(self._prepare_load(state_dict))

    def _prepare_load(self, sd: Any, where: str = "state_dict") -> Callable[[], None]:
        """Validate ``sd`` and copy its arrays to the devices; return the commit to run."""
        sd = statedict.mapping(sd, where)
        statedict.exact_keys(sd, ("type", "hyper", "state"), where)
        statedict.check_type(sd["type"], self.type_name, where,
                             f"load a state_dict saved from a {self.type_name}")
        new_hyper = statedict.check_hyper(
            type(self), self.hyper_names, statedict.mapping(sd["hyper"], f"{where}['hyper']"),
            f"{where}['hyper']")
        state = statedict.mapping(sd["state"], f"{where}['state']")
        checked = statedict.check_entries(state, dict(zip(self._paths, self._params,
                                                          strict=True)),
                                          self.state_names, self.type_name, f"{where}['state']")
        load_state = self._prepare_state_load(checked)

        def commit() -> None:
            for name, value in new_hyper.items():
                setattr(self, name, value)
            load_state()

        return commit

    def _state_entries(self) -> dict[str, Any]:
        """state_dict's ``state``: ``{path: {"step": int, name: host array}}``."""
        return {}

    def _prepare_state_load(self, checked: list[tuple[Param, int, list[Any]]]
                            ) -> Callable[[], None]:
        """Copy checked entries to their Params' devices; return what installs them."""
        return _nothing


def _check_grad_scale(grad_scale: Any) -> float:
    """``grad_scale`` as a float: a finite real number, not a bool (`as_float`)."""
    scale = as_float("grad_scale", grad_scale)
    if not math.isfinite(scale):
        raise ArgumentError(f"grad_scale={grad_scale!r} is not finite; expected a finite "
                            "real number (or None for no scaling)")
    return scale


def _nothing() -> None:
    return None


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
