"""Devices: where arrays live, and the array namespace that computes there.

Three kinds: ``host`` (NumPy), ``sim`` (array_api_strict's extra devices, a simulated
accelerator whose arrays refuse to mix with NumPy's as CuPy's do) and ``cuda`` (CuPy).
Copying *between* devices is not done here: that is `modelsync.transfers`' one job.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

import attrs
import numpy as np

from .errors import ArgumentTypeError, DeviceError

SIM_DEVICE_COUNT = 2
_SPEC_RE = re.compile(r"(host|cpu|sim|cuda)(?::([0-9]+))?")  # used with fullmatch: ASCII only


@attrs.frozen(repr=False, order=False)
class Device:
    """An immutable, hashable device handle that prints as its spec ("cuda:0", "sim:1", "host")."""

    kind: str
    index: int

    def __str__(self) -> str:
        return "host" if self.kind == "host" and self.index == 0 else f"{self.kind}:{self.index}"

    def __repr__(self) -> str:
        return f"Device({str(self)!r})"

    @property
    def xp(self) -> Any:
        """The array namespace that computes on this device."""
        return _namespace(self.kind)

    @property
    def native(self) -> Any:
        """The backend's own device object (array_api_strict.Device, cupy.cuda.Device)."""
        if self.kind == "sim":
            return _strict_devices()[self.index]
        if self.kind == "cuda":
            return _cupy().cuda.Device(self.index)
        return "cpu"


HOST = Device("host", 0)
_NO_CONTEXT = contextlib.nullcontext()


def on_device(dev: Device | None) -> Any:
    """The context in which work for ``dev`` runs: ``with on_device(dev): ...``.

    The one rule for CuPy, kept here: every CuPy allocation and kernel launch runs with its
    target GPU current, since CuPy allocates and launches on the *current* GPU (``cuda:0``
    unless told otherwise), whatever device the arrays it is handed live on. For a CUDA
    device this is ``cupy.cuda.Device(index)``; for the host, the simulated devices (whose
    arrays are placed by ``device=``) and None it does nothing."""
    if dev is None or dev.kind != "cuda":
        return _NO_CONTEXT
    return _cupy().cuda.Device(dev.index)


def on_array_device(array: Any) -> Any:
    """`on_device` of the device ``array`` lives on (a CuPy array's own ``cupy.cuda.Device``;
    nothing for any other array or object): for loops over many arrays, where asking each
    one's `Device` would cost more than the check."""
    if type(array) is np.ndarray or not type(array).__module__.startswith("cupy"):
        return _NO_CONTEXT
    return array.device
_CHECKED: set[Device] = {HOST}  # Device objects already known to be usable here


@functools.cache
def _namespace(kind: str) -> Any:
    if kind == "host":
        return np
    if kind == "sim":
        import array_api_strict

        return array_api_strict
    # CuPy through array_api_compat: the standard's names (concat, astype, matrix_transpose)
    # that raw CuPy lacks, on CuPy arrays; fused kernels import cupy itself.
    import array_api_compat.cupy

    return array_api_compat.cupy


@functools.cache
def _strict_devices() -> dict[int, Any]:
    import array_api_strict

    names = {"device1": 1, "device2": 2}
    return {names[_strict_name(d)]: d for d in array_api_strict.__array_namespace_info__().devices()
            if _strict_name(d) in names}


def _strict_name(dev: Any) -> str:
    """An array_api_strict device's name ("device1"); it has no public attribute for it, so
    read the one it keeps, else its repr ("array_api_strict.Device('device1')")."""
    name = getattr(dev, "name", None) or getattr(dev, "_device", None)
    if isinstance(name, str):
        return name
    match = re.search(r"'([^']*)'", repr(dev))
    return match.group(1) if match else ""


def _cupy() -> Any:
    import cupy

    return cupy


@functools.cache
def cuda_status() -> tuple[int, str]:
    """How many CUDA devices CuPy can use here, and if none, why (for error messages)."""
    try:
        import cupy
    except ImportError:
        return 0, "CuPy is not installed (pip install 'modelsync[cuda12]' or '[cuda13]')"
    except Exception as exc:  # a broken CuPy install: say what it said
        return 0, f"CuPy failed to import: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return 0, f"CuPy is installed but no CUDA driver or GPU is usable: {exc}"
    if count == 0:
        return 0, "CuPy is installed but no GPU is present"
    try:  # a driver alone is not enough: kernels need NVRTC (the CUDA toolkit or cupy[ctk])
        probe = cupy.ElementwiseKernel("T x", "T y", "y = x", "modelsync_probe")
        probe(cupy.zeros(1, dtype="float32"))
    except Exception as exc:
        return 0, f"CuPy sees {count} GPU(s) but cannot compile kernels: {exc}"
    return count, ""


def available_devices() -> list[Device]:
    """Every device usable on this machine: host, the simulated ones, then each GPU."""
    found = [HOST] + [Device("sim", i) for i in range(1, SIM_DEVICE_COUNT + 1)]
    count, _ = cuda_status()
    return found + [Device("cuda", i) for i in range(count)]


def device(spec: str | Device = "auto") -> Device:
    """Parse a device spec ("host", "cpu", "sim:1", "cuda:0", "auto") into a usable Device.

    Raises DeviceError saying why a spec cannot be used, with the devices that can.
    """
    if isinstance(spec, Device):
        if spec in _CHECKED:
            return spec
        device(str(spec))  # a hand-made Device("sim", 3) is checked like "sim:3"
        _CHECKED.add(spec)
        return spec
    if not isinstance(spec, str):
        raise ArgumentTypeError(
            f"device={spec!r} is a {type(spec).__name__}; expected a Device or a spec string "
            f"such as 'host', 'sim:1' or 'cuda:0'. Available: {_listing()}")
    text = spec.strip().lower()
    if text == "auto":
        return Device("cuda", 0) if cuda_status()[0] > 0 else Device("sim", 1)
    match = _SPEC_RE.fullmatch(text)
    if match is None:
        raise DeviceError(
            f"device={spec!r} is not a device spec; expected 'host' (or 'cpu'), 'sim:N', "
            f"'cuda:N' or 'auto'. Available: {_listing()}")
    kind, index_text = match.groups()
    if kind in ("host", "cpu"):
        if index_text not in (None, "0"):
            raise DeviceError(
                f"device={spec!r}: the host has only index 0. Available: {_listing()}")
        return HOST
    index = int(index_text) if index_text is not None else (1 if kind == "sim" else 0)
    if kind == "sim":
        if not 1 <= index <= SIM_DEVICE_COUNT:
            raise DeviceError(
                f"device={spec!r}: simulated devices are sim:1 and sim:2, not index {index}. "
                f"Available: {_listing()}")
        return Device("sim", index)
    count, why = cuda_status()
    if count == 0:
        raise DeviceError(f"device={spec!r} is not usable: {why}. Available: {_listing()}")
    if index >= count:
        raise DeviceError(
            f"device={spec!r}: index {index} is out of range, this machine has {count} GPU(s). "
            f"Available: {_listing()}")
    return Device("cuda", index)


def _listing() -> str:
    return ", ".join(str(d) for d in available_devices())


def device_of(array: Any) -> Device:
    """The Device an array lives on; TypeError for anything that is not a supported array."""
    if isinstance(array, np.ndarray):
        return HOST
    module = type(array).__module__
    if module.startswith("array_api_strict"):
        for index, dev in _strict_devices().items():
            if array.device == dev:
                return Device("sim", index)
        raise ArgumentTypeError(
            f"an array_api_strict array on {array.device} is not on a simulated device; "
            "use ms.to_device(numpy_array, 'sim:1') to make sim arrays")
    if module.startswith("cupy"):
        return Device("cuda", int(array.device.id))
    raise ArgumentTypeError(
        "expected an array (numpy.ndarray, cupy.ndarray or a sim array), "
        f"got {type(array).__name__}")


def is_array(value: Any) -> bool:
    """True for arrays of any supported device."""
    if isinstance(value, np.ndarray):
        return True
    module = type(value).__module__
    return module.startswith(("array_api_strict", "cupy")) and hasattr(value, "shape")


_DTYPE_NAMES: dict[Any, str] = {}  # array_api_strict dtypes
_NUMPY_DTYPE_NAMES: dict[np.dtype, str] = {}  # NumPy's .name is computed in Python each time


def dtype_name(dtype: Any) -> str:
    """A dtype's canonical short name ("float32"), whatever backend it came from (cached:
    conversions and sync ask it for every Param)."""
    if isinstance(dtype, np.dtype):  # NumPy and CuPy
        name = _NUMPY_DTYPE_NAMES.get(dtype)
        if name is None:
            name = _NUMPY_DTYPE_NAMES[dtype] = dtype.name
        return name
    try:  # array_api_strict dtypes (the cache holds only those: they warn if compared to NumPy's)
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        name = str(dtype).rsplit(".", 1)[-1]
        try:
            _DTYPE_NAMES[dtype] = name
        except TypeError:  # an unhashable dtype object: just answer
            pass
        return name


def nbytes_of(array: Any) -> int:
    """The size of an array's data in bytes, on any device (array_api_strict dtypes have no
    ``itemsize``, so it is read from the NumPy dtype of the same name)."""
    return int(array.size) * np.dtype(dtype_name(array.dtype)).itemsize
