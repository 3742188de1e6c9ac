"""`save`: one file written once, by the root, atomically (the library's own `ms.save`), and
every rank returns only when it exists; a failure to write raises on every rank."""

from __future__ import annotations

from typing import Any

from ..io import save as save_file
from ..tree import require_model
from .agree import agree, digest_of
from .comm import Comm
from .data_parallel import inner_optimizer
from .ops import LOCAL_ERRORS, check_root, require_comm, run_agreed


def save(model: Any, path: Any, comm: Comm, *, root: int = 0, optimizer: Any = None) -> None:
    """Write ``model`` (and ``optimizer``'s state; a DataParallel's inner optimizer) to
    ``path`` from ``root`` only; return on every rank once the file is there."""
    comm = require_comm(comm)

    def prepare() -> tuple[bytes, int]:
        check_root(root, comm)
        if comm.rank == root:
            require_model(model)
        return digest_of("save", root), 0

    run_agreed(comm, "save", prepare, lambda: {"args": {"root": root}})
    error = None
    if comm.rank == root:
        try:
            save_file(model, path, optimizer=inner_optimizer(optimizer))
        except LOCAL_ERRORS as exc:
            error = exc
    # the second agreement is the barrier: it also carries the root's failure to everyone
    agree(comm, "save (written)", digest_of("save (written)", root),
          describe=lambda: {"args": {"root": root}}, error=error)
