"""save, load, load_into and load_optimizer: the public face of saving and loading.

Every reader validates the whole file (header, metadata, architecture, every tensor's name,
shape and dtype) before it builds or writes anything, so a bad file raises LoadError and
never leaves a half-loaded model behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import interrupts
from ..buffers import Buffer
from ..checks import match_check
from ..devices import HOST, Device, device_of, dtype_name
from ..devices import device as to_device_spec
from ..errors import (
    ArgumentError,
    ArgumentTypeError,
    GraphMismatchError,
    LoadError,
    ModelSyncError,
    SaveError,
)
from ..transfers import copy_to
from ..tree import aliases, graph_id, named_buffers, named_params, require_model, structure
from .architecture import encode_model
from .atomic import atomic_write
from .files import check_path, checksum, load_arrays, read, retrying
from .modelfile import (
    ALIASES_KEY,
    ARCHITECTURE_KEY,
    BUFFERS_KEY,
    CHECKSUMS_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    GRAPH_KEY,
    OPTIMIZER_KEY,
    PARAMS_KEY,
    USER_PREFIX,
    build_model,
    fill_model,
    is_modelsync,
    read_model_file,
)
from .names import Names, check_names, keyed_places
from .optstate import check_optimizer, decode_state, encode_state
from .sources import Source, file_source, mapping_source


def save(model: Any, path: Any, *, optimizer: Any = None,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model`` (and ``optimizer``'s state, and ``metadata``) to one safetensors file.

    Tensors are named by parameter path, so any safetensors reader opens the file; the
    architecture, graph id, tie aliases and optimizer state go in the metadata. A device
    model or a wrapper is saved from its current values. The write is atomic: on any failure
    the previous file at ``path`` is left exactly as it was.
    """
    target = check_path(path)
    require_model(model)
    user = _check_user_metadata(metadata)
    if optimizer is not None:
        check_optimizer(optimizer)
    named = named_params(model)
    tensors: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, param in named.items():
        value = param.value  # a stale wrap-mode side pulls first
        if device_of(value) != HOST:
            value = copy_to(value, HOST, reason="save", what="param")
        tensors[name] = np.require(value, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
        table[name] = {"shape": list(param.shape), "dtype": dtype_name(param.dtype),
                       "origin": param.origin, "name": param.name}
    buffers = named_buffers(model)
    buffer_table: dict[str, dict[str, Any]] = {}
    for name, buffer in buffers.items():  # (named by path too: one namespace of tensors)
        value = buffer.value
        if device_of(value) != HOST:
            value = copy_to(value, HOST, reason="save", what="param")
        tensors[name] = np.require(value, requirements="C")
        buffer_table[name] = {"shape": list(buffer.shape), "dtype": dtype_name(buffer.dtype),
                              "origin": buffer.origin, "name": buffer.name}
    architecture = encode_model(model, {id(p): name for name, p in
                                        [*named.items(), *buffers.items()]})
    meta = {
        FORMAT_KEY: FORMAT_VERSION,
        ARCHITECTURE_KEY: _dumps(architecture),
        PARAMS_KEY: _dumps(table),
        ALIASES_KEY: _dumps(aliases(model)),
        GRAPH_KEY: graph_id(model),
    }
    if buffer_table:
        meta[BUFFERS_KEY] = _dumps(buffer_table)
    if optimizer is not None:
        state, state_tensors = encode_state(optimizer.state_dict())
        tensors.update(state_tensors)
        meta[OPTIMIZER_KEY] = _dumps(state)
    meta.update({USER_PREFIX + key: value for key, value in user.items()})
    meta[CHECKSUMS_KEY] = _dumps({name: checksum(t) for name, t in tensors.items()})
    blob = _serialize(tensors, meta, target)
    atomic_write(target, lambda fh: fh.write(blob))


def load(path: Any, device: Device | str = "host", *, verify: bool = True) -> Any:
    """Rebuild the model saved at ``path`` on ``device``, from registered layer types only
    (nothing from the file is executed). Same graph id, same ties, same values.

    Everything the header says is checked (metadata, architecture, sizes against the memory
    available) before any tensor data is read; with ``verify`` each tensor is checked
    against the checksum its save wrote (files written before checksums have none)."""
    target = to_device_spec(device)
    _check_verify(verify)
    return retrying(lambda: _load(path, target, verify))


def _load(path: Any, target: Device, verify: bool) -> Any:
    raw = read(path)
    model_file = read_model_file(raw)
    model = build_model(model_file)
    arrays = load_arrays(raw, [*model_file.params, *model_file.buffers],
                         checksums=_sums(model_file, verify))
    if target != HOST:
        arrays = {name: copy_to(array, target, reason="load", what="param")
                  for name, array in arrays.items()}
    fill_model(model, arrays)
    return model


def load_into(model: Any, source: Any, *, check: str = "graph",
              names: Mapping[str, str] | Callable[[str], str] | None = None,
              strict: bool = True, verify: bool = True) -> Any:
    """Write the values in ``source`` into ``model``'s Params in place; returns ``model``.

    ``source`` is a safetensors file path or a mapping of arrays (a PyTorch ``state_dict``,
    a dict of NumPy arrays, anything with ``__dlpack__`` or ``__array__``). ``check="graph"``
    requires a file saved from this model's graph (same ``graph_id``); ``check="structure"``
    only the same parameter paths, shapes and dtypes, and is the one a mapping or a file
    from another library takes. ``names`` (a dict or a function) maps the model's paths to
    the source's keys. A key that nothing uses is an error unless ``strict=False``. All or
    nothing: the source is validated and every device copy staged before the first Param
    is written, and a Ctrl-C meanwhile is delivered once the writes are done. A file's
    header is checked in full before its data is read; with ``verify`` its tensors are
    checked against their checksums.
    """
    require_model(model)
    match_check(check)
    _check_verify(verify)
    if not isinstance(strict, bool):
        raise ArgumentTypeError(f"strict={strict!r} is a {type(strict).__name__}; expected "
                                "True or False")
    check_names(names)
    if names is not None and check == "graph":
        raise ArgumentError(
            "names= renames the source's keys, which only check='structure' reads (a graph "
            "check compares the file's own paths); pass check='structure' with names")
    if isinstance(source, Mapping):
        if check == "graph":
            raise ArgumentError(
                f"source is a {type(source).__name__} of {len(source)} arrays, which has no "
                "graph id for check='graph' to compare; pass check='structure' to load it by "
                "names, shapes and dtypes")
        found = mapping_source(source)
    else:
        where = check_path(source, "source")

        def attempt() -> Source:
            header, read_values = _file_source(model, where, check, verify)
            _match(model, names, header, strict)  # every check the header allows, first
            return read_values()

        found = retrying(attempt)
    pairs = _match(model, names, found, strict)
    staged = [array if found.owned and p.device == HOST else
              copy_to(array, p.device, reason="load_into", what="param")
              for p, array in pairs]
    interrupts.call(_write_all, pairs, staged)  # a Ctrl-C now comes after the last write
    return model


def _write_all(pairs: list[tuple[Any, Any]], staged: list[Any]) -> None:
    # every value is replaced, so a wrap-mode side is marked newest without a pull
    storages = [p.writable(overwrite=True) for p, _ in pairs]
    for storage, array in zip(storages, staged, strict=True):
        storage[...] = array


def _file_source(model: Any, path: Any, check: str, verify: bool
                 ) -> tuple[Source, Callable[[], Source]]:
    """The tensors of the file at ``path`` as its header describes them (placeholders of the
    right shapes and dtypes, checked, and for ``check="graph"`` checked to come from
    ``model``'s graph), and the function that reads their values."""
    raw = read(path)
    if is_modelsync(raw):
        model_file = read_model_file(raw)
        file_model = build_model(model_file)  # validates the whole header
        if check == "graph":
            _check_graph(model, file_model, raw.path)
        wanted = [*model_file.params, *model_file.buffers]
        sums = _sums(model_file, verify)
    elif check == "graph":
        raise LoadError(
            f"{raw.path}: not a modelsync file (no {FORMAT_KEY!r} metadata), so it has no "
            "graph id to check; pass check='structure' to load it by parameter names, "
            "shapes and dtypes")
    else:
        wanted, sums = list(raw.tensors), None
    placeholders = {name: np.broadcast_to(np.zeros((), raw.tensors[name].dtype),
                                          raw.tensors[name].shape) for name in wanted}
    return (file_source(placeholders, wanted, raw.path),
            lambda: file_source(load_arrays(raw, wanted, checksums=sums), wanted, raw.path))


def load_optimizer(path: Any, optimizer: Any, *, verify: bool = True) -> Any:
    """Restore ``optimizer``'s state from a file saved with ``ms.save(..., optimizer=opt)``;
    the state goes to each bound Param's device. Returns ``optimizer``. The whole header is
    checked first; only the optimizer's tensors are read, and with ``verify`` checked
    against their checksums."""
    check_optimizer(optimizer)
    _check_verify(verify)
    raw, state = retrying(lambda: _read_state(path, verify))
    try:
        optimizer.load_state_dict(state)
    except (ArgumentError, ArgumentTypeError) as exc:
        raise LoadError(f"{raw.path}: the optimizer refused the stored state: {exc}") from exc
    except ModelSyncError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
        raise LoadError(f"{raw.path}: the optimizer refused the stored state: "
                        f"{type(exc).__name__}: {exc}") from exc
    return optimizer


def _read_state(path: Any, verify: bool) -> tuple[Any, Any]:
    raw = read(path)
    model_file = read_model_file(raw)
    if model_file.optimizer is None:
        raise LoadError(f"{raw.path}: the file holds no optimizer state; save it with "
                        "ms.save(model, path, optimizer=opt)")
    build_model(model_file)  # the whole header is checked, not just the state's
    arrays = load_arrays(raw, [name for name in raw.tensors if name not in model_file.params],
                         checksums=_sums(model_file, verify))
    return raw, decode_state(model_file.optimizer, arrays)


def read_metadata(path: Any) -> dict[str, str]:
    """The user metadata saved with ``ms.save(..., metadata=...)`` (reads only the header)."""
    raw = read(path)
    return {k[len(USER_PREFIX):]: v for k, v in raw.metadata.items() if k.startswith(USER_PREFIX)}


# -- helpers ------------------------------------------------------------------------------
def _check_verify(verify: Any) -> None:
    if not isinstance(verify, bool):
        raise ArgumentTypeError(f"verify={verify!r} is a {type(verify).__name__}; expected True "
                                "or False")


def _sums(model_file: Any, verify: bool) -> dict[str, str] | None:
    return model_file.checksums if verify else None


def _check_user_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ArgumentTypeError(f"metadata is a {type(metadata).__name__}; expected a dict of "
                                "str -> str")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ArgumentTypeError(
                f"metadata[{key!r}] = {value!r}: keys and values must be str (safetensors "
                "metadata is text); encode other values yourself, e.g. with json.dumps")
    return dict(metadata)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _serialize(tensors: dict[str, np.ndarray], meta: dict[str, str], target: Any) -> bytes:
    from safetensors.numpy import save as serialize

    try:
        return serialize(tensors, metadata=meta)
    except Exception as exc:  # the library's errors have no common base we can name
        raise SaveError(f"{target}: safetensors could not serialize the model: {exc}") from exc


class BufferMismatchError(GraphMismatchError, LoadError):
    """A file's Buffers do not match the model's (one missing, extra or of another shape or
    dtype): a GraphMismatchError as for Params, and a LoadError, since the file is wrong
    for this model."""


def _mismatch(path: str, buffers: set[str]) -> type[GraphMismatchError]:
    """The error class for a mismatch at ``path``: BufferMismatchError for a Buffer's."""
    return BufferMismatchError if path in buffers else GraphMismatchError


def _check_graph(model: Any, file_model: Any, where: str) -> None:
    mine, theirs = graph_id(model), graph_id(file_model)
    if mine == theirs:
        return
    hint = "pass check='structure' to load by parameter names, shapes and dtypes"
    ours, stored = structure(model), structure(file_model)
    held = set(named_buffers(model)) | set(named_buffers(file_model))
    for (path_a, shape_a, dtype_a), (path_b, shape_b, dtype_b) in zip(ours, stored, strict=False):
        if path_a != path_b:
            raise (BufferMismatchError if {path_a, path_b} & held else GraphMismatchError)(
                f"{path_a}: the model has this here but the file has {path_b} in its place; "
                f"the file was not saved from this model's graph; {hint}")
        if (shape_a, dtype_a) != (shape_b, dtype_b):
            raise _mismatch(path_a, held)(
                f"{path_a}: model {shape_a} {dtype_a} vs file {shape_b} {dtype_b}; the file was "
                "not saved from this model's graph")
    if len(ours) != len(stored):
        longer, side = (ours, "the model") if len(ours) > len(stored) else (stored, "the file")
        path = longer[min(len(ours), len(stored))][0]
        raise _mismatch(path, held)(
            f"{path}: only {side} has this; the file "
            f"was not saved from this model's graph; {hint}")
    raise GraphMismatchError(
        f"{where}: the file's graph_id {theirs} differs from the model's {mine}: same "
        f"structure, but the two were made as separate models; {hint}")


def _match(model: Any, names: Names, source: Source, strict: bool) -> list[tuple[Any, Any]]:
    """Each distinct Param of ``model`` with the source's array for it, once every check
    has passed: each Param found (at one of its places, if tied), no key unused (under
    ``strict``), shapes and dtypes equal, and a tied Param's keys holding equal values."""
    places = keyed_places(model, names)
    offered = set(source.keys)
    chosen: dict[int, tuple[str, Any, Any]] = {}  # id(Param) -> (path, Param, key)
    also: list[tuple[str, Any, Any]] = []  # a tied Param's other places that have a key
    used = set()
    for path, p, key in places:
        if key not in offered:
            continue
        used.add(key)
        first = chosen.get(id(p))
        if first is None:
            chosen[id(p)] = (path, p, key)
        elif first[2] != key:
            also.append((path, p, key))
    unused = [key for key in source.keys if key not in used]
    for path, p, key in places:
        if id(p) not in chosen:
            kind = BufferMismatchError if _file_buffer(p, source) else GraphMismatchError
            raise kind(_missing(path, key, source, unused if strict else []))
    if unused and strict:
        key = unused[0]
        named = "no Param of that name" if names is None else "no Param that names maps to it"
        raise GraphMismatchError(
            f"{key}: {source.where} has this {source.noun} but the model has {named}"
            f"{f' (and {len(unused) - 1} more unused)' if len(unused) > 1 else ''}; pass "
            "strict=False to ignore the source's extra keys")
    arrays = {}
    for path, p, key in [*chosen.values(), *also]:
        array = arrays[key] = source.fetch(key)
        shape, dtype = tuple(array.shape), dtype_name(array.dtype)
        if (p.shape, dtype_name(p.dtype)) != (shape, dtype):
            label = source.side if key == path else f"{source.side} {key!r}"
            kind = BufferMismatchError if _file_buffer(p, source) else GraphMismatchError
            raise kind(
                f"{path}: model {p.shape} {dtype_name(p.dtype)} vs {label} {shape} {dtype}")
    for path, p, key in also:
        first_path, _, first_key = chosen[id(p)]
        if not _same_values(arrays[first_key], arrays[key]):
            raise GraphMismatchError(
                f"{first_path} and {path}: the model ties them to one Param but "
                f"{source.where} holds different values at {first_key!r} and {key!r}")
    return [(p, arrays[key]) for _, p, key in chosen.values()]


def _file_buffer(p: Any, source: Source) -> bool:
    """Whether ``p`` is a Buffer being loaded from a file (a mismatch is then also a
    LoadError: the file's Buffers are missing or mis-shaped for this model)."""
    return isinstance(p, Buffer) and source.side == "file"


def _missing(path: str, key: Any, source: Source, unused: list[Any]) -> str:
    """The message for a Param the source has no key for, with the keys nothing uses."""
    if key == path:
        text = (f"{path}: the model has this Param but {source.where} has no {source.noun} "
                "of that name")
    else:
        text = (f"{path}: the model has this Param but {source.where} has no {source.noun} "
                f"{key!r} (names maps {path} to it)")
    if unused:
        shown = ", ".join(repr(k) for k in unused[:4])
        more = ", ..." if len(unused) > 4 else ""
        text += f"; {source.noun}s that nothing uses: {shown}{more}"
        if key == path and any(isinstance(k, str) and k[:1].isdigit() for k in unused):
            text += ("; for a torch nn.Sequential pass "
                     "names=ms.interop.torch_sequential_names(model)")
    return text


def _same_values(a: Any, b: Any) -> bool:
    """Whether two source arrays (of one shape and dtype) hold the same values, NaN equal to
    NaN; compared on the host (a device array is copied there, and counted)."""
    if a is b:
        return True
    a, b = (x if device_of(x) == HOST else copy_to(x, HOST, reason="load_into", what="param")
            for x in (a, b))
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
