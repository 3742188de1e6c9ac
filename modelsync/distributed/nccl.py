"""NCCL for GPU buffers (`cupy.cuda.nccl`), as ChainerMN's ``pure_nccl`` communicator does it:
created lazily, the first time every rank holds a buffer on a GPU, with the NCCL unique id
made on rank 0 and sent over MPI. Only where each rank has a GPU of its own: when two ranks
share one (or NCCL is absent on any rank) every rank takes the host path instead, decided
together once and remembered in ``comm.nccl``.

NCCL operations are not covered by the agreement's ``timeout`` wait (NCCL has no request to
poll from here); the agreement before each of them is, so a rank that never arrives is
still named.
"""

from __future__ import annotations

from typing import Any

from ..devices import Device, dtype_name
from .comm import Comm

#: ``comm.nccl`` key for the one NCCL communicator of a Comm: (its GPU index, communicator),
#: or None once the ranks decided on the host path.
KEY = 0


def candidate(comm: Comm, dev: Device) -> bool:
    """Whether this rank could carry a buffer on ``dev`` by NCCL (its bit in the agreement:
    the ranks use NCCL for a buffer only if every rank's bit is set)."""
    if dev.kind != "cuda":
        return False
    made = comm.nccl.get(KEY, ...)
    if made is None:
        return False
    return made is ... or made[0] == dev.index


def usable(comm: Comm, dev: Device) -> bool:
    """Whether NCCL carries buffers on ``dev``; the first call (made by every rank at once,
    after an agreement in which every rank was a `candidate`) decides for good."""
    made = comm.nccl.get(KEY, ...)
    if made is ...:
        made = comm.nccl[KEY] = _create(comm, dev)
    return made is not None and made[0] == dev.index


def _create(comm: Comm, dev: Device) -> tuple[int, Any] | None:
    try:
        import cupy
        from cupy.cuda import nccl

        ident = (comm.host, cupy.cuda.Device(dev.index).pci_bus_id)
        available = bool(getattr(nccl, "available", True))
    except Exception:
        nccl, ident, available = None, (comm.host, f"cuda:{dev.index}"), False
    everyone = comm.mpi.allgather((available, ident))
    if not all(ok for ok, _ in everyone) or len({i for _, i in everyone}) < comm.size:
        return None  # NCCL missing somewhere, or two ranks on one GPU: the host path
    uid = nccl.get_unique_id() if comm.rank == 0 else None
    uid = comm.mpi.bcast(uid, root=0)
    with cupy.cuda.Device(dev.index):
        return dev.index, nccl.NcclCommunicator(comm.size, uid, comm.rank)


def _nccl_dtype(array: Any) -> int:
    from cupy.cuda import nccl

    return {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64}[dtype_name(array.dtype)]


def allreduce(comm: Comm, buffer: Any) -> None:
    """In-place sum of a 1-D CuPy ``buffer`` over the ranks."""
    import cupy
    from cupy.cuda import nccl

    index, communicator = comm.nccl[KEY]
    with cupy.cuda.Device(index):
        stream = cupy.cuda.get_current_stream()
        communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                               _nccl_dtype(buffer), nccl.NCCL_SUM, stream.ptr)
        stream.synchronize()


def bcast(comm: Comm, buffer: Any, root: int) -> None:
    """``root``'s 1-D CuPy ``buffer`` written into every rank's, in place."""
    import cupy

    index, communicator = comm.nccl[KEY]
    with cupy.cuda.Device(index):
        stream = cupy.cuda.get_current_stream()
        communicator.bcast(buffer.data.ptr, buffer.size, _nccl_dtype(buffer), root,
                           stream.ptr)
        stream.synchronize()
