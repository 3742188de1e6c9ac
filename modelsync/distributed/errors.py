"""The errors of its own that `modelsync.distributed` adds."""

from __future__ import annotations

from ..errors import ModelSyncError


class CollectiveError(ModelSyncError):
    """The ranks could not run a collective together: they called different operations, or
    one of them failed before it (its own error says why). Raised on every rank; no rank has
    changed anything."""


class LaunchError(CollectiveError):
    """This process was started as one of N by a launcher whose world the loaded MPI does not
    join (another MPI's ``mpiexec``): every process is a world of one and raises this by
    itself. A launcher ends the whole job when its first process exits, so a command that
    reports it waits ``linger`` seconds first, letting every process say the same."""

    linger = 2.0
