"""What every collective does first: check its own arguments, then agree with the others.

A local failure (a bad argument, a model that is not one, transfer_guard refusing the bytes)
does not raise straight away: it is carried into the agreement, so every rank raises
together and none is left waiting in a collective the failing rank never joins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ArgumentError, ArgumentTypeError, ModelSyncError
from . import nccl
from .agree import Description, agree
from .comm import Comm

#: What a local check may raise and still be carried into the agreement.
LOCAL_ERRORS = (ModelSyncError, ValueError, TypeError, OSError)


def require_comm(comm: Any) -> Comm:
    """TypeError unless ``comm`` is what ``ms.distributed.init()`` returned. (Raised at once:
    without a Comm there is no one to agree with.)"""
    if not isinstance(comm, Comm):
        raise ArgumentTypeError(
            f"comm is a {type(comm).__name__}; expected the Comm that "
            "ms.distributed.init() returns")
    return comm


def check_root(root: Any, comm: Comm) -> int:
    if isinstance(root, bool) or not isinstance(root, int):
        raise ArgumentTypeError(f"root={root!r} is a {type(root).__name__}; expected an int")
    if not 0 <= root < comm.size:
        raise ArgumentError(f"root={root} is outside [0, {comm.size - 1}] (the ranks of this "
                            f"job of {comm.size})")
    return root


def gpu_bits(comm: Comm, devices: list[Any]) -> int:
    """Bit ``i`` set when buffer ``i`` (one of the first 8) could go by NCCL from this rank."""
    bits = 0
    for i, dev in enumerate(devices[:8]):
        if dev is not None and nccl.candidate(comm, dev):
            bits |= 1 << i
    return bits


def barrier(comm: Comm) -> None:
    """Return once every rank has called ``barrier``: the agreement every collective starts
    with, so a rank that never comes ends the job, named, after ``comm.timeout``."""
    agree(require_comm(comm), "barrier", bytes(32), describe=dict)


def run_agreed(comm: Comm, op: str, prepare: Callable[[], tuple[bytes, int]],
               describe: Callable[[], Description]) -> int:
    """Run ``prepare`` (this rank's checks; returns its digest and GPU bits), then agree on
    ``op``. Returns the GPU bits every rank shares; raises on every rank on any failure."""
    error: BaseException | None = None
    digest, bits = bytes(32), 0
    try:
        digest, bits = prepare()
    except LOCAL_ERRORS as exc:
        error = exc
    return agree(comm, op, digest, describe=describe, error=error, gpu_groups=bits)
