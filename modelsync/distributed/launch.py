"""Starting a job from the command line (``modelsync demo --ranks N``): which ``mpiexec``
to run, and the options to pass on to every rank."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ArgumentError


def find_mpiexec() -> str:
    """The ``mpiexec`` next to this Python (the ``mpich`` wheel puts it in the virtual
    environment's ``bin/``), else the first on PATH (a cluster's own MPI)."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise ArgumentError(
            "--ranks needs mpiexec, and there is none next to this Python or on PATH; "
            "install the extra (pip install 'modelsync[mpi]'), or start the job yourself: "
            "mpiexec -n N modelsync demo --distributed")
    return found


def without_ranks(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--ranks N`` / ``--ranks=N`` (every rank runs ``--distributed``)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ranks":
            skip = True
        elif not arg.startswith("--ranks="):
            kept.append(arg)
    return kept
