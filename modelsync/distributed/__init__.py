"""Replicas of one graph across processes and machines, on MPI (mpi4py) and NCCL.

``comm = ms.distributed.init()`` (a world of one without ``mpiexec``), then
`replicate` (the root's model on every rank), `broadcast` (the root's values into every
replica), `sync` (every replica becomes the mean), `DataParallel` (an optimizer that averages
gradients first) and `save` (one file, from the root). Every collective agrees first, so a
mismatch raises on every rank and changes nothing; a collective that cannot complete within
``timeout`` ends the job naming the ranks that did not arrive. See docs/distributed.md.
"""

from .comm import Comm, init
from .data_parallel import DataParallel
from .errors import CollectiveError
from .ops import barrier
from .replicas import broadcast, sync, sync_buffers
from .replicate import replicate
from .save import save

__all__ = ["CollectiveError", "Comm", "DataParallel", "barrier", "broadcast", "init", "replicate",
           "save", "sync"]
__all__ += ["sync_buffers"]
