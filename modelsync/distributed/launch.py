"""Starting a job from the command line (``modelsync demo --ranks N``): which ``mpiexec``
to run."""

from __future__ import annotations

import shutil
import sys
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

