"""Fused CuPy kernels for the optimizer rules and the soft update: each declared next to its
maths, made on its first call and cached here.

Compiled with ``--fmad=false`` so that ``a * b + c`` is rounded twice, as NumPy rounds it:
the GPU then follows the host's arithmetic operation for operation. Two differences remain,
written down in docs/design.md ("CuPy's arithmetic"):

- float32 subnormals are flushed to zero: CuPy appends ``-ftz=true`` to every compile after
  the caller's options (so no option here can turn it off), and its own ufuncs are built the
  same way. A kernel therefore skips the operations that are exact no-ops on the host (a
  multiply by 1, a subtraction of a zero) so that a value it does not change keeps its bits;
  a value it does change may lose a subnormal input or result. float64 is not flushed.
- CuPy's ``float16`` has no arithmetic of its own (each operation runs in float32): a kernel
  that may see float16 rounds every operation back with ``T(...)``, and the optimizer rules
  keep float16 off their fused kernels (`modelsync.optim.kernel`).

A kernel launches with the GPU of its first argument current (`modelsync.devices.on_device`).
"""

from __future__ import annotations

from typing import Any

_OPTIONS = ("--fmad=false",)


class Elementwise:
    """A ``cupy.ElementwiseKernel`` called ``modelsync_<name>``, declared at import (no CuPy
    needed) and built on its first call: ``kernel(*inputs, *outputs)``, launched on the GPU
    that holds the first argument (a CuPy array), whichever GPU is current."""

    __slots__ = ("name", "in_params", "out_params", "body", "_kernel")

    def __init__(self, name: str, in_params: str, out_params: str, body: str) -> None:
        self.name = name
        self.in_params = in_params
        self.out_params = out_params
        self.body = body
        self._kernel: Any = None

    def __call__(self, *args: Any) -> Any:
        kernel = self._kernel
        if kernel is None:
            import cupy

            kernel = self._kernel = cupy.ElementwiseKernel(
                self.in_params, self.out_params, self.body, f"modelsync_{self.name}",
                options=_OPTIONS)
        with args[0].device:  # (a cupy.cuda.Device: CuPy launches on the current GPU)
            return kernel(*args)
