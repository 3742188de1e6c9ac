"""Moving one flat buffer between processes: an in-place sum over the ranks, or the root's
values to every rank. Host buffers go through MPI as they are (buffer-based, never pickled);
GPU buffers through NCCL where every rank has a GPU of its own (`nccl`), else through the
host (counted copies); simulated-device buffers through the host.

Every call records one "collective" event in the ledger. The guard is asked earlier, by
`check_guard`, before the ranks agree, so that a refusal raises on every rank.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..devices import HOST, device_of, nbytes_of
from ..transfers import copy_to, guard_collective, guarding, record_collective
from . import nccl
from .comm import Comm, mpi_module

REASON_HEADER = "distributed.replicate: the model's layers"


def check_guard(comm: Comm, nbytes: int, *, reason: str, what: str, where: Any) -> None:
    """transfer_guard's verdict on a collective that will move ``nbytes`` (none in a world of
    one, where nothing crosses a process boundary)."""
    if comm.size > 1 and guarding(what):
        guard_collective(nbytes, reason=reason, what=what, src=_src(comm, where),
                         dst=_dst(comm))


class HostSum:
    """`sum_over_ranks` of one host buffer, made ready once for the many times a training
    loop reduces it: the MPI call, its watchdog message and the ledger's entry are built
    here, so that a step of a small model pays for the Allreduce and little else. Only for
    C-contiguous float32/float64 NumPy buffers (`for_buffer`)."""

    __slots__ = ("comm", "buffer", "label", "nbytes", "reason", "what", "src", "dst",
                 "_blocking", "_nonblocking", "_missing")

    def __init__(self, comm: Comm, buffer: np.ndarray, *, reason: str, what: str) -> None:
        mpi = mpi_module()
        self.comm, self.buffer, self.reason, self.what = comm, buffer, reason, what
        self.nbytes = buffer.nbytes
        self.label = f"{reason}: Allreduce of {self.nbytes} bytes"
        self.src, self.dst = _src(comm, HOST), _dst(comm)
        spec = [buffer, mpi.FLOAT if buffer.dtype == np.float32 else mpi.DOUBLE]
        self._blocking = functools.partial(comm.mpi.Allreduce, mpi.IN_PLACE, spec, op=mpi.SUM)
        self._nonblocking = functools.partial(comm.mpi.Iallreduce, mpi.IN_PLACE, spec,
                                              op=mpi.SUM)
        self._missing = _after_agreement(comm)

    @classmethod
    def for_buffer(cls, comm: Comm, buffer: Any, *, reason: str, what: str
                   ) -> HostSum | None:
        """A HostSum of ``buffer``, or None where the general path must take it."""
        if (comm.size > 1 and type(buffer) is np.ndarray and buffer.ndim == 1
                and buffer.dtype in (np.float32, np.float64) and buffer.flags.c_contiguous):
            return cls(comm, buffer, reason=reason, what=what)
        return None

    def __call__(self) -> np.ndarray:
        """Sum the buffer over the ranks, in place; return it."""
        self.comm.collective(self.label, blocking=self._blocking,
                             nonblocking=self._nonblocking, missing=self._missing)
        record_collective(self.nbytes, reason=self.reason, what=self.what, src=self.src,
                          dst=self.dst)
        return self.buffer


def sum_over_ranks(comm: Comm, buffer: Any, *, reason: str, what: str, use_nccl: bool) -> Any:
    """The elementwise sum of every rank's ``buffer`` (1-D), on its device: ``buffer`` itself
    (written in place) on the host and through NCCL, a new array after a trip via the host."""
    if comm.size == 1:
        return buffer
    dev, nbytes = device_of(buffer), nbytes_of(buffer)
    label = f"{reason}: Allreduce of {nbytes} bytes"
    result = _run(comm, buffer, dev, use_nccl, reason=reason, what=what,
                  on_gpu=lambda: nccl.allreduce(comm, buffer),
                  on_host=lambda host: _host_sum(comm, host, label))
    record_collective(nbytes, reason=reason, what=what, src=_src(comm, dev), dst=_dst(comm))
    return result


def broadcast_from(comm: Comm, buffer: Any, root: int, *, reason: str, what: str,
                   use_nccl: bool) -> Any:
    """``root``'s ``buffer`` on every rank (same contract as `sum_over_ranks`)."""
    if comm.size == 1:
        return buffer
    dev, nbytes = device_of(buffer), nbytes_of(buffer)
    label = f"{reason}: Bcast of {nbytes} bytes from rank {root}"
    result = _run(comm, buffer, dev, use_nccl, reason=reason, what=what,
                  on_gpu=lambda: nccl.bcast(comm, buffer, root),
                  on_host=lambda host: _host_bcast(comm, host, root, label))
    if comm.rank == root:
        record_collective(nbytes, reason=reason, what=what, src=_src(comm, dev),
                          dst=_dst(comm))
    else:
        record_collective(nbytes, reason=reason, what=what, src=f"rank {root}",
                          dst=_src(comm, dev))
    return result


def _run(comm: Comm, buffer: Any, dev: Any, use_nccl: bool, *, reason: str, what: str,
         on_gpu: Callable[[], None], on_host: Callable[[np.ndarray], None]) -> Any:
    """One collective on ``buffer``: in place through NCCL where every rank has a GPU of its
    own, else on a host buffer (the buffer itself, or a counted copy there and back)."""
    if dev.kind == "cuda" and use_nccl and nccl.usable(comm, dev):
        on_gpu()
        return buffer
    host = buffer if dev == HOST else copy_to(buffer, HOST, reason=reason, what=what)
    on_host(host)
    return host if dev == HOST else copy_to(host, dev, reason=reason, what=what)


def _host_bcast(comm: Comm, host: np.ndarray, root: int, label: str) -> None:
    """``root``'s host buffer into every rank's, in place."""
    raw = _raw(host)
    comm.collective(label, blocking=lambda: comm.mpi.Bcast(raw, root=root),
                    nonblocking=lambda: comm.mpi.Ibcast(raw, root=root),
                    missing=_after_agreement(comm))


def _host_sum(comm: Comm, host: np.ndarray, label: str) -> None:
    """In-place MPI sum of a host buffer (the MPI's own blocking Allreduce, watched: see
    `Comm.collective`); float16 (which MPI cannot add) is summed in float32 and rounded
    once."""
    mpi = mpi_module()
    work = host.astype(np.float32) if host.dtype == np.float16 else host
    comm.collective(label, blocking=lambda: comm.mpi.Allreduce(mpi.IN_PLACE, work, op=mpi.SUM),
                    nonblocking=lambda: comm.mpi.Iallreduce(mpi.IN_PLACE, work, op=mpi.SUM),
                    missing=_after_agreement(comm))
    if work is not host:
        host[...] = work


def _raw(host: np.ndarray) -> Any:
    """A host buffer as MPI bytes (a broadcast does no arithmetic, so any dtype will do)."""
    return [host.view(np.uint8), mpi_module().BYTE]


def _after_agreement(comm: Comm) -> Any:
    def missing(_: Any) -> str:
        silent = unanswering(comm)
        who = (f"ranks {silent} stopped answering (ranks "
               f"{[r for r in range(comm.size) if r not in silent]} are waiting for them)"
               if silent else "a rank died or stopped making progress")
        return (f"it did not complete within {comm.timeout:g} s although every rank had agreed "
                f"to it: {who}")

    return missing


#: The tag of the "still here" message ranks stuck in one collective exchange (`unanswering`).
TAG_HERE = 7103


def unanswering(comm: Comm) -> list[int]:
    """The ranks that do not answer: a collective is stuck, so every rank still alive in it
    times out about when this one does and sends each other rank a one-byte "still here";
    those not heard from within a grace period (a tenth of the timeout, 1 to 10 s) are the
    lost ones. Costs nothing until a collective times out."""
    mpi, byte = comm.mpi, mpi_module().BYTE
    others = [r for r in range(comm.size) if r != comm.rank]
    here = bytearray(b"\x01")
    heard = {r: bytearray(1) for r in others}
    sends = [mpi.Isend([here, byte], dest=r, tag=TAG_HERE) for r in others]
    recvs = {r: mpi.Irecv([heard[r], byte], source=r, tag=TAG_HERE) for r in others}
    end = time.monotonic() + min(10.0, max(1.0, 0.1 * comm.timeout))
    waiting = dict(recvs)
    while waiting and time.monotonic() < end:
        waiting = {r: q for r, q in waiting.items() if not q.Test()}
        time.sleep(0.001)
    del sends  # (left pending: the job is about to end)
    return sorted(waiting)


def _src(comm: Comm, where: Any) -> str:
    return f"rank {comm.rank} ({where})"


def _dst(comm: Comm) -> str:
    return f"{comm.size} ranks"


def broadcast_bytes(comm: Comm, data: bytes | None, root: int) -> bytes:
    """``root``'s ``data`` (others pass None) on every rank: its length, then its bytes."""
    byte = mpi_module().BYTE
    length = np.array([len(data) if comm.rank == root else 0], dtype=np.int64)
    label = f"{REASON_HEADER} from rank {root}"
    sized = [length.view(np.uint8), byte]
    comm.collective(label, blocking=lambda: comm.mpi.Bcast(sized, root=root),
                    nonblocking=lambda: comm.mpi.Ibcast(sized, root=root),
                    missing=_after_agreement(comm))
    buffer = bytearray(data) if comm.rank == root else bytearray(int(length[0]))
    whole = [buffer, byte]
    comm.collective(label, blocking=lambda: comm.mpi.Bcast(whole, root=root),
                    nonblocking=lambda: comm.mpi.Ibcast(whole, root=root),
                    missing=_after_agreement(comm))
    return bytes(buffer)
