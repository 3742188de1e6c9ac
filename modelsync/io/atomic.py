"""Atomic file replacement: a crash, a full disk or any error while saving leaves the previous
file exactly as it was, and no temporary file outlives the next save into the same folder.

The new bytes go to a temporary file in the same folder (so the final rename cannot cross file
systems), are flushed and fsync'ed, and only then does ``os.replace`` swap the name over in one
step. The folder is fsync'ed afterwards so the rename itself survives a power cut.

A process that is SIGKILLed (or loses power) cannot remove its own temporary file, so the name
says whose it is: ``.<name>.<pid>-<start>-<host>.<random>.tmp``, with the process's start time
(which tells a reused pid apart) and a token of the machine's boot and pid namespace (which
tells another machine's or container's pids apart). Every save first removes the temporaries
in its folder whose process no longer exists (`reclaim`); one from another boot, machine or
container is removed once it is an hour old, since a live save keeps writing to its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .. import interrupts
from ..errors import ModelSyncError, SaveError

#: A temporary file of another boot, machine or container is removed past this age (seconds).
FOREIGN_AGE = 3600.0
_TEMP = re.compile(r"^\..*\.(\d+)-(\d+)-([0-9a-f]{8})\.[0-9a-f]{8}\.tmp$")
_NAME_CHARS = 64  # of the target's name kept in the temporary's (names have a length limit)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write(fh)`` writes, atomically.

    On any failure (a KeyboardInterrupt included) the old file is intact, the temporary file
    is removed, and the error propagates: library errors as they are, anything else as a
    SaveError naming the path. ``path`` must be absent or a regular file (or a symlink to
    one): a directory, a device node or a FIFO is a SaveError, and nothing is replaced.
    """
    folder = path.parent
    check_destination(path)
    mode = _mode_for(path)
    reclaim(folder)
    temp: str | None = None
    handle: BinaryIO | None = None
    try:
        # the file, its handle and our note of it come into being together
        handle, temp = interrupts.call(_create, folder, path.name)
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        check_target(path)  # (it may have become something else while we wrote)
        os.replace(temp, path)
        temp = None
    except BaseException as exc:
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, (ModelSyncError, KeyboardInterrupt, SystemExit)) or not isinstance(
                exc, Exception):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SaveError(f"{path}: saving failed ({type(exc).__name__}: {reason}); the previous "
                        "file, if any, is unchanged") from exc
    _sync_folder(folder)


def check_destination(path: Path, example: str = "model.safetensors") -> None:
    """SaveError unless ``path`` can be written here: absent or a regular file, in a folder
    that exists (what a writer checks before doing the work whose result goes there)."""
    check_target(path, example)
    if not path.parent.is_dir():
        raise SaveError(f"{path}: the folder {path.parent} does not exist; create it first")


def check_target(path: Path, example: str = "model.safetensors") -> None:
    """SaveError unless ``path`` is absent or a regular file (or a symlink to one);
    ``example`` is the file name a directory's message suggests."""
    try:
        found = os.stat(path).st_mode
    except FileNotFoundError:
        return  # absent (or a symlink to nothing: the link is replaced)
    except OSError as exc:
        raise SaveError(f"{path}: cannot be examined: {exc.strerror or exc}") from exc
    if stat.S_ISREG(found):
        return
    if stat.S_ISDIR(found):
        raise SaveError(f"{path}: is a directory; pass a file path such as "
                        f"{path / example}")
    raise SaveError(f"{path}: is a {_kind(found)}, not a regular file; save to a file path "
                    "(nothing was replaced)")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _create(folder: Path, name: str) -> tuple[BinaryIO, str]:
    """A new, empty temporary file in ``folder`` named after this process, open for writing:
    (file, path)."""
    prefix = f".{name[:_NAME_CHARS]}.{os.getpid()}-{_start_time(os.getpid())}-{_host_token()}."
    for _ in range(100):
        temp = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}.tmp")
        fd = -1
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            return open(fd, "wb"), temp  # noqa: SIM115 (the caller closes it)
        except FileExistsError:
            continue
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
                os.unlink(temp)
            if isinstance(exc, OSError):
                raise SaveError(f"{folder / name}: cannot create a temporary file in {folder}: "
                                f"{exc.strerror or exc}") from exc
            raise
    raise SaveError(f"{folder / name}: cannot find a free temporary file name in {folder}")


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def reclaim(folder: Path) -> list[str]:
    """Remove the temporary files in ``folder`` left by saves whose process no longer exists
    (SIGKILLed, or a machine that lost power); the names removed. Best effort: a file another
    process removes first, or that cannot be removed, is left to it."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host_token()
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        match = _TEMP.match(name)
        if match is None or not _abandoned(entry, int(match[1]), int(match[2]), match[3], host):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(name)
    return removed


def _abandoned(entry: os.DirEntry, pid: int, start: int, token: str, host: str) -> bool:
    if token != host:  # another boot, machine or container: its pids mean nothing here
        try:
            return time.time() - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_AGE
        except OSError:
            return False
    if pid == os.getpid():
        return start != _start_time(pid)  # (equal: one of our own saves, maybe in a thread)
    if os.name != "posix":  # (on Windows os.kill(pid, 0) would send a Ctrl-C event)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's)
    except OSError:
        return False
    return start != 0 and _start_time(pid) not in (start, 0)  # a reused pid: someone else


def _start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (0 where /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5), counted after "pid (comm)"
    except (OSError, IndexError, ValueError):
        return 0


_HOST: list[str] = []


def _host_token() -> str:
    """8 hex digits naming this boot of this machine and this pid namespace."""
    if not _HOST:
        parts = []
        for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
            try:
                parts.append(os.readlink(source) if source.endswith("/pid") else
                             Path(source).read_text().strip())
            except OSError:
                parts.append("?")
        parts.append(socket.gethostname())
        _HOST.append(hashlib.blake2b("|".join(parts).encode(), digest_size=4).hexdigest())
    return _HOST[0]


def _mode_for(path: Path) -> int:
    """The permission bits the new file gets: the old file's, else the usual 0o666 & ~umask
    (a temporary file is made 0o600, which would surprise a user)."""
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
