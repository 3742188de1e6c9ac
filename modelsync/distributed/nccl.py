"""NCCL for GPU buffers (`cupy.cuda.nccl`), as ChainerMN's ``pure_nccl`` communicator does it:
created lazily, the first time every rank holds a buffer on a GPU, with the NCCL unique id
made on rank 0 and sent over MPI. Only where each rank has a GPU of its own: when two ranks
share one (or NCCL is absent on any rank) every rank takes the host path instead, decided
together once and remembered in ``comm.nccl``.

- Creation runs under a watchdog: if it has not finished within ``comm.timeout`` (a rank
  died, or hangs inside NCCL's initialisation) the job ends with a message naming the
  operation and the ranks taking part; a rank whose creation raises ends the job naming
  itself, instead of leaving the others waiting in NCCL for ever.
- A collective is queued on the current stream of the buffer's GPU and returns without
  waiting: what reads the buffer next on that GPU runs after it, and a host read (``.get()``,
  ``copy_to`` the host) waits for it. Nothing here synchronises the host.
- float16 is summed in float32 and rounded once, as the host path sums it
  (`modelsync.distributed.transport`), so a sum does not depend on the path it took (NCCL's
  own float16 sum would round at every hop).
- Communicators are destroyed by `close` (or, for those still alive, when the interpreter
  exits), before CUDA and MPI are torn down.

NCCL operations after creation are not covered by the agreement's ``timeout`` wait (NCCL has
no request to poll from here); the agreement before each of them is, so a rank that never
arrives is still named.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from ..devices import Device, dtype_name
from .comm import Comm, fail_stuck

#: ``comm.nccl`` key for the one NCCL communicator of a Comm: (its GPU index, communicator),
#: or None once the ranks decided on the host path.
KEY = 0
#: Every Comm that made a communicator, to destroy what is left at exit (weakly held).
_MADE: weakref.WeakSet[Comm] = weakref.WeakSet()
_EXIT_HOOK: list[Any] = []  # the exit hook, once registered


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
        what = (f"NCCL communicator creation on {dev} by ranks 0-{comm.size - 1} "
                f"(this is rank {comm.rank})")
        with watchdog(comm, what):
            made = comm.nccl[KEY] = _create(comm, dev, what)
        if made is not None:
            if not _MADE and not _EXIT_HOOK:  # (registered after CuPy's own: runs first)
                atexit.register(_close_all)
                _EXIT_HOOK.append(_close_all)
            _MADE.add(comm)
    return made is not None and made[0] == dev.index


@contextlib.contextmanager
def watchdog(comm: Comm, what: str) -> Iterator[None]:
    """End the job (`fail_stuck`, naming ``what``) if the block has not finished within
    ``comm.timeout`` seconds: for blocking calls that have no request to poll."""
    timer = threading.Timer(comm.timeout, lambda: fail_stuck(
        comm, f"{what}: it did not complete within {comm.timeout:g} s (a rank died, never "
        "arrived, or hangs inside NCCL)"))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _create(comm: Comm, dev: Device, what: str) -> tuple[int, Any] | None:
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
    try:
        with cupy.cuda.Device(dev.index):
            return dev.index, nccl.NcclCommunicator(comm.size, uid, comm.rank)
    except Exception as exc:  # the others wait inside NCCL for this rank: end the job
        fail_stuck(comm, f"{what}: it failed here: {type(exc).__name__}: {exc}")
        raise  # (fail_stuck does not return; a replaced one in a test may)


def close(comm: Comm) -> None:
    """Destroy ``comm``'s NCCL communicator, if it made one; its next GPU collective makes a
    new one (every rank calls `close` together, as it made the first)."""
    made = comm.nccl.pop(KEY, None)
    _MADE.discard(comm)
    if made is None:
        return
    index, communicator = made
    import cupy

    with cupy.cuda.Device(index):
        communicator.destroy()


def _close_all() -> None:
    """Destroy the communicators still alive at exit (before CUDA and MPI go away)."""
    for comm in list(_MADE):
        with contextlib.suppress(Exception):  # (an exit must not fail over a GPU teardown)
            close(comm)


def _nccl_dtype(array: Any) -> int:
    from cupy.cuda import nccl

    return {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64}[dtype_name(array.dtype)]


def allreduce(comm: Comm, buffer: Any) -> None:
    """In-place sum of a 1-D CuPy ``buffer`` over the ranks, queued on the current stream of
    its GPU (float16 summed in float32, rounded once)."""
    import cupy
    from cupy.cuda import nccl

    index, communicator = comm.nccl[KEY]
    with cupy.cuda.Device(index):
        stream = cupy.cuda.get_current_stream()
        work = buffer.astype(cupy.float32) if dtype_name(buffer.dtype) == "float16" else buffer
        communicator.allReduce(work.data.ptr, work.data.ptr, work.size, _nccl_dtype(work),
                               nccl.NCCL_SUM, stream.ptr)
        if work is not buffer:
            buffer[...] = work  # (on the same stream: after the sum)


def bcast(comm: Comm, buffer: Any, root: int) -> None:
    """``root``'s 1-D CuPy ``buffer`` written into every rank's, in place, queued on the
    current stream of its GPU."""
    import cupy

    index, communicator = comm.nccl[KEY]
    with cupy.cuda.Device(index):
        stream = cupy.cuda.get_current_stream()
        communicator.bcast(buffer.data.ptr, buffer.size, _nccl_dtype(buffer), root,
                           stream.ptr)
