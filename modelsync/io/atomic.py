"""Atomic file replacement: a crash, a full disk or any error while saving leaves the previous
file exactly as it was, and no temporary file behind.

The new bytes go to a temporary file in the same folder (so the final rename cannot cross file
systems), are flushed and fsync'ed, and only then does ``os.replace`` swap the name over in one
step. The folder is fsync'ed afterwards so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import ModelSyncError, SaveError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write(fh)`` writes, atomically.

    On any failure the old file is intact, the temporary file is removed, and the error
    propagates: library errors as they are, anything else as a SaveError naming the path.
    """
    folder = path.parent
    if path.is_dir():
        raise SaveError(f"{path}: is a directory; pass a file path such as "
                        f"{path / 'model.safetensors'}")
    if not folder.is_dir():
        raise SaveError(f"{path}: the folder {folder} does not exist; create it first")
    mode = _mode_for(path)
    try:
        handle = tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise SaveError(f"{path}: cannot create a temporary file in {folder}: "
                        f"{exc.strerror or exc}") from exc
    temp = handle.name
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, (ModelSyncError, KeyboardInterrupt, SystemExit)) or not isinstance(
                exc, Exception):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SaveError(f"{path}: saving failed ({type(exc).__name__}: {reason}); the previous "
                        "file, if any, is unchanged") from exc
    _sync_folder(folder)


def _mode_for(path: Path) -> int:
    """The permission bits the new file gets: the old file's, else the usual 0o666 & ~umask
    (NamedTemporaryFile makes files 0o600, which would surprise a user)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # no way to read it without setting it
    os.umask(current)
    return current


def _sync_folder(folder: Path) -> None:
    """fsync the folder so the rename is durable; best effort (not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
