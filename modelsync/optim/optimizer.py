"""The optimizer engine: per-Param state on each Param's device, flat runs, the step.

A rule (`modelsync.optim.rules`) subclasses `Optimizer` and writes only its maths: its
hyperparameters, the names of its state arrays, ``scalars(step)`` and the forms
``update_xp``, ``update_host``, ``loop`` and ``update_cuda``. The engine does the rest:
lazy state on the Param's device (`state`), a plan of flat runs and single Params
(`planner`), a kernel per state (`kernel`), state that follows a moved Param, and
state_dict. A rule never sees a Param: it is handed arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np

from .. import packing
from ..devices import HOST
from ..params import Param
from ..transfers import copy_to
from ..xp import zeros_on
from .bound import Bound
from .flatgroup import FlatGroup
from .kernel import Kernel, choose, run_scaled
from .planner import Plan, make_plan
from .state import State


class Optimizer(Bound):
    """Base of every rule: ``Rule(params, **hyper)``, then ``step()`` / ``zero_grad()``.

    ``params`` is any iterable of Params (``ms.params(model)``); a Param listed twice is
    bound once. ``step()`` updates every bound Param whose ``.grad`` is set (Params with no
    gradient are skipped, as in torch) and leaves ``.grad`` alone.
    """

    #: The rule's compiled host form, ``loop(param, grad, *state, *scalars)`` over 1-D
    #: arrays (`modelsync.kernels` compiles it with numba); None: NumPy in place.
    loop: ClassVar[Callable[..., None] | None] = None
    #: Scratch arrays ``update_host`` gets, each the shape of the Param.
    scratch_count: ClassVar[int] = 1

    def __init__(self, params: Iterable[Param], **hyper: Any) -> None:
        super().__init__(params, **hyper)
        # A model built layer by layer trains at flat speed from its first step: the loose
        # Params whose storage the library allocated are laid out flat (a Param over the
        # user's own array keeps aliasing it: ms.flatten does that one).
        packing.pack(self._params)
        self._states: dict[Param, State] = {}  # the Params updated one by one
        self._kernels: dict[Param, tuple[State, Kernel]] = {}  # each one's kernel
        self._plan: Plan | None = None

    # -- what it holds -----------------------------------------------------------------------
    @property
    def state(self) -> dict[Param, dict[str, Any]]:
        """Per-Param state keyed by Param (identity): ``{"step": int, name: array}``, the live
        arrays on each Param's device. Params not stepped yet have none."""
        if not self.state_names:
            return {}
        return {p: s.entry(self.state_names) for p, s in self._every_state().items()}

    @property
    def flat_groups(self) -> int:
        """How many flat runs the next step updates with one kernel each (0 before the first
        step): a diagnostic for tests and benchmarks."""
        return 0 if self._plan is None else len(self._plan.groups)

    def _every_state(self) -> dict[Param, State]:
        """Every bound Param's state, in bound order: its own, or views of its group's."""
        found = dict(self._states)
        for group in self._plan.groups if self._plan is not None else ():
            found.update(group.member_states())
        return {p: found[p] for p in self._params if p in found}

    def _step_of(self, p: Param) -> int | None:
        """How many steps ``p`` has taken (None: none yet); for tests of stateless rules."""
        state = self._every_state().get(p)
        return None if state is None else state.step

    # -- the step ----------------------------------------------------------------------------
    def _prepare_scaled_step(self, scale: float) -> Callable[[], None]:
        return self._prepare_step(scale)  # (fused into the kernels' pass where they can)

    def _prepare_step(self, scale: float | None = None) -> Callable[[], None]:
        plan = self._plan
        if plan is None or plan.needs_replan():
            plan = self._replan()
        self._scalars.clear()
        flat: list[tuple[FlatGroup, list[Any] | None]] = []
        for group in list(plan.groups):
            if group.store.all_grads_set():
                flat.append((group, None))  # every gradient is in the store's buffer already
                continue
            grads = Param.grads_of(group.members)
            for g in grads:
                if g is None:
                    self._dissolve(group, plan)  # this step goes Param by Param, as torch's
                    break
            else:
                flat.append((group, grads))
        todo: list[tuple[Param, Any, State | None]] = []
        for p, grad in zip(plan.singles, Param.grads_of(plan.singles), strict=True):
            if grad is None:
                continue
            state = self._states.get(p)
            if state is not None and state.device is not p.device and state.device != p.device:
                state = state.follow(p.device)  # moved on its own: may now be in a store
                plan.stale = True
            todo.append((p, grad, state))
        if scale is not None:  # (a store's own gradient buffer is writable: not looked at)
            for group, grads in flat:
                if grads is not None:
                    self.check_writable(group.members, grads)
            self.check_writable([p for p, _, _ in todo], [g for _, g, _ in todo])
        # every pull that could be refused happens before any Param is marked or changed
        Param.open_for_update(*[group.members for group, _ in flat], [p for p, _, _ in todo])

        def commit() -> None:
            for group, grads in flat:
                group.run(grads, scale)
            states, kernels = self._states, self._kernels
            for p, grad, state in todo:  # (one loop, no call per Param: a hot path)
                data = p.writable()  # (brought up to date in prepare: nothing left to pull)
                if state is None:
                    state = self._new_state(p)
                states[p] = state
                known = kernels.get(p)
                if known is None or known[0] is not state:
                    known = kernels[p] = (state, self._choose(p, state, data))
                state.step += 1
                run_scaled(known[1], data, grad, state.step, scale)

        return commit

    def _new_state(self, p: Param) -> State:
        """Zero state on ``p``'s device, step 0: made at its first step, as in torch."""
        return State(p.device, 0, [zeros_on(p.device, p.shape, p.dtype) for _ in self.state_names])

    def _choose(self, p: Param, state: State, data: Any) -> Kernel:
        contiguous = not isinstance(data, np.ndarray) or data.flags.c_contiguous
        return choose(self, self._scalars, state.device, state.arrays, p.shape, p.dtype,
                      contiguous=contiguous)

    def _replan(self) -> Plan:
        plan, states = make_plan(self, self._scalars, self._params, self._states, self._plan,
                                 flat=True)
        self._plan, self._states = plan, states
        self._kernels = {p: k for p, k in self._kernels.items() if states.get(p) is k[0]}
        return plan

    def _dissolve(self, group: FlatGroup, plan: Plan) -> None:
        """A member of ``group`` has no gradient: its members are stepped one by one from
        now on, each with a view of the group's state (a new plan regroups them if their
        step counts still agree)."""
        self._states.update(group.member_states())
        plan.groups.remove(group)
        order = {id(p): i for i, p in enumerate(self._params)}
        plan.singles = sorted(plan.singles + group.members, key=lambda p: order[id(p)])
        plan.stale = True

    # -- state_dict --------------------------------------------------------------------------
    def _state_entries(self) -> dict[str, Any]:
        if not self.state_names:
            return {}
        on_host = self._flat_state_on_host()
        entries: dict[str, Any] = {}
        every = self._every_state()
        for p, path in zip(self._params, self._paths, strict=True):
            state = every.get(p)
            if state is None:
                continue
            arrays = on_host.get(p)
            if arrays is None:
                arrays = [copy_to(a, HOST, reason="optimizer state_dict", what="state")
                          for a in state.arrays]
            entries[path] = {"step": state.step, **dict(zip(self.state_names, arrays,
                                                             strict=True))}
        return entries

    def _flat_state_on_host(self) -> dict[Param, list[Any]]:
        """Each flat-group member's state as host arrays: one copy per group and state name
        (one transfer for a device group, not one per Param), then views of it."""
        found: dict[Param, list[Any]] = {}
        for group in self._plan.groups if self._plan is not None else ():
            if not group.has_state:
                continue
            whole = [copy_to(a, HOST, reason="optimizer state_dict", what="state")
                     for a in group.state()]
            at = 0
            for p, size in zip(group.members, group.sizes, strict=True):
                found[p] = [a[at:at + size].reshape(p.shape) for a in whole]
                at += size
        return found

    def _prepare_state_load(self, checked: list[tuple[Param, int, list[Any]]]
                            ) -> Callable[[], None]:
        states = {p: State(p.device, step, [
            copy_to(a, p.device, reason="optimizer load_state_dict", what="state")
            for a in arrays]) for p, step, arrays in checked}

        def commit() -> None:
            self._states, self._kernels = states, {}
            self._plan = None  # flat groups are remade from the loaded state at the next step

        return commit
