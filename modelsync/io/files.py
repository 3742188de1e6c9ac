"""Reading a safetensors file safely: the header is parsed and checked here, by us, before
any byte is handed to the safetensors library.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name
to its dtype, shape and ``data_offsets`` (plus an optional ``__metadata__`` of str -> str),
then the tensor bytes, which must be covered exactly, in order, without holes or overlaps.
Every way a file can break that raises LoadError saying what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import attrs
import numpy as np

from ..errors import ArgumentError, ArgumentTypeError, LoadError
from ..tree import described

T = TypeVar("T")

#: The largest header we will read: bigger ones are corrupt or hostile, not models.
MAX_HEADER_BYTES = 100 * 1024 * 1024
HEADER_LENGTH_BYTES = 8

#: safetensors dtype names -> NumPy dtype names (the ones NumPy can hold).
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool",
}
SAFETENSORS_DTYPE = {v: k for k, v in DTYPES.items()}


@attrs.frozen
class TensorInfo:
    """One tensor as the header describes it."""

    name: str
    dtype: str  # the NumPy name ("float32")
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@attrs.frozen
class RawFile:
    """A safetensors file whose header has been validated (no tensor data is read until
    `load_arrays` asks for it); ``header`` is the header's bytes, to tell whether the file
    changed between the two reads."""

    path: str
    size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header: bytes
    stamp: tuple[int, ...] = ()  # (device, inode, size, mtime, ctime) when the header was read


class FileChanged(LoadError):
    """The file is not the one whose header was read (replaced by a concurrent save, or
    written to while it was read): reading it again from the header may succeed."""


def _stamp(fh: BinaryIO) -> tuple[int, ...]:
    st = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_path(path: Any, argument: str = "path") -> Path:
    """``path`` as a Path; ArgumentTypeError unless it is a str or os.PathLike of str."""
    if isinstance(path, (str, os.PathLike)):
        fspath = os.fspath(path)
        if isinstance(fspath, str) and fspath:
            if "\0" in fspath:
                raise ArgumentError(f"{argument}={fspath!r} contains a NUL character, which no "
                                    "file name can hold")
            return Path(fspath)
    kind = described(path)
    if kind.startswith(("a model", "an optimizer")):  # (arguments in the wrong order)
        raise ArgumentTypeError(
            f"{argument} is {kind}; expected a file path (str or os.PathLike): the order is "
            "ms.save(model, path), ms.load(path), ms.load_into(model, path), "
            "ms.load_optimizer(path, optimizer)")
    raise ArgumentTypeError(
        f"{argument}={path!r} is a {type(path).__name__}; expected a non-empty str or "
        "os.PathLike file path")


def read(path: Any, *, header_only: bool = True) -> RawFile:
    """Open ``path`` and validate its safetensors header; no tensor data is read (see
    `load_arrays`; ``header_only`` is accepted for older callers, and changes nothing).
    LoadError for a missing, unreadable or malformed file."""
    where = check_path(path)
    with _opened(where) as fh:
        stamp = _stamp(fh)
        size, header_bytes, header = _read_header(fh, where)
        data_len = size - HEADER_LENGTH_BYTES - len(header_bytes)
        tensors, metadata = _check_header(header, data_len, where)
    return RawFile(str(where), size, tensors, metadata, header_bytes, stamp)


@contextlib.contextmanager
def _opened(where: Path) -> Iterator[BinaryIO]:
    """``where`` open for reading, with every OSError on the way a LoadError."""
    if where.is_dir():
        raise LoadError(f"{where}: is a directory, expected a safetensors file")
    if where.exists() and not where.is_file():  # a FIFO would block, /dev/zero never ends
        raise LoadError(f"{where}: not a regular file, expected a safetensors file")
    try:
        with open(where, "rb") as fh:
            yield fh
    except FileNotFoundError:
        raise LoadError(f"{where}: no such file"
                        + ("" if where.parent.is_dir() else
                           f" (the folder {where.parent} does not exist)")) from None
    except OSError as exc:
        raise LoadError(f"{where}: cannot be read: {exc.strerror or exc}") from exc


def _read_header(fh: BinaryIO, where: Path) -> tuple[int, bytes, dict[str, Any]]:
    size = os.fstat(fh.fileno()).st_size
    length = _read_length(fh.read(HEADER_LENGTH_BYTES), size, where)
    header_bytes = fh.read(length)
    if len(header_bytes) != length:
        raise LoadError(f"{where}: truncated inside the header ({len(header_bytes)} "
                        f"of {length} bytes)")
    return size, header_bytes, parse_header(header_bytes, where)


def _read_length(first: bytes, size: int, where: Path) -> int:
    if size == 0:
        raise LoadError(f"{where}: the file is empty, expected a safetensors file")
    if len(first) < HEADER_LENGTH_BYTES:
        raise LoadError(f"{where}: truncated: {size} bytes, but a safetensors file starts with "
                        f"an {HEADER_LENGTH_BYTES}-byte header length")
    length = int.from_bytes(first, "little")
    if length < 2:
        raise LoadError(f"{where}: header length {length} is too small for a JSON header")
    if length > MAX_HEADER_BYTES:
        raise LoadError(f"{where}: header length {length} exceeds the {MAX_HEADER_BYTES}-byte "
                        "limit: not a safetensors file, or a corrupt one")
    if length > size - HEADER_LENGTH_BYTES:
        raise LoadError(f"{where}: header length {length} is larger than the "
                        f"{size - HEADER_LENGTH_BYTES} bytes after it: the file is truncated "
                        "or not a safetensors file")
    return length


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LoadError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise LoadError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, what: str) -> Any:
    """Strict JSON (no duplicate keys, no NaN/Infinity); LoadError naming ``what``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except LoadError as exc:
        raise LoadError(f"{what}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LoadError(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise LoadError(f"{what} is not JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except RecursionError:
        raise LoadError(f"{what} is JSON nested too deeply to be a model file") from None
    except ValueError as exc:  # e.g. an integer literal too long to convert
        raise LoadError(f"{what} is not acceptable JSON: {exc}") from None


def parse_header(header_bytes: bytes, where: Path | str) -> dict[str, Any]:
    header = parse_json(header_bytes, f"{where}: the header")
    if not isinstance(header, dict):
        raise LoadError(f"{where}: the header is a JSON {type(header).__name__}, expected an "
                        "object mapping tensor names to dtype, shape and data_offsets")
    return header


def _check_header(header: dict[str, Any], data_len: int, where: Path
                  ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise LoadError(f"{where}: __metadata__ must map str to str")
    tensors = {name: _check_tensor(name, entry, data_len, where)
               for name, entry in header.items() if name != "__metadata__"}
    cursor = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < cursor:
            raise LoadError(f"{where}: tensor {info.name!r} overlaps the tensor before it "
                            f"(data_offsets start at {info.begin}, previous ends at {cursor})")
        if info.begin > cursor:
            raise LoadError(f"{where}: {info.begin - cursor} bytes before tensor {info.name!r} "
                            "belong to no tensor (data_offsets leave a hole)")
        cursor = info.end
    if cursor != data_len:
        raise LoadError(f"{where}: the tensors cover {cursor} data bytes but the file holds "
                        f"{data_len}: " + ("truncated" if cursor > data_len else
                                           "trailing bytes belong to no tensor"))
    return tensors, metadata


def _check_tensor(name: str, entry: Any, data_len: int, where: Path) -> TensorInfo:
    label = f"{where}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise LoadError(f"{label}: expected exactly dtype, shape and data_offsets, found {keys}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise LoadError(f"{label}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not _int_list(shape) or any(d < 0 for d in shape):
        raise LoadError(f"{label}: shape {shape!r} is not a list of non-negative integers")
    if not _int_list(offsets) or len(offsets) != 2:
        raise LoadError(f"{label}: data_offsets {offsets!r} is not a [begin, end] pair of "
                        "integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise LoadError(f"{label}: data_offsets [{begin}, {end}] are not 0 <= begin <= end")
    if end > data_len:
        raise LoadError(f"{label}: data_offsets end at {end} but the file holds only {data_len} "
                        "data bytes (truncated, or offsets out of range)")
    numpy_dtype = DTYPES[dtype]
    expected = math.prod(shape) * np.dtype(numpy_dtype).itemsize
    if end - begin != expected:
        raise LoadError(f"{label}: shape {shape} {dtype} needs {expected} bytes but "
                        f"data_offsets [{begin}, {end}] hold {end - begin}")
    return TensorInfo(name, numpy_dtype, tuple(shape), begin, end)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def load_arrays(raw: RawFile, names: list[str] | None = None, *,
                checksums: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Writable host arrays for ``names`` (default: every tensor), read straight from the file
    into arrays of the validated shapes and dtypes, after checking that they fit in memory.
    With ``checksums`` (tensor name -> CRC-32 as 8 hex digits) each tensor that has one is
    verified. LoadError if the file changed since its header was read, or a tensor does not
    fit or does not match its checksum."""
    where = raw.path
    wanted = [raw.tensors[name] for name in (list(raw.tensors) if names is None else names)]
    check_fits(wanted, where)
    out: dict[str, np.ndarray] = {}
    with _opened(Path(where)) as fh:
        if _stamp(fh) != raw.stamp:
            raise FileChanged(f"{where}: the file changed since its header was read")
        size, header_bytes, _ = _read_header(fh, Path(where))
        if size != raw.size or header_bytes != raw.header:
            raise FileChanged(f"{where}: the file changed while it was being read")
        start = HEADER_LENGTH_BYTES + len(header_bytes)
        for info in sorted(wanted, key=lambda t: t.begin):
            array = _allocate(info, where)
            view = memoryview(array).cast("B") if array.nbytes else memoryview(b"")
            fh.seek(start + info.begin)
            got = fh.readinto(view) if array.nbytes else 0
            if got != info.nbytes:
                raise FileChanged(f"{where}: the file changed while it was being read (tensor "
                                  f"{info.name!r} ended after {got} of {info.nbytes} bytes)")
            expected = None if checksums is None else checksums.get(info.name)
            if expected is not None and f"{zlib.crc32(view):08x}" != expected:
                raise LoadError(
                    f"{where}: tensor {info.name!r} does not match its checksum: the file was "
                    "changed or corrupted after it was written (or is being rewritten now)")
            out[info.name] = array if _LITTLE else array.astype(array.dtype.newbyteorder("="))
        if _stamp(fh) != raw.stamp:
            raise FileChanged(f"{where}: the file was written to while it was being read")
    return {info.name: out[info.name] for info in wanted}


_LITTLE = sys.byteorder == "little"


def retrying(attempt: Callable[[], T], tries: int = 3) -> T:
    """``attempt()`` again from the header, up to ``tries`` times, while the file changes
    under it (a concurrent save replacing it is no error: the next attempt reads the new
    file whole); the last attempt's FileChanged propagates."""
    for _ in range(tries - 1):
        try:
            return attempt()
        except FileChanged:
            continue
    return attempt()


def checksum(array: np.ndarray) -> str:
    """The CRC-32 of a C-contiguous host array's bytes, as 8 hex digits (what a save writes
    and `load_arrays` verifies; zlib's runs at about three times the speed of the write)."""
    return f"{zlib.crc32(memoryview(array).cast('B') if array.nbytes else b''):08x}"


def _allocate(info: TensorInfo, where: str) -> np.ndarray:
    try:
        return np.empty(info.shape, dtype=np.dtype(info.dtype).newbyteorder("<"))
    except MemoryError:
        raise LoadError(f"{where}: tensor {info.name!r} ({info.shape} {info.dtype}, "
                        f"{info.nbytes:,} bytes) does not fit in memory") from None


def check_fits(tensors: list[TensorInfo], where: str) -> None:
    """LoadError naming the first tensor with which the running total no longer fits in the
    memory available now (MemAvailable, or the cgroup's limit where lower)."""
    available = available_memory()
    if available is None:
        return
    total = 0
    for info in tensors:
        total += info.nbytes
        if total > available:
            more = "" if total == info.nbytes else f" ({total:,} bytes with the tensors before it)"
            raise LoadError(f"{where}: tensor {info.name!r} ({info.shape} {info.dtype}, "
                            f"{info.nbytes:,} bytes{more}) does not fit in the {available:,} "
                            "bytes of memory available")


def available_memory() -> int | None:
    """Bytes of memory this process can still get, as far as the system says (None: unknown)."""
    found = None
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found = min(found, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return found
