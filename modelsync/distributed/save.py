"""`save`: one file written once, by the root, atomically (the library's own `ms.save`), and
every rank returns only when it exists; a failure to write raises on every rank. Replicas
whose Buffers (running statistics, counters) differ are refused on every rank, naming the
ranks and the path: the file would hold one rank's statistics as if they were everyone's
(bring them into agreement with `sync_buffers` first)."""

from __future__ import annotations

from typing import Any

from ..io import save as save_file
from ..tree import is_layer, named_buffers, require_model
from .agree import agree, digest_of, values_difference
from .comm import Comm
from .data_parallel import inner_optimizer
from .layout import buffer_values
from .ops import LOCAL_ERRORS, check_root, require_comm, run_agreed


def save(model: Any, path: Any, comm: Comm, *, root: int = 0, optimizer: Any = None) -> None:
    """Write ``model`` (and ``optimizer``'s state; a DataParallel's inner optimizer) to
    ``path`` from ``root`` only; return on every rank once the file is there."""
    comm = require_comm(comm)
    values: list[list[Any]] = []

    def prepare() -> tuple[bytes, int]:
        check_root(root, comm)
        if comm.rank == root:
            require_model(model)
        if comm.size > 1 and is_layer(model) and named_buffers(model):
            values.extend(buffer_values(model, reason="distributed.save: compare buffers"))
        return digest_of("save", root), 0

    run_agreed(comm, "save", prepare, lambda: {"args": {"root": root}})
    if comm.size > 1:  # (every rank is here: compare the Buffers of those that passed a model)
        _refuse_differing_buffers(comm.mpi.allgather(values or None))
    error = None
    if comm.rank == root:
        try:
            save_file(model, path, optimizer=inner_optimizer(optimizer))
        except LOCAL_ERRORS as exc:
            error = exc
    # the second agreement is the barrier: it also carries the root's failure to everyone
    agree(comm, "save (written)", digest_of("save (written)", root),
          describe=lambda: {"args": {"root": root}}, error=error)


def _refuse_differing_buffers(everyone: list[Any]) -> None:
    """CollectiveError (the same on every rank) if the ranks' Buffers differ, naming the
    first path and the ranks on each side; ranks that passed no model are not compared."""
    described = [{"values": rows} if rows is not None else None for rows in everyone]
    held = [d for d in described if d is not None]
    if len(held) < 2:
        return
    found = values_difference(
        [d or {"values": held[0]["values"]} for d in described], "save",
        "bring them into agreement with ms.distributed.sync_buffers(model, comm) (or "
        "broadcast) before saving")
    if found is not None:
        raise found
