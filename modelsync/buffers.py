"""Buffer: state a layer owns that is not trained (BatchNorm's running statistics, counters).

A Buffer is a Param the optimizers never see: it has the Param's storage, device, origin,
wrap-mode link and move semantics (so every conversion, the coherence protocol and io treat
it like a Param), but `ms.params` leaves it out, it holds no gradient, and it may be an
integer counter (int64) as well as floating statistics.
"""

from __future__ import annotations

from typing import Any

from .devices import device_of, dtype_name, is_array
from .errors import ArgumentError, ArgumentTypeError, DeviceMismatchError
from .params import Param

#: The dtypes a Buffer may hold: floating statistics, integer counters.
FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int32", "int64")
BUFFER_DTYPES = FLOAT_DTYPES + INT_DTYPES


class Buffer(Param):
    """One array of a layer's state that is not trained: ``.value`` reads it (a newer wrap
    twin is pulled first), ``assign`` writes it in place, checked for shape, dtype and
    device; ``is_counter`` tells an integer counter from floating statistics."""

    __slots__ = ()

    def check_dtype(self, value: Any, name: str | None) -> None:
        if dtype_name(value.dtype) not in BUFFER_DTYPES:
            raise ArgumentTypeError(
                f"Buffer {name or ''} value has dtype {dtype_name(value.dtype)}; expected one "
                f"of {BUFFER_DTYPES} (floating statistics or an integer counter)")

    @property
    def is_counter(self) -> bool:
        """Whether this Buffer counts (an integer dtype) rather than holds statistics."""
        return dtype_name(self.dtype) in INT_DTYPES

    @property
    def grad(self) -> Any:
        """Always None: a Buffer is not trained."""
        return None

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not None:
            raise ArgumentTypeError(f"Buffer {self.name or ''}: a Buffer is not trained and "
                                    "holds no gradient")

    def accumulate_grad(self, delta: Any) -> None:
        raise ArgumentTypeError(f"Buffer {self.name or ''}: a Buffer is not trained and "
                                "accumulates no gradient")

    def assign(self, array: Any, *, path: str | None = None) -> None:
        """Write ``array`` into this Buffer in place: it must have the Buffer's shape, dtype
        (a counter takes integers only) and device, else an error naming ``path`` (or the
        Buffer's name) and the value, with nothing changed."""
        check_value(self, array, path or self.name or "buffer")
        self.writable(overwrite=True)[...] = array

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (f"Buffer({label}shape={self.shape}, dtype={dtype_name(self.dtype)}, "
                f"device={self.device})")


def check_value(buffer: Buffer, array: Any, where: str) -> None:
    """ArgumentError/ArgumentTypeError/DeviceMismatchError unless ``array`` can be written
    into ``buffer`` as it is: an array of its shape, dtype and device."""
    if not is_array(array):
        raise ArgumentTypeError(
            f"{where}: {_short(array)} is a {type(array).__name__}; expected an array of shape "
            f"{buffer.shape} {dtype_name(buffer.dtype)} on {buffer.device}")
    got = dtype_name(array.dtype)
    if buffer.is_counter and got not in INT_DTYPES:
        raise ArgumentTypeError(
            f"{where}: a counter ({dtype_name(buffer.dtype)}) was given {got} values "
            f"{_short(array)}; a counter takes integers only")
    if tuple(array.shape) != buffer.shape:
        raise ArgumentError(
            f"{where}: value has shape {tuple(array.shape)}, expected the buffer's shape "
            f"{buffer.shape}")
    if got != dtype_name(buffer.dtype):
        raise ArgumentError(
            f"{where}: value has dtype {got}, expected the buffer's dtype "
            f"{dtype_name(buffer.dtype)}; cast it first")
    if device_of(array) != buffer.device:
        raise DeviceMismatchError(
            f"{where}: value is on {device_of(array)} but the buffer is on {buffer.device}; "
            f"move it first with ms.to_device(array, '{buffer.device}')")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def made_like(data: Any, like: Buffer) -> Buffer:
    """A new Buffer over ``data`` (storage the library just made), with ``like``'s name and
    origin: a conversion's twin of ``like``."""
    return Buffer.in_store(data, device_of(data), name=like.name, origin=like.origin,
                           store=None)
