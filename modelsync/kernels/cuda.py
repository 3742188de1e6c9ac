"""Fused CuPy kernels for the optimizer rules: each declared next to its rule's maths, made
on its first call and cached here.

Compiled with ``--fmad=false`` so that ``a * b + c`` is rounded twice, as NumPy rounds it:
the GPU then follows the host's arithmetic operation for operation.
"""

from __future__ import annotations

from typing import Any

_OPTIONS = ("--fmad=false",)


class Elementwise:
    """A ``cupy.ElementwiseKernel`` called ``modelsync_<name>``, declared at import (no CuPy
    needed) and built on its first call: ``kernel(*inputs, *outputs)``."""

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
        return kernel(*args)
