"""The gradient-transform engine: a transform changes each bound Param's ``.grad`` in place
and leaves the Param alone, so it composes in front of a rule with `chain`. Like a rule, a
transform writes only its maths (``scalars`` and the forms ``update_xp``, ``update_host``,
``update_cuda``; see `modelsync.optim.rules.transforms`); this runs them per Param, with a
kernel chosen for each Param's device (`kernel`). Transforms keep no state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ..devices import Device
from ..params import Param
from .bound import Bound
from .kernel import Kernel, choose


class GradientTransform(Bound):
    """Base of every gradient transform: ``Transform(params, **hyper)``, then ``step()``
    changes the ``.grad`` of every bound Param that has one, in place."""

    #: The maths reads the Params' values (``data`` is ``p.value``; else None).
    reads_params: ClassVar[bool] = False
    #: Scratch arrays ``update_host`` gets, each the shape of the gradient.
    scratch_count: ClassVar[int] = 1
    loop: ClassVar[None] = None  # (no compiled form: a transform is one pass already)

    def __init__(self, params: Iterable[Param], **hyper: Any) -> None:
        super().__init__(params, **hyper)
        self._kernels: dict[Param, tuple[Device, Kernel]] = {}

    def _prepare_step(self) -> Callable[[], None]:
        self._scalars.clear()
        reads = self.reads_params
        todo = [(p, grad, p.value if reads else None)  # (a wrap-mode pull happens here)
                for p, grad in zip(self._params, Param.grads_of(self._params), strict=True)
                if grad is not None]

        def commit() -> None:
            for p, grad, value in todo:
                self._kernel(p, grad)(value, grad, 0)

        return commit

    def _kernel(self, p: Param, grad: Any) -> Kernel:
        """The kernel for ``p``'s gradient on its device (made again after a move)."""
        dev = p.device
        known = self._kernels.get(p)
        if known is None or known[0] != dev:
            known = self._kernels[p] = (dev, choose(self, self._scalars, dev, [], p.shape,
                                                    p.dtype, contiguous=True))
        return known[1]
