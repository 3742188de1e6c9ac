"""`ArrivalBoard`: the number of the last agreement each rank on rank 0's node has reached,
in memory that node shares (an MPI shared window). A rank writes its slot before each
agreement's Allreduce, a store of eight bytes; rank 0 reads the board only when a timeout has
to name the ranks that never came. It replaces, for those ranks, the arrival message each
agreement used to send (in a step of a small model that message pair cost 9-14 us; a store
costs nothing); ranks on other nodes still send it (`agree._Arrivals`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from .comm import Comm, mpi_module

#: What Open MPI 5 prints on stderr for every window it makes where UCX has no transport for
#: one-sided calls (a known bogus message: open-mpi/ompi#14086); the window works.
BOGUS = "OSC UCX component priority set inside component query failed"


class ArrivalBoard:
    """Made by every rank of ``comm`` together (a collective: call it where every rank is
    known to be, right after an agreement). `close` frees it before MPI finalizes."""

    def __init__(self, comm: Comm) -> None:
        MPI = mpi_module()
        self.node = comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
        members = self.node.allgather(comm.rank)  # the world ranks on this node, in order
        self.win: Any = None
        self.board: np.ndarray | None = None
        self.slot: np.ndarray | None = None
        if 0 in members:  # (rank 0's node: the only board rank 0 can read)
            nbytes = 8 * len(members) if self.node.rank == 0 else 0
            with _without_bogus_lines():
                self.win = MPI.Win.Allocate_shared(nbytes, 8, comm=self.node)
            self.win.Lock_all(MPI.MODE_NOCHECK)  # (a passive epoch, for `Sync` in `arrived`)
            buffer, _ = self.win.Shared_query(0)
            self.board = np.frombuffer(buffer, dtype=np.uint64, count=len(members))
            self.slot = self.board[self.node.rank:self.node.rank + 1]
        #: The world ranks whose arrivals the board holds (empty off rank 0's node).
        self.members: list[int] = members if self.board is not None else []
        atexit.register(self.close)

    def post(self, seq: int) -> None:
        """This rank has reached agreement ``seq`` (only on rank 0's node)."""
        self.slot[0] = seq  # type: ignore[index]

    def arrived(self, seq: int) -> set[int]:
        """The world ranks on the board that have reached agreement ``seq``."""
        if self.board is None:
            return set()
        self.win.Sync()  # (see the others' latest stores)
        return {rank for rank, reached in zip(self.members, self.board.tolist(), strict=True)
                if reached >= seq}

    def close(self) -> None:
        """Free the window and the node's communicator (collective over the node; at exit,
        before MPI finalizes, every rank calls it)."""
        MPI = mpi_module()
        if MPI.Is_finalized():
            return
        if self.win is not None:
            self.board = self.slot = None
            self.win.Unlock_all()
            self.win.Free()
            self.win = None
        if self.node is not None:
            self.node.Free()
            self.node = None


@contextlib.contextmanager
def _without_bogus_lines() -> Iterator[None]:
    """Run the block with this process's stderr (the file descriptor, which the MPI writes
    to) caught, then write back every line of it but `BOGUS` and the blank lines around it."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().splitlines(keepends=True)
            bogus = any(BOGUS.encode() in line for line in lines)  # (and its blank lines)
            kept = [line for line in lines
                    if not (bogus and (BOGUS.encode() in line or not line.strip()))]
            if kept:
                os.write(2, b"".join(kept))
