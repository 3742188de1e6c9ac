"""Fused CuPy kernels for the optimizer rules: each one made on first use and cached here.

Compiled with ``--fmad=false`` so that ``a * b + c`` is rounded twice, as NumPy rounds it:
the GPU then follows the host's arithmetic operation for operation.
"""

from __future__ import annotations

from typing import Any

_KERNELS: dict[str, Any] = {}
_OPTIONS = ("--fmad=false",)


def elementwise(name: str, in_params: str, out_params: str, body: str) -> Any:
    """The cached ``cupy.ElementwiseKernel`` called ``modelsync_<name>``."""
    kernel = _KERNELS.get(name)
    if kernel is None:
        import cupy

        kernel = _KERNELS[name] = cupy.ElementwiseKernel(
            in_params, out_params, body, f"modelsync_{name}", options=_OPTIONS)
    return kernel
