"""How the optimizer rules' kernels run: numba for the host loops, CuPy for the GPU (`cuda`).

A rule writes its host loop as a plain function over 1-D arrays next to its other forms
(`modelsync.optim.rules`), with `prange` (from here: plain ``range`` until compiled) for the
loop over elements. The optimizers' NumPy path makes one pass over memory per operation
(ten-odd for Adam); the compiled loop makes one pass in all, on every core.
`host_kernels()` gives the module that compiles and runs the loops (`_numba`) when numba is
installed and works, else None, and the optimizers then keep their NumPy in-place path.
``MODELSYNC_KERNELS=numpy`` forces the NumPy path (tests compare the two), ``numba`` asks
for numba and warns if it cannot be had, ``auto`` (the default) uses numba when it can.
Kernels compile on their first call, or load from numba's on-disk cache (``cache=True``),
so only the first optimizer step pays.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

#: The environment variable that picks the host kernels: "auto", "numba" or "numpy".
ENV = "MODELSYNC_KERNELS"
CHOICES = ("auto", "numba", "numpy")

#: What a rule's loop calls its parallel loop over elements: plain ``range`` in Python (so the
#: loop also runs, slowly, without numba); compiled, it is ``numba.prange``.
prange = range

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}


def choice() -> str:
    """The kernels asked for by ``MODELSYNC_KERNELS`` (an unknown value warns, means auto)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        warnings.warn(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}; using auto",
                      RuntimeWarning, stacklevel=3)
        return "auto"
    return value


def host_kernels() -> ModuleType | None:
    """The numba kernels module (`modelsync.kernels._numba`), or None for the NumPy path.

    Imports numba the first time it is called (about 0.2 s); later calls are a dict lookup.
    """
    wanted = choice()
    if wanted == "numpy":
        return None
    if "numba" not in _loaded:
        try:
            from . import _numba
        except Exception as exc:  # not installed, or broken: the NumPy path still works
            _loaded["numba"] = None
            _why["numba"] = f"{type(exc).__name__}: {exc}"
            missing = isinstance(exc, ImportError) and getattr(exc, "name", "") == "numba"
            if not missing and wanted == "auto":  # installed but unusable: say so, once
                warnings.warn(f"numba is installed but cannot be used ({_why['numba']}); "
                              "the optimizers use NumPy", RuntimeWarning, stacklevel=2)
        else:
            _loaded["numba"] = _numba
    module = _loaded["numba"]
    if module is None and wanted == "numba":
        warnings.warn(f"{ENV}=numba but numba cannot be used ({_why['numba']}); the "
                      "optimizers use NumPy", RuntimeWarning, stacklevel=3)
    return module


def disable(reason: str) -> None:
    """Stop using numba in this process (a kernel failed to compile): NumPy from now on."""
    _loaded["numba"] = None
    _why["numba"] = reason
    warnings.warn(f"numba kernels disabled ({reason}); the optimizers use NumPy",
                  RuntimeWarning, stacklevel=3)


def backend() -> str:
    """"numba" or "numpy": what the next optimizer set up on the host will use."""
    return "numba" if host_kernels() is not None else "numpy"
