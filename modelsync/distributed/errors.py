"""The one error of its own that `modelsync.distributed` adds."""

from __future__ import annotations

from ..errors import ModelSyncError


class CollectiveError(ModelSyncError):
    """The ranks could not run a collective together: they called different operations, or
    one of them failed before it (its own error says why). Raised on every rank; no rank has
    changed anything."""
