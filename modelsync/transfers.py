"""The one door through which bytes cross a device boundary, and the ledger that watches it.

Every host<->device and device<->device copy in the package goes through `copy_to`, which
records an event in each active `track_transfers()` ledger and obeys `transfer_guard()`.
Bytes that cross a *process* boundary (`modelsync.distributed`'s collectives) are not copies
this module makes, but they answer to the same guard (`guard_collective`) and ledger
(`record_collective`, events of kind "collective").
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from .devices import HOST, Device, device, device_of, dtype_name, is_array, nbytes_of
from .errors import ArgumentError, ArgumentTypeError, TransferError

#: What a transfer carries; the guard watches all but "data" (user batches).
WHATS = ("param", "state", "grad", "data")
GUARD_MODES = ("allow", "log", "disallow")


@attrs.frozen
class TransferEvent:
    """One copy across a device boundary: its direction, size and why it happened."""

    kind: str  # "h2d", "d2h", "d2d" or "collective" (bytes sent between processes)
    bytes: int
    reason: str
    what: str
    src: str
    dst: str


@attrs.define
class TransferLedger:
    """What `track_transfers()` yields: counts and bytes of every transfer made inside it."""

    events: list[TransferEvent] = attrs.field(factory=list)

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.events)

    def _sum(self, kind: str) -> int:
        return sum(e.bytes for e in self.events if e.kind == kind)

    @property
    def h2d_bytes(self) -> int:
        return self._sum("h2d")

    @property
    def d2h_bytes(self) -> int:
        return self._sum("d2h")

    @property
    def d2d_bytes(self) -> int:
        return self._sum("d2d")

    @property
    def collective_bytes(self) -> int:
        """Bytes this process's collectives (``ms.distributed``) moved between processes."""
        return self._sum("collective")

    def bytes_of(self, what: str) -> int:
        """Bytes moved carrying ``what`` ("param", "state", "grad" or "data")."""
        if what not in WHATS:
            raise ArgumentError(f"what={what!r} is not a transfer kind; expected one of {WHATS}")
        return sum(e.bytes for e in self.events if e.what == what)

    def __repr__(self) -> str:
        collective = self.collective_bytes
        extra = f", collective={collective}" if collective else ""
        return (f"TransferLedger(count={self.count}, h2d={self.h2d_bytes}, "
                f"d2h={self.d2h_bytes}, d2d={self.d2d_bytes}{extra})")


_ledgers: contextvars.ContextVar[tuple[TransferLedger, ...]] = contextvars.ContextVar(
    "modelsync_ledgers", default=())
_guard: contextvars.ContextVar[str] = contextvars.ContextVar("modelsync_guard", default="allow")


@contextlib.contextmanager
def track_transfers() -> Iterator[TransferLedger]:
    """Record every transfer the library makes inside the block (nested blocks each see all)."""
    ledger = TransferLedger()
    token = _ledgers.set(_ledgers.get() + (ledger,))
    try:
        yield ledger
    finally:
        _ledgers.reset(token)


@contextlib.contextmanager
def transfer_guard(mode: str) -> Iterator[None]:
    """Inside the block, parameter transfers are allowed, logged to stderr, or disallowed.

    Like ``jax.transfer_guard``: "disallow" makes any transfer of parameters, gradients or
    optimizer state raise TransferError; batches moved with ``ms.to_device(array)`` pass.
    """
    if mode not in GUARD_MODES:
        raise ArgumentError(f"mode={mode!r} is not a guard mode; expected one of {GUARD_MODES}")
    token = _guard.set(mode)
    try:
        yield
    finally:
        _guard.reset(token)


def _direction(src: Device, dst: Device) -> str:
    if src == HOST:
        return "h2d"
    return "d2h" if dst == HOST else "d2d"


def _check_guard(src: Device | str, dst: Device | str, nbytes: int, reason: str, what: str,
                 kind: str | None = None) -> str:
    """Apply the active transfer_guard (raise or log) and return the transfer's kind."""
    kind = kind or _direction(src, dst)
    if guarding(what):
        mode = _guard.get()
        message = f"{kind} transfer of {nbytes} bytes ({what}) from {src} to {dst}: {reason}"
        if mode == "disallow":
            raise TransferError(
                f"{message}; disallowed by transfer_guard('disallow') — do this outside the "
                "guarded block, or keep the model on one device")
        print(f"modelsync transfer: {message}", file=sys.stderr)
    return kind


def _record(event: TransferEvent) -> None:
    for ledger in _ledgers.get():
        ledger.events.append(event)


def guarding(what: str) -> bool:
    """Whether the active transfer_guard has anything to say about moving ``what`` (False
    under "allow", the default, and for data): a hot path may skip building its message."""
    return what != "data" and _guard.get() != "allow"


def guard_collective(nbytes: int, *, reason: str, what: str, src: str, dst: str) -> None:
    """Apply the active transfer_guard to a collective about to move ``nbytes`` of ``what``
    between processes (TransferError under "disallow"); call it before the collective."""
    if what not in WHATS:
        raise ArgumentError(f"what={what!r} is not a transfer kind; expected one of {WHATS}")
    _check_guard(src, dst, nbytes, reason, what, kind="collective")


def record_collective(nbytes: int, *, reason: str, what: str, src: str, dst: str) -> None:
    """Record a completed collective in every active ledger (kind "collective")."""
    if _ledgers.get():  # (a training step with no ledger open makes no event)
        _record(TransferEvent("collective", int(nbytes), reason, what, src, dst))


def copy_to(array: Any, dst: Device | str, *, reason: str, what: str = "param",
            guarded: bool = True) -> Any:
    """A new array on ``dst`` equal to ``array``; counted and guarded when devices differ.

    A same-device call makes a plain local copy and records nothing. A transfer the guard
    refuses, or one that fails, is not recorded. ``guarded=False`` is for the one transfer
    that must not be refused: a collected wrapper handing its updates back (a finalizer
    cannot enter transfer_guard("allow"): contextvars must not change during GC).
    """
    if what not in WHATS:
        raise ArgumentError(f"what={what!r} is not a transfer kind; expected one of {WHATS}")
    dst = device(dst)
    src = device_of(array)
    if src == dst:
        return _local_copy(array, src)
    _check_dtype(array, dst)
    nbytes = nbytes_of(array)
    kind = _check_guard(src, dst, nbytes, reason, what) if guarded else _direction(src, dst)
    result = _cross(array, src, dst)
    _record(TransferEvent(kind, nbytes, reason, what, str(src), str(dst)))
    return result


def _local_copy(array: Any, dev: Device) -> Any:
    if dev.kind == "cuda":
        import cupy

        with cupy.cuda.Device(dev.index):  # ndarray.copy() lands on the *current* GPU
            return array.copy()
    return dev.xp.asarray(array, copy=True)


def _check_dtype(array: Any, dst: Device) -> None:
    """ArgumentTypeError for a dtype the destination cannot hold (sim has no float16)."""
    if dst.kind != "sim":
        return
    name = dtype_name(array.dtype)
    supported = dst.xp.__array_namespace_info__().dtypes()
    if name not in supported:
        raise ArgumentTypeError(
            f"an array of dtype {name} cannot be copied to {dst}: simulated devices hold only "
            f"{', '.join(supported)}")


def _cross(array: Any, src: Device, dst: Device) -> Any:
    if src.kind == "cuda" or dst.kind == "cuda":
        return _cross_cuda(array, src, dst)
    if dst.kind == "sim":
        return dst.xp.asarray(array, device=dst.native, copy=True)
    # sim -> host: hand the buffer over at the strict API's own CPU device, then copy out.
    import array_api_strict

    cpu = array_api_strict.__array_namespace_info__().default_device()
    return np.array(array.to_device(cpu), copy=True)


def _cross_cuda(array: Any, src: Device, dst: Device) -> Any:
    import cupy

    if src.kind == "sim" or dst.kind == "sim":
        # No real path between a simulated device and a GPU: go through host, counted once.
        via = _cross(array, src, HOST) if src.kind == "sim" else cupy.asnumpy(array)
        return _cross(via, HOST, dst) if dst.kind == "sim" else _cross_cuda(via, HOST, dst)
    if dst.kind == "cuda":
        with cupy.cuda.Device(dst.index):
            return cupy.array(array, copy=True)
    return cupy.asnumpy(array)


def to_device_array(array: Any, dev: Device | str) -> Any:
    """``ms.to_device`` for a plain array (a data batch): the same array if already there."""
    target = device(dev)
    if not is_array(array):
        array = np.asarray(array)
    if device_of(array) == target:
        return array
    return copy_to(array, target, reason="to_device(array)", what="data")

