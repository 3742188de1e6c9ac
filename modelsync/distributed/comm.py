"""`init` and `Comm`: this process's place among the ranks of one job, on MPI (mpi4py).

`init` duplicates the communicator it is given (``MPI.COMM_WORLD`` by default), so the
library's messages never match a user's, and by default makes an uncaught exception on any
rank end the whole job (``MPI.Abort``), as ChainerMN's global except hook does: otherwise the
other ranks would wait in their next collective for ever. Without ``mpiexec`` (or without
mpi4py installed) it is a world of one, where every operation still checks its arguments.

Waiting is done here too, against the deadline ``timeout`` seconds away; a wait that runs
out ends the job with a message naming the operation and the ranks that did not arrive
(`fail_stuck`). The small messages of the agreement are polled non-blocking requests
(`Comm.wait`); the collectives that move a model's bytes are the MPI's own blocking calls,
watched by a `Watchdog` thread (`Comm.collective`), because a polled non-blocking collective
costs up to 3× the blocking one on some MPIs (Open MPI) while a sleeping thread costs nothing.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..checks import as_float
from ..errors import ArgumentError, ArgumentTypeError
from .launch import check_before_init, check_world, singleton_transport

DEFAULT_TIMEOUT = 600.0
#: How long a wait spins before it starts sleeping between polls (see `Comm.wait`).
SPIN_SECONDS = 0.1
ABORT_GRACE = 0.5  # seconds between the last message and MPI Abort
_hook_installed = False
_MPI: list[Any] = []  # mpi4py's MPI module, once imported


class Comm:
    """This process's view of the job: ``rank``, ``size``, ``local_rank`` (its index among
    the ranks on its machine), ``timeout`` (seconds a collective may wait) and the
    duplicated mpi4py communicator ``mpi`` (None in a world of one without mpi4py)."""

    def __init__(self, mpi: Any, *, timeout: float, rank: int = 0, size: int = 1,
                 local_rank: int = 0) -> None:
        self.mpi = mpi
        self.rank = rank
        self.size = size
        self.local_rank = local_rank
        self.timeout = timeout
        self.host = socket.gethostname()
        self.seq = 0  # agreed operations so far: every rank counts the same ones
        self.nccl: dict[int, Any] = {}  # per GPU: an NCCL communicator or None (host path)
        #: The agreement's buffers and messages (made by `agree` on first use, kept here so
        #: that a step finds them with one attribute read).
        self.agreement: Any = None
        #: Watches blocking collectives; None where MPI cannot take calls from two threads
        #: at once (then every collective is a polled non-blocking one).
        self.watchdog = Watchdog(self) if mpi is not None and _threads_ok() else None

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, size={self.size}, timeout={self.timeout:g})"

    # -- waiting -------------------------------------------------------------------------
    def wait(self, requests: Sequence[Any], what: str, *, deadline: float,
             missing: Callable[[list[int]], str]) -> None:
        """Poll ``requests`` until all complete; past ``deadline`` end the job, with
        ``missing(indices of the requests still pending)`` saying who did not arrive.

        MPICH moves a non-blocking transfer along only inside MPI calls, so the wait spins
        (yielding the core now and then, as MPICH's own blocking calls do) for `SPIN_SECONDS`;
        a rank still waiting after that is waiting for a late peer, and polls at most every
        millisecond instead of holding a core."""
        test_all = mpi_module().Request.Testall
        pending = list(requests)
        polls = 0
        start = time.monotonic()
        pause = 0.0
        while not test_all(pending):
            polls += 1
            if polls % 256:
                continue
            now = time.monotonic()
            if now > deadline:
                left = [i for i, r in enumerate(pending) if not r.Test()]
                if left:
                    fail_stuck(self, f"{what}: {missing(left)}")
                return
            if now - start < SPIN_SECONDS:
                os.sched_yield()
            else:
                pause = min(0.001, pause + 0.00005)
                time.sleep(pause)

    def deadline(self, extra: float = 0.0) -> float:
        return time.monotonic() + self.timeout + extra

    def collective(self, what: str, *, blocking: Callable[[], None],
                   nonblocking: Callable[[], Any], missing: Callable[[list[int]], str],
                   grace: float = 0.0) -> None:
        """Run one collective: ``blocking()`` (the MPI's blocking call) under the watchdog,
        or, where there is none, the request ``nonblocking()`` returns, polled (`wait`).
        Past `timeout` (and ``grace`` seconds more) the job ends naming ``what`` and
        ``missing([0])``."""
        watchdog = self.watchdog
        if watchdog is None:
            self.wait([nonblocking()], what, deadline=self.deadline(grace), missing=missing)
            return
        token = watchdog.arm(what, self.deadline(), missing, grace)
        try:
            blocking()
        finally:
            watchdog.disarm(token)


class Watchdog:
    """A daemon thread that ends the job (`fail_stuck`) when the blocking collective now
    running is still running at its deadline.

    Arming and disarming are an assignment each, and never wake the thread: it wakes
    by itself, at the deadline of what was armed when it went to sleep, or ``timeout`` after
    that if nothing was, and then sleeps towards what is armed now. Every deadline is
    ``timeout`` after its arming, so a later collective's is later still and is never
    missed; a ``grace`` (an agreement's on all but rank 0, so that rank 0 speaks first, see
    `agree`) is only slept once the deadline has passed with the collective still running.
    Waking the thread per collective instead, on a busy machine, made the rank wait for the
    GIL for milliseconds after every MPI call. Its message is built on the thread (``missing`` may
    exchange messages with the other ranks: the MPI takes calls from several threads)."""

    def __init__(self, comm: Comm) -> None:
        self._comm = comm
        self._cond = threading.Condition(threading.Lock())
        self._armed: tuple[int, float, float, str, Callable[[list[int]], str]] | None = None
        self._count = 0
        self._thread: threading.Thread | None = None

    def arm(self, what: str, deadline: float, missing: Callable[[list[int]], str],
            grace: float = 0.0) -> int:
        """Watch the collective about to start; returns the token that `disarm` takes. (No
        lock: one assignment of a tuple is atomic, and the thread reads it once per wake.)"""
        self._count += 1
        token = self._count
        self._armed = (token, deadline, grace, what, missing)
        if self._thread is None:
            self._start()
        return token

    def disarm(self, token: int) -> None:
        armed = self._armed
        if armed is not None and armed[0] == token:
            self._armed = None

    def _start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="modelsync-watchdog")
                self._thread.start()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                armed = self._armed
                now = time.monotonic()
                if armed is None:
                    cond.wait(self._comm.timeout)
                    continue
                _, deadline, grace, what, missing = armed
                if deadline > now:
                    cond.wait(deadline - now)
                    continue
                if deadline + grace > now:
                    cond.wait(deadline + grace - now)
                    continue
            try:
                who = missing([0])
            except Exception as exc:  # (the job must end all the same)
                who = f"it did not complete within {self._comm.timeout:g} s ({exc!r})"
            fail_stuck(self._comm, f"{what}: {who}")  # (does not return)


def _threads_ok() -> bool:
    """Whether MPI takes calls from several threads at once (mpi4py asks for that by
    default), which the watchdog's exchange and Abort need while a collective blocks."""
    MPI = mpi_module()
    try:
        return MPI.Query_thread() == MPI.THREAD_MULTIPLE
    except Exception:  # pragma: no cover (an MPI that cannot say)
        return False


def fail_stuck(comm: Comm, message: str) -> None:
    """End the whole job: a collective could not complete (the message says which and who)."""
    sys.stderr.write(f"modelsync.distributed: rank {comm.rank} of {comm.size}: {message}; "
                     "ending the job (MPI Abort)\n")
    _flush_before_abort()
    mpi_module().COMM_WORLD.Abort(1)
    os._exit(1)  # pragma: no cover (Abort does not return)


def init(comm: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
         abort_on_error: bool = True) -> Comm:
    """This process's `Comm`: ``comm`` (an mpi4py communicator, duplicated) or
    ``MPI.COMM_WORLD``; a world of one when run without ``mpiexec``.

    ``timeout`` is how many seconds a collective may wait for the other ranks before the
    job is ended with a message naming the operation and the ranks that did not arrive.
    With ``abort_on_error`` (the default) an uncaught exception on any rank ends the whole
    job instead of leaving the others waiting.
    """
    seconds = as_float("timeout", timeout)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ArgumentError(f"timeout={timeout!r} is outside (0, ∞)")
    if not isinstance(abort_on_error, bool):
        raise ArgumentTypeError(
            f"abort_on_error={abort_on_error!r} is a {type(abort_on_error).__name__}; "
            "expected a bool")
    MPI = mpi_module(required=comm is not None)
    if MPI is None:  # no mpi4py: a world of one on its own
        return Comm(None, timeout=seconds)
    if comm is None:
        comm = MPI.COMM_WORLD
        check_world(comm.Get_size(), MPI.Get_library_version())
    elif not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise ArgumentTypeError(
            f"comm is a {type(comm).__name__}; expected an mpi4py communicator such as "
            "MPI.COMM_WORLD (or None for it)")
    if not comm.Is_intra():
        raise ArgumentError("comm is an inter-communicator; expected an intra-communicator")
    mine = comm.Dup()
    local = mine.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = local.Get_rank()
    local.Free()
    made = Comm(mine, timeout=seconds, rank=mine.Get_rank(), size=mine.Get_size(),
                local_rank=local_rank)
    if abort_on_error and made.size > 1:
        _install_abort_hook()
    return made


def _install_abort_hook() -> None:
    """Chain an except hook that, after printing the traceback, aborts every rank."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook

    def abort_job(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        try:
            previous(kind, exc, tb)
        finally:
            world = mpi_module().COMM_WORLD
            sys.stderr.write(
                f"modelsync.distributed: rank {world.Get_rank()} of {world.Get_size()} raised "
                f"{kind.__name__} and did not catch it; ending the job (MPI Abort) so that no "
                "rank waits for ever\n")
            _flush_before_abort()
            world.Abort(1)

    sys.excepthook = abort_job
    _hook_installed = True


def _flush_before_abort() -> None:
    """Flush, and give the launcher a moment to forward this rank's last words: an Abort
    tears the job down, and output still in the pipe to ``mpiexec`` would be lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)


def mpi_module(required: bool = True) -> Any:
    """mpi4py's MPI module, or None (when not ``required``) if mpi4py is not installed."""
    if _MPI:  # (every wait asks: remember it)
        return _MPI[0]
    try:
        if "mpi4py.MPI" not in sys.modules:  # (MPICH under Open MPI's launcher dies in init)
            check_before_init()
            with singleton_transport():  # (mpi4py starts MPI when MPI is first imported)
                from mpi4py import MPI
        else:
            from mpi4py import MPI
    except ImportError:
        if not required:
            return None
        raise ArgumentError(
            "an mpi4py communicator was given but mpi4py is not installed; install the extra: "
            "pip install 'modelsync[mpi]'") from None
    _MPI.append(MPI)
    return MPI
