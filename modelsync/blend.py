"""The soft update ``dst = tau*src + (1-tau)*dst``, in place and in one pass over memory: what
``sync(dst, src, tau=...)`` does to each buffer (target networks, weight averaging).

The formula written with arrays, ``tau * src + (1 - tau) * dst``, makes three passes and two
temporaries. Here the host runs one compiled loop (`modelsync.kernels`: numba, else NumPy
ufuncs with ``out=`` over cache-sized chunks), a GPU one ``ElementwiseKernel``; the simulated
device, whose arrays take no ``out=``, computes the formula itself. Every form gives the
formula's bits: ``tau`` and ``1 - tau`` rounded to the arrays' dtype (as NumPy casts a Python
float), each product and the sum rounded once to that dtype (float16 too), no fused
multiply-add. The GPU form runs with its arrays' GPU current (`modelsync.kernels.cuda`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kernels import host_kernels, prange
from .kernels.cuda import Elementwise

#: Elements per NumPy chunk: three arrays of it (src, dst, the scratch) stay in the L2 cache.
CHUNK = 1 << 15
_NUMBA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # (numba's float16 is partial)


def blend_loop(dst: Any, src: Any, t: Any, c: Any) -> None:  # pragma: no cover (compiled)
    """The host loop over 1-D arrays; ``t`` and ``c`` come in the arrays' dtype."""
    for i in prange(dst.shape[0]):
        dst[i] = t * src[i] + c * dst[i]


#: ``T(...)`` rounds each product and the sum to the arrays' dtype: CuPy's ``float16`` has no
#: arithmetic of its own (an operation on it runs in float32), so without the casts a float16
#: statement would round once where the host rounds after every operation. For float32 and
#: float64 the casts change nothing.
_CUDA = Elementwise("blend", "T s, T t, T c", "T d", "d = T(T(t * s) + T(c * d));")


class Blend:
    """The soft update with one ``tau``, ready for many arrays: ``Blend(tau)(dst, src)`` does
    ``dst[...] = tau * src + (1 - tau) * dst`` in place (both on one device, with one dtype
    and shape; ``src`` may be ``dst`` itself but must not partly overlap it). The kernels
    are chosen once, so a sync of a thousand loose Params pays for that once."""

    __slots__ = ("tau", "_kernels", "_scalars")

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self._kernels: Any = False  # host_kernels(), asked on the first host array
        self._scalars: dict[Any, tuple[Any, Any]] = {}  # dtype -> (tau, 1 - tau) in it

    def __call__(self, dst: Any, src: Any) -> None:
        tau = self.tau
        if type(dst) is np.ndarray:
            self._host(dst, src)
        elif type(dst).__module__.startswith("cupy"):
            _CUDA(src, *self._in(dst.dtype), dst)  # (launched on src's GPU, made current)
        else:
            dst[...] = tau * src + (1.0 - tau) * dst  # sim: the array API has no out=

    def _in(self, dtype: Any) -> tuple[Any, Any]:
        scalars = self._scalars.get(dtype)
        if scalars is None:  # (rounded as NumPy rounds a Python float it multiplies by)
            kind = dtype.type
            scalars = self._scalars[dtype] = (kind(self.tau), kind(1.0 - self.tau))
        return scalars

    def _host(self, dst: np.ndarray, src: np.ndarray) -> None:
        t, c = self._in(dst.dtype)
        if (dst.dtype in _NUMBA_DTYPES and dst.flags.c_contiguous and src.flags.c_contiguous
                and (src is dst or not np.may_share_memory(dst, src))):
            kernels = self._kernels
            if kernels is False:
                kernels = self._kernels = host_kernels()
            if kernels is not None:
                # (serial: one pass over memory gains little from a second core, and a
                # parallel loop on a busy machine waits milliseconds for a descheduled thread)
                kernels.loop(blend_loop, 0)(dst.reshape(-1), src.reshape(-1), t, c)
                return
        if dst.ndim != 1 or src.ndim != 1 or (src is not dst and np.may_share_memory(dst, src)):
            dst[...] = self.tau * src + (1.0 - self.tau) * dst  # (shaped, overlapping)
            return
        scratch = np.empty(min(CHUNK, dst.size), dtype=dst.dtype)
        for start in range(0, dst.size, CHUNK):
            d, s = dst[start:start + CHUNK], src[start:start + CHUNK]
            part = scratch[:d.size]
            np.multiply(s, t, out=part)
            np.multiply(d, c, out=d)
            np.add(d, part, out=d)


def blend(dst: Any, src: Any, tau: float) -> None:
    """``dst[...] = tau * src + (1 - tau) * dst`` in place, in one pass (see `Blend`)."""
    Blend(tau)(dst, src)
